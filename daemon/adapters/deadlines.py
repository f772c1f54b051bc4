"""A total deadline for one outbound request, whatever its socket reads do.

Socket timeouts bound each read: an answer that drips a byte a second never trips them. A
request runs inside ``bound(seconds)``; the connections it uses ``attach`` themselves; one
thread shuts down the sockets of every request whose deadline passed, so the blocked read
fails at once and the request ends with an error (the caller classifies it). Standard
library only: the cloud adapter (requests under the SDK), the webhook client (urllib) and
the ledger (libpq) share it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def shut_down(fd: int) -> None:
    """End the TCP connection of ``fd`` under its reader's feet (it wakes up and fails). A
    duplicate descriptor is shut down (that acts on the connection, TLS or not, without
    touching the reader's TLS state) and closed; the owner's descriptor stays open."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class Ticket:
    """One request's deadline and the connections it used."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self._connections: list[Any] = []

    def attach(self, connection: Any) -> None:
        self._connections.append(connection)
        if self.expired:
            _abort(connection)

    def expire(self) -> None:
        self.expired = True
        for connection in self._connections:
            _abort(connection)


def _abort(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            fd = sock.fileno()
        except OSError:
            return
        if fd >= 0:
            shut_down(fd)


class _Current(threading.local):
    ticket: Ticket | None = None


class DeadlineGuard:
    """Expires the tickets whose deadline passed; its thread runs while any ticket is open."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._tickets: set[Ticket] = set()
        self._thread: threading.Thread | None = None
        self._current = _Current()

    @contextmanager
    def bound(self, seconds: float) -> Iterator[Ticket]:
        """The calling thread's requests until the block ends must be over in ``seconds``."""
        ticket = Ticket(time.monotonic() + seconds)
        with self._condition:
            self._tickets.add(ticket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            self._condition.notify()
        previous, self._current.ticket = self._current.ticket, ticket
        try:
            yield ticket
        finally:
            self._current.ticket = previous
            with self._condition:
                self._tickets.discard(ticket)
                self._condition.notify()

    def attach(self, connection: Any) -> None:
        """Called by a connection (with a ``sock``) as a request starts on it."""
        ticket = self._current.ticket
        if ticket is not None:
            ticket.attach(connection)

    def _run(self) -> None:
        with self._condition:
            while self._tickets:
                now = time.monotonic()
                waiting = [ticket for ticket in self._tickets if not ticket.expired]
                for ticket in waiting:
                    if ticket.deadline <= now:
                        ticket.expire()
                later = [ticket.deadline for ticket in waiting if ticket.deadline > now]
                self._condition.wait(min(later) - now if later else None)
            self._thread = None


GUARD = DeadlineGuard()  # one for the process: one thread, however many clients
