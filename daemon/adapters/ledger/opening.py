"""Opening the ledger: the SQLite file (private, WAL, checked) or the PostgreSQL database,
migrated to the current schema."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel

from daemon.adapters.ledger.failures import cause_of, ledger_error
from daemon.adapters.ledger.postgres import DatabaseTimeouts, postgresql_engine
from daemon.adapters.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from daemon.adapters.ledger.sqlite import CREATED_BY, sqlite_engine
from daemon.adapters.ledger.store import SqlLedger
from daemon.core.errors import LedgerError, LedgerMissingError, LedgerUnavailableError

MIGRATION_LOCK = 0x63627272  # PostgreSQL advisory lock key held while migrating ("cbrr")


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
        engine, ready = sqlite_engine(parsed.database, create=create)
    elif parsed.get_backend_name() == "postgresql":
        engine, ready = (
            postgresql_engine(parsed, timeouts or DatabaseTimeouts()),
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


def _require_tables(engine: Engine) -> None:
    """An existing ledger has its schema version row; an empty file or database has not."""
    with engine.connect() as connection:
        found = inspect(connection).has_table("schema_version")
    if not found:
        where = engine.url.render_as_string(hide_password=True)
        raise LedgerMissingError(f"{where} holds no ledger yet; {CREATED_BY}")


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
