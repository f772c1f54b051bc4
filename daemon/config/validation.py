"""Validating the merged document into ``Settings``: pydantic's errors rewritten as one line
each, with the place, the nearest known key and a hint how to fix it.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from daemon.config.problems import Problems
from daemon.core.policy import Loc, Settings
from daemon.core.settings import CREDENTIALS_DEFERRED

# --- validation ----------------------------------------------------------------------------

_HINTS = {
    "missing": "required; add it",
    "int_type": "write a whole number",
    "int_parsing": "write a whole number",
    "int_from_float": "write a whole number",
    "float_type": "write a number",
    "float_parsing": "write a number",
    "bool_type": "write true or false",
    "bool_parsing": "write true or false",
    "string_type": "write text (quote it)",
    "dict_type": "write a mapping (key: value)",
    "model_type": "write a mapping (key: value)",
    "model_attributes_type": "write a mapping (key: value)",
    "tuple_type": "write a list",
    "list_type": "write a list",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "less_than_equal": "use a smaller value",
    "string_too_short": "it must not be empty",
    "too_short": "list at least one",
    "string_pattern_mismatch": "see the field's format in config/cbr-replicator.yaml",
}
_PATTERN_HINTS = {
    "name": "use 1-64 letters, digits, '_' or '-'",
    "region": "write a region id such as cn-north-4",
    "url": "write an http:// or https:// URL",
    "listen": "write HOST:PORT, e.g. 127.0.0.1:9687",
}


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model whose fields sit at ``loc`` in ``Settings``, for listing allowed keys."""
    annotation: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue  # an index into the tuple that ``_unwrap`` already opened
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if not isinstance(part, str) or part not in annotation.model_fields:
                return None
            annotation = annotation.model_fields[part].annotation
        annotation = _unwrap(annotation)
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> X; ``tuple[X, ...]`` -> X (the next part of a path is an index)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return options[0] if len(options) == 1 else annotation
    if origin is tuple:
        return typing.get_args(annotation)[0]
    return annotation


def _unknown_key_message(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    allowed = sorted(model.model_fields) if model else []
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    fix = f"did you mean {close[0]}?" if close else "remove it or fix its spelling"
    listing = f" (allowed: {', '.join(allowed)})" if allowed else ""
    return f"unknown key; {fix}{listing}"


def _error_message(error: Mapping[str, Any]) -> str:
    kind, loc = error["type"], tuple(error["loc"])
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    if kind == "missing":
        return "required field is missing; add it"
    if kind == "too_short":
        return "must not be empty; list at least one"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(str(loc[-1]), _HINTS[kind])
        return f"has the wrong format; {hint}"
    extra = _HINTS.get(kind)
    return f"{message}; {extra}" if extra and ";" not in message else message


def validate_settings(
    raw: dict[str, Any], problems: Problems, *, credentials_deferred: bool = False
) -> Settings | None:
    try:
        return Settings.model_validate(raw, context={CREDENTIALS_DEFERRED: credentials_deferred})
    except ValidationError as error:
        for detail in error.errors(include_input=False, include_url=False):
            loc = tuple(detail["loc"])
            if any(loc[: len(bad)] == bad for bad in problems.tainted):
                continue
            problems.at(loc, _error_message(detail))
        return None
