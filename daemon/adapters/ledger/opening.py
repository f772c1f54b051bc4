"""Opening the ledger: the SQLite file (private, WAL, checked) or the PostgreSQL database,
migrated to the current schema."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random

from daemon.adapters.deadlines import shut_down
from daemon.adapters.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from daemon.adapters.ledger.store import READ_ONLY_OPTION, SqlLedger, cause_of, ledger_error
from daemon.core.errors import (
    LedgerError,
    LedgerGoneError,
    LedgerMissingError,
    LedgerUnavailableError,
)

BUSY_TIMEOUT_MS = 10_000
MIGRATION_LOCK = 0x63627272  # PostgreSQL advisory lock key held while migrating ("cbrr")


# -- opening -------------------------------------------------------------------------------------
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


def open_ledger(
    url: str, timeouts: DatabaseTimeouts | None = None, *, create: bool = True
) -> SqlLedger:
    """Open (creating or migrating) the ledger at ``url``. Raises LedgerError with the fix.
    Without ``create`` (the commands that only read it) a ledger that does not exist yet, a
    file or a database without its tables, is an error, never made."""
    try:
        parsed = make_url(url)
    except Exception as error:  # SQLAlchemy raises ArgumentError, ValueError and more
        raise LedgerError(
            f"ledger.url: cannot parse {url!r}: {error}; use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        engine, ready = _sqlite_engine(parsed.database, create=create)
    elif parsed.get_backend_name() == "postgresql":
        engine, ready = (
            _postgresql_engine(parsed, timeouts or DatabaseTimeouts()),
            threading.Event(),
        )
    else:
        raise LedgerError(
            f"ledger.url: unsupported database {parsed.get_backend_name()!r}; "
            "use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
        )
    ledger = SqlLedger(engine)
    try:
        if ledger.is_sqlite:
            _check_sqlite(engine)
        if not create:
            _require_tables(engine)
        _migrate(engine)
        ready.set()  # from now on, a new connection must find the ledger's tables
    except LedgerError:
        engine.dispose()
        raise
    except SQLAlchemyError as error:
        engine.dispose()
        place = f"ledger {parsed.render_as_string(hide_password=True)}: cannot open"
        raise ledger_error(error, engine, place) from None
    return ledger


def _postgresql_engine(parsed: URL, timeouts: DatabaseTimeouts) -> Engine:
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


def _sqlite_engine(database: str | None, *, create: bool = True) -> tuple[Engine, threading.Event]:
    """The engine, and the event to set once the ledger is opened and migrated."""
    if not database or database == ":memory:":
        raise LedgerError(
            "ledger.url: an in-memory SQLite ledger loses every job at exit; "
            "give a file: sqlite:////var/lib/cbr-replicator/ledger.db"
        )
    path = Path(database)
    if create:
        _create_private_file(path)
    elif not path.exists():  # a stat: SQLite would create the file on connecting
        raise LedgerMissingError(f"{path} does not exist; {_CREATED_BY}")
    opened = _identity(path)
    ready = threading.Event()
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        future=True,
    )

    # A ledger deleted (or replaced) under a running process: a pooled connection would go on
    # writing to the deleted file, a new one would open an empty database ("no such table"
    # on every sweep, forever). Each use checks that the path is still the file opened (its
    # inode cannot be reused while a connection holds it open), and each new connection, once
    # the ledger is set up, that it found the ledger's tables (a reused inode, a new file).
    gone = (
        f"ledger {path}: the file was deleted or replaced while this process used it; "
        "stopping. Restore it from a backup (an empty file SQLite may have made there since "
        "is not it), then start the service again"
    )

    @event.listens_for(engine, "engine_connect")
    def _still_there(connection: Connection) -> None:
        if _identity(path) != opened:
            connection.invalidate()
            raise LedgerGoneError(gone)

    @event.listens_for(engine, "connect")
    def _not_empty(dbapi_connection: Any, _record: Any) -> None:
        if ready.is_set() and not _has_tables(dbapi_connection):
            dbapi_connection.close()
            raise LedgerGoneError(gone)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the pysqlite recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine, ready


def _has_tables(dbapi_connection: Any) -> bool:
    cursor = dbapi_connection.cursor()
    try:
        found = cursor.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
    finally:
        cursor.close()
    return found is not None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def open_scratch_ledger() -> SqlLedger:
    """An empty ledger in this process's memory: what a dry run decides against before any
    ledger exists (as the first run would decide); nothing of it outlives the process."""
    engine = create_engine(
        "sqlite://",
        poolclass=StaticPool,
        connect_args={"check_same_thread": False},
        future=True,
    )
    _migrate(engine)
    return SqlLedger(engine)


def _is_busy(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


# SQLite answers "database is locked" at once, without its busy handler, to a connection that
# asks for WAL while another converts the file: six instances opening a new ledger together
# failed 10 % of the time (issue 8). Retried within the busy timeout; once the file is in WAL
# mode, the first query finds it so and needs no lock.
@retry(
    retry=retry_if_exception(_is_busy),
    stop=stop_after_delay(BUSY_TIMEOUT_MS / 1000),
    wait=wait_random(0.005, 0.05),
    reraise=True,
)
def _use_wal(cursor: sqlite3.Cursor) -> None:
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        cursor.execute("PRAGMA journal_mode=WAL")


def _create_private_file(path: Path) -> None:
    """The ledger holds project and vault ids: 0600 in a 0700 directory when we create them.

    An existing file is never opened here. Closing any descriptor of a file drops every POSIX
    lock this process holds on it, SQLite's included: an open and close beside a live
    connection let another process delete the WAL under it. A new file (O_EXCL) has no
    connection yet, in this process or any other."""
    try:
        # exist_ok: several instances may create it at the same moment.
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            os.close(fd)
    except OSError as error:
        raise LedgerError(
            f"ledger {path}: cannot create or open: {error.strerror}; check the directory "
            "exists and is writable by the service user"
        ) from None
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
    except OSError as error:
        raise LedgerError(
            f"ledger {path}: cannot read or set its mode: {error.strerror}; check the file "
            "belongs to the service user"
        ) from None


_CREATED_BY = "the daemon or `cbr-replicator --run-once` creates it (or check ledger.url)"


def _require_tables(engine: Engine) -> None:
    """An existing ledger has its schema version row; an empty file or database has not."""
    with engine.connect() as connection:
        found = inspect(connection).has_table("schema_version")
    if not found:
        where = engine.url.render_as_string(hide_password=True)
        raise LedgerMissingError(f"{where} holds no ledger yet; {_CREATED_BY}")


def _check_sqlite(engine: Engine) -> None:
    try:
        with engine.connect() as connection:
            result = connection.exec_driver_sql("PRAGMA quick_check").scalar()
    except SQLAlchemyError as error:
        found = ledger_error(error, engine, f"ledger {engine.url.database}: cannot open")
        if isinstance(found, LedgerUnavailableError):  # full disk, locked: the file is fine
            raise found from None
        raise LedgerError(
            f"ledger {engine.url.database}: not a readable SQLite database ({cause_of(error)}); "
            "restore it from a backup or move it away to start an empty ledger"
        ) from None
    if result != "ok":
        raise LedgerError(
            f"ledger {engine.url.database}: integrity check failed ({result}); "
            "restore it from a backup or move it away to start an empty ledger"
        )


def _migrate(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Instances started together on an empty database would all create the tables at
            # once, and all but one fail; one at a time, the later ones find them made.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        SQLModel.metadata.create_all(
            connection, tables=[SQLModel.metadata.tables["schema_version"]]
        )
        row = connection.execute(text("SELECT version FROM schema_version WHERE id = 1")).first()
        current = int(row[0]) if row is not None else 0
        if current > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {engine.url.render_as_string(hide_password=True)}: schema version "
                f"{current} is newer than this cbr-replicator understands ({SCHEMA_VERSION}); "
                "upgrade cbr-replicator or restore a ledger it wrote"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version - 1](connection)
        if current == 0:
            connection.execute(
                text("INSERT INTO schema_version (id, version) VALUES (1, :v)"),
                {"v": SCHEMA_VERSION},
            )
        elif current < SCHEMA_VERSION:
            connection.execute(
                text("UPDATE schema_version SET version = :v WHERE id = 1"), {"v": SCHEMA_VERSION}
            )
