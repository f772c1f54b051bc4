"""The systemd notify protocol (sd_notify(3)) in the standard library: one datagram of
``KEY=VALUE`` lines to the socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace). Without that variable every call is a no-op.

Errors are raised, not swallowed: the caller decides whether a lost STATUS line matters
(a lost READY=1 or WATCHDOG=1 gets the service killed, so it should be logged).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from datetime import timedelta

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
# A datagram to a socket whose queue is full waits for room: bounded, so that a service
# manager that stopped reading (or a test's socket) never freezes the thread that reports.
SEND_TIMEOUT = 2.0


class SystemdNotifier:
    """Sends state changes to the service manager; ``enabled`` is False outside systemd."""

    def __init__(
        self, environ: Mapping[str, str] | None = None, *, send_timeout: float = SEND_TIMEOUT
    ) -> None:
        environment = os.environ if environ is None else environ
        self.address = _socket_address(environment.get(NOTIFY_SOCKET, ""))
        self.watchdog_interval = _watchdog_interval(environment)
        self.send_timeout = send_timeout

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> None:
        """``notify(READY=1, STATUS="idle")`` sends ``READY=1\\nSTATUS=idle``."""
        if self.address is None or not fields:
            return
        message = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items())
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(self.send_timeout)
            sock.connect(self.address)
            sock.sendall(message.encode())

    def ready(self, status: str) -> None:
        self.notify(READY=1, STATUS=status)

    def reloading(self, status: str) -> None:
        self.notify(RELOADING=1, STATUS=status)

    def stopping(self, status: str) -> None:
        self.notify(STOPPING=1, STATUS=status)

    def status(self, status: str) -> None:
        self.notify(STATUS=status)

    def watchdog(self) -> None:
        if self.watchdog_interval is not None:
            self.notify(WATCHDOG=1)


def _socket_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # Linux abstract namespace
    return value


def _watchdog_interval(environ: Mapping[str, str]) -> timedelta | None:
    """Half of ``WATCHDOG_USEC`` (as systemd recommends), or None when there is no watchdog
    or it watches another process."""
    usec = environ.get(WATCHDOG_USEC, "")
    pid = environ.get(WATCHDOG_PID, "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return timedelta(microseconds=int(usec) / 2)


def _one_line(value: str | int) -> str:
    """A newline would start a new assignment; STATUS= must stay one line."""
    return " ".join(str(value).splitlines())
