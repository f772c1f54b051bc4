"""The submission protocol in-process: the real ledger (both backends), the real adapter over
HTTP against the emulator, and an explicit clock, so lease expiry needs no waiting."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from daemon.adapters.ledger import SqlLedger
from daemon.core import retrying
from daemon.core.model import GIB, Destination, Job, JobState, Origin
from daemon.emulator import Emulator
from daemon.engine import submit
from daemon.engine.context import Engine, Target
from tests.adapter.test_cloud_contract import make_cloud
from tests.engine.harness import one_vault_scenario, server_backup

SOURCE, DEST = "cn-north-4", "cn-south-1"
START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    backups = [server_backup("web-1"), server_backup("web-2")]
    with Emulator(one_vault_scenario(SOURCE, DEST, backups), clock="manual") as running:
        yield running


def setup(emulator: Emulator, ledger: SqlLedger, *, max_in_flight: int) -> tuple[Engine, Target]:
    clock = Clock()
    engine = Engine(
        cloud=make_cloud(emulator),
        ledger=ledger,
        clock=clock,
        owner="test:1:1",
        lease=timedelta(minutes=2),
        rng=random.Random(7),
        concurrency=2,
    )
    target = Target(
        policy="web",
        source_region=SOURCE,
        source_project_id=emulator.project_id(SOURCE),
        destination=Destination(DEST, emulator.project_id(DEST), emulator.vault_id(DEST, "web-dr")),
        retry=retrying.RetryPolicy(
            max_attempts=3,
            initial_backoff=timedelta(minutes=1),
            max_backoff=timedelta(minutes=10),
            multiplier=2.0,
            jitter=0.0,
        ),
        name_template="{backup_name}",
        description_template="copy of {backup_id}",
        enable_acceleration=False,
        max_in_flight=max_in_flight,
    )
    return engine, target


def job_for(emulator: Emulator, engine: Engine, target: Target, name: str, **fields: object) -> Job:
    values: dict[str, object] = {
        "source_backup_id": emulator.backup_id(name),
        "destination_region": DEST,
        "state": JobState.QUEUED,
        "origin": Origin.POLICY,
        "policy": target.policy,
        "source_region": SOURCE,
        "source_project_id": target.source_project_id,
        "source_vault_id": emulator.vault_id(SOURCE, "web-prod"),
        "destination_project_id": target.destination.project_id,
        "destination_vault_id": target.destination.vault_id,
        "backup_name": name,
        "bytes": 40 * GIB,
    }
    values.update(fields)
    return Job(**values)  # type: ignore[arg-type]


def test_a_submitting_job_left_by_a_crash_is_posted_even_when_it_holds_the_only_slot(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    """Crash after the intent, before the POST: the job is ``submitting`` and counts as in
    flight. With max_in_flight 1 it must still be reconciled and then POSTed, exactly once."""
    engine, target = setup(emulator, ledger, max_in_flight=1)
    crashed = job_for(
        emulator,
        engine,
        target,
        "web-1",
        state=JobState.SUBMITTING,
        lease_owner="dead:9:9",
        lease_expires_at=START - timedelta(seconds=1),
    )
    ledger.save_jobs([crashed], START)
    report = submit.submit_due(engine, target)
    assert (report.claimed, report.submitted) == (1, 1)
    assert len(emulator.requests("replicate_backup")) == 1
    assert len(emulator.requests("show_backup")) == 1  # reconciled before the POST
    stored = ledger.get_job(crashed.source_backup_id, DEST)
    assert stored is not None
    assert stored.state == JobState.REPLICATING
    assert stored.lease_owner is None


def test_a_live_lease_of_another_process_is_respected_until_it_expires(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    engine, target = setup(emulator, ledger, max_in_flight=5)
    held = job_for(
        emulator,
        engine,
        target,
        "web-1",
        lease_owner="other:2:2",
        lease_expires_at=START + timedelta(minutes=1),
    )
    ledger.save_jobs([held], START)
    assert submit.submit_due(engine, target).claimed == 0
    assert emulator.requests("replicate_backup") == []
    engine.clock.now = START + timedelta(minutes=2)  # type: ignore[attr-defined]
    assert submit.submit_due(engine, target).submitted == 1
    assert len(emulator.requests("replicate_backup")) == 1


def test_a_post_that_landed_before_the_crash_is_found_and_never_repeated(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    engine, target = setup(emulator, ledger, max_in_flight=1)
    job = job_for(emulator, engine, target, "web-2")
    ledger.save_jobs([job], START)
    assert submit.submit_due(engine, target).submitted == 1
    # As if the process died after the POST but before recording it: back to submitting.
    landed = ledger.get_job(job.source_backup_id, DEST)
    assert landed is not None
    ledger.save_jobs([landed.evolve(state=JobState.SUBMITTING, replication_record_id=None)], START)
    report = submit.submit_due(engine, target)
    assert (report.reconciled, report.submitted) == (1, 0)
    assert len(emulator.requests("replicate_backup")) == 1
    assert emulator.duplicates() == []


def test_the_daily_traffic_budget_defers_the_rest_to_the_next_local_day(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    """Two 40 GiB backups, a 50 GiB budget per day in Asia/Shanghai (UTC+8): one is
    submitted; the other waits, queued, until local midnight (16:00 UTC), then goes."""
    engine, target = setup(emulator, ledger, max_in_flight=5)
    target = replace(target, traffic_budget_per_day=50 * GIB, timezone="Asia/Shanghai")
    jobs = [job_for(emulator, engine, target, name) for name in ("web-1", "web-2")]
    ledger.save_jobs(jobs, START)
    first = submit.submit_due(engine, target)
    assert (first.submitted, first.deferred) == (1, 1)
    assert len(emulator.requests("replicate_backup")) == 1
    deferred = [
        job
        for job in ledger.jobs_in_states([JobState.QUEUED], limit=5)
        if job.last_error_code == "traffic_budget_exhausted"
    ]
    assert len(deferred) == 1
    local_midnight = datetime(2026, 11, 25, 16, 0, tzinfo=UTC)
    assert deferred[0].next_attempt_at == local_midnight
    assert ledger.submitted_bytes(policy="web", since=START) == 40 * GIB
    # Later the same local day: nothing is claimed, nothing is sent.
    engine.clock.now = local_midnight - timedelta(minutes=1)  # type: ignore[attr-defined]
    assert submit.submit_due(engine, target).claimed == 0
    assert len(emulator.requests("replicate_backup")) == 1
    # The next local day has a fresh budget.
    engine.clock.now = local_midnight  # type: ignore[attr-defined]
    assert submit.submit_due(engine, target).submitted == 1
    assert len(emulator.requests("replicate_backup")) == 2
