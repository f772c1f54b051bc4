"""Replica names and descriptions (docs/design.md §2): their templates checked when the
configuration loads, then rendered. Pure: no clock, no I/O.

Because templates are checked at load, rendering only has to make substituted values fit the
API's limits: a name of 1 to 64 letters, digits, ``_`` or ``-``, and a description of at most
255 characters without ``<`` or ``>``. A name or description given by hand (``--name``,
``--description``) is checked against the same limits.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from datetime import UTC, datetime

PLACEHOLDERS: frozenset[str] = frozenset(
    {"backup_name", "backup_id", "source_region", "destination_region", "date"}
)
NAME_MAX = 64
DESCRIPTION_MAX = 255
FALLBACK_PREFIX = "replica"
NAME_CHARS = re.compile(r"[A-Za-z0-9_-]")
# A whole name as the API takes it (a hand-given one: ``replicate-backup --name``).
VALID_NAME = re.compile(rf"^[A-Za-z0-9_-]{{1,{NAME_MAX}}}$")

# A run of characters that are not letters, digits or "_": hyphens and forbidden characters.
_NON_WORD_RUN = re.compile(r"[^A-Za-z0-9_]+")
_FORBIDDEN = re.compile(r"[^A-Za-z0-9_-]")
_DESCRIPTION_FORBIDDEN = re.compile(r"[<>]")
_FORMATTER = string.Formatter()


def substitute(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``{placeholder}`` replaced by its value; ``{{``/``}}`` are braces.

    Raises ValueError for an unknown placeholder, a conversion or format spec, a missing value
    or unbalanced braces: templates are validated at load, so any of these is a bug.
    """
    parts: list[str] = []
    for literal, field, format_spec, conversion in _FORMATTER.parse(template):
        parts.append(literal)
        if field is None:
            continue
        if field not in PLACEHOLDERS or format_spec or conversion is not None:
            raise ValueError(f"unknown placeholder in template {template!r}")
        if field not in values:
            raise ValueError(f"no value for placeholder {{{field}}}")
        parts.append(values[field])
    return "".join(parts)


def _sanitise_run(match: re.Match[str]) -> str:
    # A run made only of "-" was written that way (a valid name stays unchanged); a run that
    # holds a forbidden character came from substitution and collapses to a single "-".
    run = match.group()
    return "-" if _FORBIDDEN.search(run) else run


def sanitise_name(text: str) -> str:
    """``text`` as a valid replica name, or "" when nothing is left of it."""
    return _NON_WORD_RUN.sub(_sanitise_run, text)[:NAME_MAX]


def _fallback_name(values: Mapping[str, str]) -> str:
    # The API refuses an empty name, and a replica must stay traceable to its source: the
    # backup id (a UUID in CBR) identifies it. Should even that be empty, a constant remains.
    backup_id = sanitise_name(values.get("backup_id", ""))
    if not backup_id:
        return FALLBACK_PREFIX
    return f"{FALLBACK_PREFIX}-{backup_id}"[:NAME_MAX]


def render_name(template: str, values: Mapping[str, str]) -> str:
    """The replica name: substituted, forbidden characters made "-", cut to 64, never empty."""
    return sanitise_name(substitute(template, values)) or _fallback_name(values)


def render_description(template: str, values: Mapping[str, str]) -> str:
    """The replica description: substituted, without ``<`` and ``>``, cut to 255."""
    return _DESCRIPTION_FORBIDDEN.sub("", substitute(template, values))[:DESCRIPTION_MAX]


def replica_values(
    backup_name: str,
    backup_id: str,
    source_region: str,
    destination_region: str,
    now: datetime,
) -> dict[str, str]:
    """The placeholder values of one replica; ``{date}`` is ``now``'s UTC day as YYYYMMDD."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return {
        "backup_name": backup_name,
        "backup_id": backup_id,
        "source_region": source_region,
        "destination_region": destination_region,
        "date": now.astimezone(UTC).strftime("%Y%m%d"),
    }


def valid_name(name: str) -> bool:
    """Whether a hand-given replica name fits the API: 1-64 of ``[A-Za-z0-9_-]``, the whole
    string (``$`` alone would let a trailing line break through)."""
    return VALID_NAME.fullmatch(name) is not None


def valid_description(text: str) -> bool:
    """Whether a hand-given description fits the API: at most 255 characters, no ``<``/``>``."""
    return not (len(text) > DESCRIPTION_MAX or set(text) & {"<", ">"})


# A placeholder, a stray brace, or a run of literal text: the three things a template holds.
_TOKEN = re.compile(r"\{(?P<field>[^{}]*)\}|(?P<brace>[{}])|(?P<text>[^{}]+)")


def _split(template: str) -> tuple[list[str], list[str], list[str]]:
    """Return (placeholders, literal runs, problems about braces) of ``template``."""
    fields: list[str] = []
    literals: list[str] = []
    problems: list[str] = []
    for match in _TOKEN.finditer(template):
        if match["brace"] is not None:
            problems.append(f"unbalanced {match['brace']!r}; write placeholders as {{name}}")
        elif match["field"] is not None:
            fields.append(match["field"])
        else:
            literals.append(match["text"])
    return fields, literals, problems


def _placeholder_problems(fields: list[str]) -> list[str]:
    allowed = ", ".join("{" + name + "}" for name in sorted(PLACEHOLDERS))
    return [
        f"unknown placeholder {{{field}}}; use one of {allowed}"
        for field in fields
        if field not in PLACEHOLDERS
    ]


def check_name_template(template: str) -> list[str]:
    """Problems of a replica name template; empty when it is valid."""
    fields, literals, problems = _split(template)
    problems += _placeholder_problems(fields)
    literal = "".join(literals)
    bad = sorted({char for char in literal if not NAME_CHARS.fullmatch(char)})
    if bad:
        shown = " ".join(repr(char) for char in bad)
        problems.append(f"characters {shown} are not allowed; use letters, digits, '_' or '-'")
    if len(literal) > NAME_MAX:
        problems.append(f"literal text is {len(literal)} characters; keep it to {NAME_MAX}")
    if not template:
        problems.append("the name is empty; use e.g. '{backup_name}'")
    return problems


def check_description_template(template: str) -> list[str]:
    """Problems of a replica description template; empty when it is valid."""
    fields, literals, problems = _split(template)
    problems += _placeholder_problems(fields)
    length = sum(len(text) for text in literals)
    if length > DESCRIPTION_MAX:
        problems.append(f"literal text is {length} characters; keep it to {DESCRIPTION_MAX}")
    return problems
