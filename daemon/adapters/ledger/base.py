"""What every part of the SQL ledger shares: the engine, the two kinds of transaction, error
redaction, and reading a timestamp back from either database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session

from daemon.adapters.ledger.failures import ledger_error
from daemon.adapters.ledger.schema import SchemaVersionRow, UtcDateTime

IN_LIST_CHUNK = 500  # below SQLite's bound-parameter limit, whatever its build
# The execution option that makes a transaction begin deferred on SQLite (see ``sqlite``).
READ_ONLY_OPTION = "cbr_read_only"
_READ_ONLY = {READ_ONLY_OPTION: True}


def in_chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), IN_LIST_CHUNK):
        yield values[start : start + IN_LIST_CHUNK]


def parse_if_text(value: object) -> datetime | None:
    """``min()`` over a SQLite text column comes back as text, not through the column type."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


class SqlBase:
    """The engine and the transactions; each role's store adds its queries."""

    def __init__(self, engine: Engine, redact: Callable[[str], str] | None = None) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # Every error text goes through it before it is stored (the app sets the log's secret
        # redaction): an exception quoting a secret must reach neither the ledger nor what
        # ``status`` and ``history`` read from it.
        self.redact = redact

    def _scrub(self, text: str | None) -> str | None:
        return text if text is None or self.redact is None else self.redact(text)

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """One read-only transaction on a plain connection, for the reads a sweep makes per
        page. On SQLite it begins deferred: it takes no write lock, so a page read never makes
        the submitter's (or another instance's) writes wait."""
        try:
            with self.engine.connect() as connection:
                connection.execution_options(**_READ_ONLY)
                with connection.begin():
                    yield connection
        except SQLAlchemyError as error:
            raise ledger_error(error, self.engine) from error

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except IntegrityError:
            raise
        except SQLAlchemyError as error:
            raise ledger_error(error, self.engine) from error

    def _moment(self, value: object) -> datetime | None:
        return UtcDateTime().process_result_value(parse_if_text(value), self.engine.dialect)

    def schema_version(self) -> int:
        with self._session() as session:
            row = session.get(SchemaVersionRow, 1)
            return row.version if row is not None else 0

    def close(self) -> None:
        self.engine.dispose()
