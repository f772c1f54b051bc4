"""Opening the ledger: the SQLite file (private, WAL, checked) or the PostgreSQL database,
migrated to the current schema."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random

from daemon.errors import LedgerError
from daemon.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from daemon.ledger.store import READ_ONLY_OPTION, SqlLedger, cause_of

BUSY_TIMEOUT_MS = 10_000
MIGRATION_LOCK = 0x63627272  # PostgreSQL advisory lock key held while migrating ("cbrr")


# -- opening -------------------------------------------------------------------------------------
def open_ledger(url: str) -> SqlLedger:
    """Open (creating or migrating) the ledger at ``url``. Raises LedgerError with the fix."""
    try:
        parsed = make_url(url)
    except Exception as error:  # SQLAlchemy raises ArgumentError, ValueError and more
        raise LedgerError(
            f"ledger.url: cannot parse {url!r}: {error}; use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed.database)
    elif parsed.get_backend_name() == "postgresql":
        engine = create_engine(
            parsed.set(drivername="postgresql+psycopg"), pool_pre_ping=True, future=True
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
        _migrate(engine)
    except LedgerError:
        engine.dispose()
        raise
    except SQLAlchemyError as error:
        engine.dispose()
        raise LedgerError(
            f"ledger {parsed.render_as_string(hide_password=True)}: cannot open: {cause_of(error)}"
        ) from None
    return ledger


def _sqlite_engine(database: str | None) -> Engine:
    if not database or database == ":memory:":
        raise LedgerError(
            "ledger.url: an in-memory SQLite ledger loses every job at exit; "
            "give a file: sqlite:////var/lib/cbr-replicator/ledger.db"
        )
    path = Path(database)
    _create_private_file(path)
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        future=True,
    )

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

    return engine


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


def _check_sqlite(engine: Engine) -> None:
    try:
        with engine.connect() as connection:
            result = connection.exec_driver_sql("PRAGMA quick_check").scalar()
    except SQLAlchemyError as error:
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
