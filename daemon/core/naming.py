"""Render replica names and descriptions from templates (docs/design.md §2). Pure: no clock, no I/O.

Templates are checked when the configuration loads (``core.templates``); rendering only has to
make substituted values fit the API's limits: a name of 1 to 64 letters, digits, ``_`` or ``-``,
and a description of at most 255 characters without ``<`` or ``>``.
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
