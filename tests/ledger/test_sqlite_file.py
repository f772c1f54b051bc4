"""SQLite specifics: file safety, durability pragmas, integrity check, schema versions."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from daemon.adapters.ledger import MIGRATIONS, SCHEMA_VERSION, open_ledger
from daemon.core.errors import LedgerError
from daemon.core.model import JobState
from tests.ledger.test_ledger import NOW, REGION, job


def test_the_ledger_file_is_private_and_its_directory_too(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.db"
    open_ledger(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_existing_world_readable_ledger_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    open_ledger(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_connections_use_wal_full_sync_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        with ledger.engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
    finally:
        ledger.close()
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 2,
        "busy_timeout": 10000,
        "foreign_keys": 1,
    }


def test_a_file_that_is_not_a_database_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not SQLite " * 400)
    path.chmod(0o600)
    with pytest.raises(LedgerError, match=r"ledger\.db.*restore it from a backup or move it away"):
        open_ledger(f"sqlite:///{path}")


def test_a_ledger_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    open_ledger(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(LedgerError, match="newer than this cbr-replicator understands"):
        open_ledger(f"sqlite:///{path}")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("mysql://root@localhost/x", "unsupported database"),
        ("not a url", "cannot parse"),
    ],
)
def test_unusable_urls_are_refused_with_the_fix(url: str, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        open_ledger(url)


def test_an_unwritable_directory_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerError, match="cannot create or open"):
        open_ledger(f"sqlite:///{blocker / 'ledger.db'}")


def test_a_version_1_ledger_migrates_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:  # what the first release created
        MIGRATIONS[0](connection)
        connection.execute(
            text("CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER)")
        )
        connection.execute(text("INSERT INTO schema_version VALUES (1, 1)"))
        connection.execute(
            text(
                "INSERT INTO vault_bindings (source_vault_id, destination_region, "
                "destination_project_id, destination_vault_id, origin, source_region, state, "
                "source_vault_name, created_at) "
                "VALUES ('v', 'r', 'p', 'dv', 'manual', 's', 'bound', 'n', '2026-11-01 00:00:00')"
            )
        )
    engine.dispose()
    path.chmod(0o600)
    ledger = open_ledger(f"sqlite:///{path}")
    try:
        assert ledger.schema_version() == SCHEMA_VERSION == 4
        assert [b.source_vault_id for b in ledger.list_bindings()] == ["v"]
        assert ledger.instances(datetime.now(UTC)) == []
        assert ledger.alert_states("web") == {}  # version 3: alert states and notifications
        assert ledger.recent_notifications() == []
    finally:
        ledger.close()


def test_a_sweeps_page_read_does_not_wait_for_a_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's jobs are read in a deferred transaction: it takes no write lock, so it neither
    waits for a writer holding one nor makes writers wait (issue 7)."""
    path = tmp_path / "ledger.db"
    # a wait fails the test at once
    monkeypatch.setattr("daemon.adapters.ledger.sqlite.BUSY_TIMEOUT_MS", 200)
    ledger = open_ledger(f"sqlite:///{path}")
    [done, waiting] = ledger.save_jobs([job("b1", JobState.SUCCEEDED), job("b2")], NOW)
    writer = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
        # both of the read's queries run: the states, then the open job whole
        page = ledger.get_page_jobs(REGION, ["b1", "b2", "b3"])
        assert page.settled == {"b1": done.state}
        assert page.open == {"b2": waiting}
        writer.execute("ROLLBACK")
    finally:
        writer.close()
        ledger.close()
