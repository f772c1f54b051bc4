"""Instances started together on an empty ledger (issue 8: several daemons on one PostgreSQL
database) all open it: the first creates the schema, the others wait and find it made.
Before the fix, all but one failed with a duplicate key in ``pg_type`` (CREATE TABLE racing)."""

from __future__ import annotations

import threading
from pathlib import Path

from daemon.adapters.ledger import SCHEMA_VERSION, SqlLedger, open_ledger


def test_instances_opening_an_empty_ledger_at_once_all_succeed(ledger_url: str) -> None:
    starting = 6
    barrier = threading.Barrier(starting)
    opened: list[SqlLedger] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            opened.append(open_ledger(ledger_url))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(starting)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(opened) == starting
        assert {ledger.schema_version() for ledger in opened} == {SCHEMA_VERSION}
    finally:
        for ledger in opened:
            ledger.close()


def test_new_sqlite_ledgers_opened_by_six_at_once_never_find_it_locked(tmp_path: Path) -> None:
    """SQLite refuses a switch to WAL at once ("database is locked", no busy wait) while
    another connection makes the same switch: one round in ten failed before the retry."""
    rounds = 30
    failures: list[BaseException] = []
    for round_number in range(rounds):
        url = f"sqlite:///{tmp_path / str(round_number) / 'ledger.db'}"
        barrier = threading.Barrier(6)

        def start(url: str = url, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                open_ledger(url).close()
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=start) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
