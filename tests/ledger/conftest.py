"""Ledgers under test: a SQLite file, and a throwaway PostgreSQL database on the local server.

PostgreSQL runs on every machine of this project (CI's included); ``CBR_TEST_POSTGRES=off``
deselects its cases on a machine without it, and the summary says so (never a silent pass).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.ledger import SqlLedger, open_ledger

POSTGRES_ADMIN = os.environ.get(
    "CBR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", "postgres"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CBR_TEST_POSTGRES", "on") != "off":
        return
    kept = [item for item in items if "[postgres" not in item.nodeid]
    deselected = [item for item in items if "[postgres" in item.nodeid]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(POSTGRES_ADMIN)
    name = f"cbr_test_{secrets.token_hex(6)}"
    dsn = (
        f"host={admin.host} port={admin.port or 5432} dbname={admin.database} "
        f"user={admin.username or 'postgres'}"
    )
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _empty_postgres(url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    dsn = (
        f"host={parsed.host} port={parsed.port or 5432} dbname={parsed.database} "
        f"user={parsed.username}"
    )
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")


@pytest.fixture(params=BACKENDS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def make_ledger(ledger_url: str) -> Iterator[Callable[[], SqlLedger]]:
    opened: list[SqlLedger] = []

    def make() -> SqlLedger:
        ledger = open_ledger(ledger_url)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(make_ledger: Callable[[], SqlLedger]) -> SqlLedger:
    return make_ledger()
