"""Logging, configured once: structlog with secret redaction; JSON lines when the output is
not a terminal (journald keeps them), readable console lines on a terminal.

The daemon logs to stdout (nothing else is written there); every other command logs to
stderr, because its stdout carries the report or the JSON document. Standard-library loggers
(the cloud SDK, urllib3, APScheduler) are routed through the same processors, redaction
included, at WARNING and above only.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

from daemon.core.redaction import MASK, clear_registered_secrets, redact_value, secret_key

SDK_LOGGERS = ("HuaweiCloud-SDK-CbrClient", "HuaweiCloud-SDK-IamClient", "urllib3", "requests")
# Library loggers that reach the log at WARNING and above; never lower, even with
# ``log.level: debug`` (SDK and urllib3 debug lines carry request headers).
ROUTED_LOGGERS = (*SDK_LOGGERS, "HuaweiCloud-SDK", "apscheduler")
FORMATS = ("auto", "json", "console")
CLEAR_LINE = "\r\x1b[K"  # carriage return, erase to the end of the line


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Runs after exception formatting, before rendering, so tracebacks are covered too."""
    for key, value in list(event.items()):
        if key.startswith("_"):
            continue  # ProcessorFormatter's own fields (the LogRecord), never rendered
        event[key] = MASK if secret_key(key) else redact_value(value)
    return event


# -- the status line -----------------------------------------------------------------------
# A command on a terminal may keep one line at its bottom, redrawn in place (the progress of
# --run-once). Log lines to that terminal go above it: each erases it, is written, and draws
# it again, so that no log line is glued onto it. One lock orders the two writers.


class _StatusLine:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.stream: TextIO | None = None  # where it is drawn; None: not drawn
        self.text = ""


_status = _StatusLine()


def draw_status(stream: TextIO, text: str) -> None:
    """Draw (or redraw) the status line at the bottom of ``stream``."""
    with _status.lock:
        stream.write(CLEAR_LINE + text)
        stream.flush()
        _status.stream, _status.text = stream, text


def clear_status(stream: TextIO) -> None:
    """Erase the status line; what follows starts on a clean line."""
    with _status.lock:
        stream.write(CLEAR_LINE)
        stream.flush()
        _status.stream = None


class _LogStream:
    """Where log lines are written: whole lines only, above the status line if one is
    drawn on the same stream. ``sys.stdout`` and ``sys.stderr`` are looked up at each write,
    as structlog does for stdout (a test's capture replaces them)."""

    def __init__(self, out: TextIO) -> None:
        self._target: Callable[[], TextIO] = (
            (lambda: sys.stdout)
            if out is sys.stdout
            else (lambda: sys.stderr)
            if out is sys.stderr
            else (lambda: out)
        )
        self._pending = ""

    def write(self, text: str) -> int:
        with _status.lock:
            self._pending += text
            if "\n" not in self._pending:
                return len(text)
            lines, _, self._pending = self._pending.rpartition("\n")
            out = self._target()
            if _status.stream is out:
                out.write(f"{CLEAR_LINE}{lines}\n{_status.text}")
            else:
                out.write(f"{lines}\n")
            return len(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()


# -- configuration -------------------------------------------------------------------------


def wants_console(fmt: str, stream: TextIO) -> bool:
    """``auto`` means console output on a terminal, JSON lines otherwise."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt == "console" or (fmt == "auto" and stream.isatty())


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """``fmt`` is auto|json|console; auto picks console on a terminal, JSON otherwise.
    ``stream`` defaults to stderr (commands); the daemon passes stdout."""
    out = stream or sys.stderr
    log_stream = _LogStream(out)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if wants_console(fmt, out)
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
        logger_factory=structlog.PrintLoggerFactory(log_stream),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    _route_library_loggers(log_stream, renderer)


class _RoutedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so a second configuration replaces it."""


def _route_library_loggers(out: _LogStream, renderer: Any) -> None:
    """Standard-library records (the SDK, urllib3, APScheduler) go through the same
    processors and renderer as structlog's, at WARNING and above."""
    handler = _RoutedHandler(out)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RoutedHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    for name in ROUTED_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.handlers = []
        logger.propagate = True


def reset_logging() -> None:
    """Undo ``configure_logging`` (tests): structlog's defaults, no routed handler, no
    registered secrets."""
    structlog.reset_defaults()
    clear_registered_secrets()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _RoutedHandler)]:
        root.removeHandler(handler)


# -- context -------------------------------------------------------------------------------


@contextmanager
def bound_context(**values: object) -> Iterator[None]:
    """Bind ``values`` (None values skipped) to every log line of this thread or task until
    the block ends: ``with bound_context(policy=name): ...``."""
    present = {key: value for key, value in values.items() if value is not None}
    with structlog.contextvars.bound_contextvars(**present):
        yield
