"""The SQLite file: created private with ``O_EXCL`` only when missing, opened only through
SQLite (closing any other descriptor of it would drop SQLite's locks), WAL, a busy timeout.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random

from daemon.adapters.ledger.base import READ_ONLY_OPTION
from daemon.core.errors import LedgerError, LedgerGoneError, LedgerMissingError

BUSY_TIMEOUT_MS = 10_000


CREATED_BY = "the daemon or `cbr-replicator --run-once` creates it (or check ledger.url)"


def sqlite_engine(database: str | None, *, create: bool = True) -> tuple[Engine, threading.Event]:
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
        raise LedgerMissingError(f"{path} does not exist; {CREATED_BY}")
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


def _is_busy(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


# SQLite answers "database is locked" at once, without its busy handler, to a connection that
# asks for WAL while another converts the file: six instances opening a new ledger together
# failed 10 % of the time. Retried within the busy timeout; once the file is in WAL
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
