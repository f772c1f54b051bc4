"""Load-time checks of replica name and description templates (docs/design.md §2). Stdlib only.

Shared by the config schema (``core.policy``) and the renderer (``core.rules``), which are sibling
core modules that must not import each other.
"""

from __future__ import annotations

import re

PLACEHOLDERS: frozenset[str] = frozenset(
    {"backup_name", "backup_id", "source_region", "destination_region", "date"}
)
NAME_CHARS = re.compile(r"[A-Za-z0-9_-]")
NAME_MAX = 64
DESCRIPTION_MAX = 255

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
