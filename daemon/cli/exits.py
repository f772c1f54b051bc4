"""How a command ends: errors become an exit code and one line on stderr (or a JSON object),
never a traceback; everything written is redacted; a closed output pipe is exit 141.
"""

from __future__ import annotations

import json
import os
import select
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, TextIO

from daemon.core import exitcodes
from daemon.core.errors import (
    AmbiguousError,
    CloudError,
    ConfigError,
    EndpointError,
    LedgerError,
    LedgerUnavailableError,
    PermissionDeniedError,
    RefusedError,
    TransientError,
)


def discard_closed_output() -> None:
    """Point stdout (and stderr, when it is the closed pipe too) at /dev/null, so the
    interpreter's last flush at exit finds nowhere to fail (the Python docs' recipe for
    SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        if stream is sys.stdout or _reader_gone(fd):
            os.dup2(devnull, fd)
    os.close(devnull)


def _reader_gone(fd: int) -> bool:
    """Is ``fd`` a pipe whose reading end is closed? (poll reports POLLERR on Linux)"""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def err_quietly(message: str) -> None:
    """One line on stderr, unless stderr itself is gone."""
    with suppress(OSError):
        print(message, file=sys.stderr, flush=True)


class _Redacting:
    """A text stream whose writes pass through the secret redaction of the log: what a
    command prints (a report quoting a ledger error, a message quoting an exception) is
    masked like a log line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        from daemon.core.redaction import redact_text

        self._stream.write(redact_text(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, ...
        return getattr(self._stream, name)


@contextmanager
def redacted_output() -> Iterator[None]:
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Redacting(stdout), _Redacting(stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr


class _Result:
    code: int = exitcodes.OK


@contextmanager
def errors_as_exit_codes(*, as_json: bool = False) -> Iterator[_Result]:
    """Every anticipated failure becomes one stderr line and its exit code; no traceback.
    With ``as_json`` the failure is also a JSON object on stdout: ``{"error": {"reason",
    "message", "exit_code"}}`` (``reason``: a refusal's reason code, or the kind of error)."""
    result = _Result()
    failure: tuple[str, list[str]] | None = None
    try:
        yield result
    except ConfigError as error:
        failure, result.code = ("config", list(error.problems)), exitcodes.CONFIG
    except LedgerUnavailableError as error:  # the database did not answer: retried later
        failure, result.code = ("ledger_unavailable", [str(error)]), exitcodes.UNAVAILABLE
    except LedgerError as error:  # its message names the ledger
        failure, result.code = ("ledger", [str(error)]), exitcodes.CONFIG
    except RefusedError as error:
        failure, result.code = (error.reason, [f"refused: {error}"]), exitcodes.REFUSED
    except EndpointError as error:
        failure, result.code = ("endpoint", [f"cloud endpoint: {error}"]), exitcodes.CONFIG
    except PermissionDeniedError as error:
        message = (
            f"permission denied by the cloud: {error}; check the access key, secret key "
            "and the IAM permissions listed in the README"
        )
        failure, result.code = ("permission_denied", [message]), exitcodes.NO_PERMISSION
    except (TransientError, AmbiguousError) as error:
        message = f"cloud unreachable or throttled after retries: {error}"
        failure, result.code = ("cloud_unavailable", [message]), exitcodes.UNAVAILABLE
    except CloudError as error:
        failure = ("cloud_error", [f"cloud error: {error}"])
        result.code = exitcodes.REPLICATION_FAILED
    except (ValueError, LookupError) as error:
        failure, result.code = ("usage", [f"cbr-replicator: {error}"]), exitcodes.USAGE
    if failure is None:
        return
    reason, lines = failure
    for line in lines:
        err(line)
    if as_json:
        from daemon.core.redaction import redact_text

        message = redact_text("\n".join(lines))
        error_document = {"reason": reason, "message": message, "exit_code": result.code}
        print(json.dumps({"error": error_document}, indent=2, sort_keys=True), flush=True)


def err(message: str) -> None:
    from daemon.core.redaction import redact_text

    print(redact_text(message), file=sys.stderr)
