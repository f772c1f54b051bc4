"""Ledgers under test, on both backends (``ledger_url`` of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from daemon.adapters.ledger import SqlLedger, open_ledger


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
