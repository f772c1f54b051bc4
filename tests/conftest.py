"""Shared fixtures for the whole suite.

PostgreSQL runs on every machine of this project (CI's included): tests parametrized with a
``postgres`` ledger get a throwaway database ``cbr_test_<hex>`` that is dropped at the end.
``CBR_TEST_POSTGRES=off`` deselects those cases on a machine without it, and pytest's summary
says how many were deselected (never a silent pass).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_support import ThrowawayDatabase, dsn

LEDGER_BACKENDS = ["sqlite", "postgres"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CBR_TEST_POSTGRES", "on") != "off":
        return
    deselected = [item for item in items if _needs_postgres(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not _needs_postgres(item)]


def _needs_postgres(item: pytest.Item) -> bool:
    return "[postgres" in item.nodeid or item.get_closest_marker("postgres") is not None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of our own inside the local server, for this test session."""
    database = ThrowawayDatabase("cbr_test")
    try:
        yield database.url
    finally:
        database.drop()


def empty_postgres(url: str) -> None:
    """Drop every table: each test starts from an empty ledger."""
    import psycopg

    with psycopg.connect(dsn(url), autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")


@pytest.fixture(params=LEDGER_BACKENDS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger's URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_url")
    empty_postgres(url)
    return url
