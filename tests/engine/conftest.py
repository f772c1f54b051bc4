"""Fixtures of the end-to-end tests."""

from collections.abc import Iterator

import pytest

from daemon.adapters.ledger import SqlLedger, open_ledger
from tests.engine.harness import deploy

__all__ = ["deploy", "ledger"]


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[SqlLedger]:
    """An open ledger on each backend (``ledger_url``), closed after the test."""
    opened = open_ledger(ledger_url)
    yield opened
    opened.close()
