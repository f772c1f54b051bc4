"""Logging, configured once: structlog with secret redaction; JSON lines when the output is
not a terminal (journald keeps them), readable console lines on a terminal."""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

SECRET_KEY = re.compile(
    r"(^|_)(sk|secret|password|token|authorization|security_token|access_key)($|_)", re.I
)
MASK = "****"
SDK_LOGGERS = ("HuaweiCloud-SDK-CbrClient", "HuaweiCloud-SDK-IamClient", "urllib3", "requests")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secrets(values: Iterable[str]) -> None:
    """Values that must never appear in a log line, whatever key carries them."""
    with _secrets_lock:
        _secrets.update(value for value in values if value and len(value) >= 4)


def clear_registered_secrets() -> None:
    with _secrets_lock:
        _secrets.clear()


def redact_text(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Runs after exception formatting, before rendering, so tracebacks are covered too."""
    for key, value in list(event.items()):
        if SECRET_KEY.search(key):
            event[key] = MASK
        elif isinstance(value, str):
            event[key] = redact_text(value)
        elif isinstance(value, Exception):
            event[key] = redact_text(str(value))
    return event


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """``fmt`` is auto|json|console; auto picks console on a terminal, JSON otherwise."""
    out = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _quiet_sdk_loggers()


def _quiet_sdk_loggers() -> None:
    """The SDK logs request lines at INFO and, with no handler, ERROR lines reach stderr
    through Python's last-resort handler; keep them at WARNING and never at DEBUG."""
    for name in SDK_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.handlers = [logging.NullHandler()]
        logger.propagate = False
