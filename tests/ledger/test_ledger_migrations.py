"""Schema upgrades of a ledger in use, on each backend: rows kept, the new layout in place."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, create_engine, inspect, make_url, text

from daemon.adapters.ledger import SCHEMA_VERSION, open_ledger
from daemon.core.model import JobState
from tests.ledger.test_ledger import NOW, job

CREATED = datetime(2026, 11, 1, tzinfo=UTC)


def _connect(url: str) -> Engine:
    driver = "sqlite" if url.startswith("sqlite") else "postgresql+psycopg"
    return create_engine(make_url(url).set(drivername=driver))


def _jobs_indexes(url: str) -> set[str]:
    engine = _connect(url)
    try:
        return {str(index["name"]) for index in inspect(engine).get_indexes("jobs")}
    finally:
        engine.dispose()


def test_version_4_indexes_jobs_by_policy_and_state(ledger_url: str) -> None:
    """A version-3 ledger (jobs indexed on the policy alone) gets the (policy, state, backup
    created) index in place of that one, and keeps its jobs."""
    ledger = open_ledger(ledger_url)
    ledger.save_jobs(
        [
            job("b1", JobState.SUCCEEDED, backup_created_at=CREATED),
            job("b2", JobState.FAILED, backup_created_at=CREATED + timedelta(hours=1)),
        ],
        NOW,
    )
    ledger.close()
    engine = _connect(ledger_url)
    with engine.begin() as connection:  # back to what version 3 had
        connection.execute(text("DROP INDEX ix_jobs_policy_state"))
        connection.execute(text("CREATE INDEX ix_jobs_policy ON jobs (policy)"))
        connection.execute(text("UPDATE schema_version SET version = 3"))
    engine.dispose()
    assert "ix_jobs_policy_state" not in _jobs_indexes(ledger_url)

    ledger = open_ledger(ledger_url)
    try:
        assert ledger.schema_version() == SCHEMA_VERSION == 4
        window = ledger.replication_window("web")
        assert window.newest_replicated == CREATED
        assert window.oldest_waiting == CREATED + timedelta(hours=1)
    finally:
        ledger.close()
    indexes = _jobs_indexes(ledger_url)
    assert "ix_jobs_policy_state" in indexes
    assert "ix_jobs_policy" not in indexes
