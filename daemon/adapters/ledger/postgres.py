"""The PostgreSQL engine: connect, statement and lock timeouts, TCP keepalives, and a guard
that ends a connection whose answer never comes.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL

from daemon.adapters.deadlines import shut_down
from daemon.core.errors import LedgerUnavailableError


@dataclass(frozen=True)
class DatabaseTimeouts:
    """How long a PostgreSQL ledger waits for its server (``ledger:`` in the config). A
    SQLite ledger has its busy timeout instead."""

    connect: timedelta = timedelta(seconds=10)
    statement: timedelta = timedelta(seconds=60)
    lock: timedelta = timedelta(seconds=20)
    keepalive: timedelta = timedelta(seconds=30)

    @property
    def no_answer(self) -> float:
        """Seconds after which a statement without any answer is abandoned: the server ends
        its own statements at ``statement``; silence past that (and a margin) is a stall."""
        return (self.statement + self.connect).total_seconds()


def postgresql_engine(parsed: URL, timeouts: DatabaseTimeouts) -> Engine:
    """Every wait bounded: the connect, each statement and each lock wait (server side), a
    dead peer (TCP keepalives, and unacknowledged data after twice the keepalive), and a
    server that does not answer at all (``StallGuard``)."""
    keepalive = max(1, int(timeouts.keepalive.total_seconds()))
    settings = (
        f"-c statement_timeout={_milliseconds(timeouts.statement)} "
        f"-c lock_timeout={_milliseconds(timeouts.lock)}"
    )
    given = parsed.query.get("options")
    options = f"{given} {settings}" if isinstance(given, str) else settings
    engine = create_engine(
        parsed.set(drivername="postgresql+psycopg"),
        pool_pre_ping=True,
        future=True,
        connect_args={
            "connect_timeout": max(2, round(timeouts.connect.total_seconds())),
            "keepalives": 1,
            "keepalives_idle": keepalive,
            "keepalives_interval": max(1, keepalive // 3),
            "keepalives_count": 3,
            "tcp_user_timeout": 2 * keepalive * 1000,
            "options": options,
        },
    )
    guard = StallGuard(timeouts.no_answer)

    @event.listens_for(engine, "connect")
    def _watch(dbapi_connection: Any, _record: Any) -> None:
        guard.watch(dbapi_connection)

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(connection: Connection, *_args: Any) -> None:
        guard.touch(connection.connection.dbapi_connection)

    @event.listens_for(engine, "commit")
    def _commit(connection: Connection) -> None:
        guard.touch(connection.connection.dbapi_connection)

    @event.listens_for(engine, "handle_error")
    def _unavailable(context: Any) -> None:
        error = context.original_exception
        dbapi_connection = getattr(context.connection, "connection", None)
        stalled = guard.abandoned(getattr(dbapi_connection, "dbapi_connection", None))
        if stalled or _is_timeout(error):
            reason = (
                f"the database gave no answer within {guard.limit:.0f}s "
                "(ledger.statement_timeout + ledger.connect_timeout); the connection was closed"
                if stalled
                else str(error).strip()
            )
            raise LedgerUnavailableError(f"ledger: {reason}; retried at the next run") from None

    return engine


def _milliseconds(value: timedelta) -> int:
    return max(1, int(value.total_seconds() * 1000))


def _is_timeout(error: object) -> bool:
    """A statement or lock wait the server ended, or a connect that timed out."""
    if isinstance(error, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
        return True
    return isinstance(error, psycopg.OperationalError) and "timeout expired" in str(error)


class StallGuard:
    """Closes the socket of a PostgreSQL connection that has been waiting for one answer
    longer than ``limit`` seconds, so the waiting call fails instead of hanging. The
    server's own timeouts cannot help when nothing comes back (a stalled proxy or network
    path that still acknowledges), nor TCP keepalives (answered by whatever is in between).

    One thread samples the watched connections every quarter ``limit``: a connection busy
    (libpq: a command in progress) in two samples with no new statement or commit between
    them (``touch``) is waiting on one answer."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._period = min(1.0, max(0.05, limit / 4))
        self._lock = threading.Lock()
        self._watched: dict[int, _Watched] = {}
        self._thread: threading.Thread | None = None

    def watch(self, dbapi_connection: Any) -> None:
        with self._lock:
            self._watched[id(dbapi_connection)] = _Watched(weakref.ref(dbapi_connection))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="ledger-stall-guard", daemon=True
                )
                self._thread.start()

    def touch(self, dbapi_connection: Any) -> None:
        watched = self._watched.get(id(dbapi_connection))
        if watched is not None:
            watched.statements += 1

    def abandoned(self, dbapi_connection: Any) -> bool:
        """Whether this guard closed that connection (its error is a stall, not a bug)."""
        watched = self._watched.get(id(dbapi_connection))
        return watched is not None and watched.closed

    def _run(self) -> None:
        while True:
            time.sleep(self._period)  # the guard's own pace, not a wait for a condition
            with self._lock:
                watched = list(self._watched.items())
            if not watched:
                return
            now = time.monotonic()
            for key, state in watched:
                if not self._check(state, now):
                    with self._lock:
                        self._watched.pop(key, None)

    def _check(self, state: _Watched, now: float) -> bool:
        """Sample one connection; False once it is gone."""
        connection = state.connection()
        if connection is None or connection.closed:
            return False
        if connection.info.transaction_status != psycopg.pq.TransactionStatus.ACTIVE:
            state.busy_since = None
            return True
        if state.busy_since is None or state.seen != state.statements:
            state.busy_since, state.seen = now, state.statements
        elif now - state.busy_since > self.limit and not state.closed:
            state.closed = True
            shut_down(connection.fileno())
        return True


@dataclass
class _Watched:
    connection: weakref.ref[Any]
    statements: int = 0
    seen: int = -1
    busy_since: float | None = None
    closed: bool = False
