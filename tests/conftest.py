"""Shared fixtures for the whole suite.

PostgreSQL runs on every machine of this project (CI's included): tests parametrized with a
``postgres`` ledger get a throwaway database ``cbr_test_<hex>`` that is dropped at the end.
``CBR_TEST_POSTGRES=off`` deselects those cases on a machine without it, and pytest's summary
says how many were deselected (never a silent pass).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_ADMIN = os.environ.get(
    "CBR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
LEDGER_BACKENDS = ["sqlite", "postgres"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CBR_TEST_POSTGRES", "on") != "off":
        return
    deselected = [item for item in items if "[postgres" in item.nodeid]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if "[postgres" not in item.nodeid]


def _dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return (
        f"host={parsed.host} port={parsed.port or 5432} dbname={parsed.database} "
        f"user={parsed.username or 'postgres'}"
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of our own inside the local server, for this test session."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"cbr_test_{secrets.token_hex(6)}"
    with psycopg.connect(_dsn(POSTGRES_ADMIN), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_dsn(POSTGRES_ADMIN), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_postgres(url: str) -> None:
    """Drop every table: each test starts from an empty ledger."""
    import psycopg

    with psycopg.connect(_dsn(url), autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")


@pytest.fixture(params=LEDGER_BACKENDS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger's URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_url")
    empty_postgres(url)
    return url
