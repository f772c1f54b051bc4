"""The submission protocol on the in-memory ports (``tests/fakes.py``): the scenarios of
``test_submit_protocol`` (which runs them through the real ledger, SDK and emulator), plus
an answer lost after the cloud applied the POST. Milliseconds instead of seconds: the
protocol's decisions, not the adapters, are under test here."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from daemon.core import retrying
from daemon.core.errors import AmbiguousError
from daemon.core.model import (
    ECS_RESOURCE_TYPE,
    GIB,
    Backup,
    Destination,
    Job,
    JobState,
    Origin,
)
from daemon.engine import submit
from daemon.engine.context import Engine, Target
from tests.fakes import FakeCloud, FakeLedger

SOURCE, DEST = "cn-north-4", "cn-south-1"
START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


def backup(name: str) -> Backup:
    return Backup(
        id=f"id-{name}",
        name=name,
        vault_id="v-prod",
        resource_type=ECS_RESOURCE_TYPE,
        image_type="backup",
        status="available",
        resource_size_gb=40,
        contain_system_disk=True,
    )


def setup(*, max_in_flight: int) -> tuple[Engine, Target, FakeCloud, FakeLedger, Clock]:
    cloud = FakeCloud({b.id: b for b in (backup("web-1"), backup("web-2"))})
    ledger = FakeLedger()
    clock = Clock()
    engine = Engine(
        cloud=cloud,  # type: ignore[arg-type]
        ledger=ledger,  # type: ignore[arg-type]
        clock=clock,
        owner="test:1:1",
        lease=timedelta(minutes=2),
        rng=random.Random(7),
        concurrency=2,
    )
    target = Target(
        policy="web",
        source_region=SOURCE,
        source_project_id="p-src",
        destination=Destination(DEST, "p-dst", "v-dr"),
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
    return engine, target, cloud, ledger, clock


def job_for(name: str, **fields: object) -> Job:
    values: dict[str, object] = {
        "source_backup_id": f"id-{name}",
        "destination_region": DEST,
        "state": JobState.QUEUED,
        "origin": Origin.POLICY,
        "policy": "web",
        "source_region": SOURCE,
        "source_project_id": "p-src",
        "source_vault_id": "v-prod",
        "destination_project_id": "p-dst",
        "destination_vault_id": "v-dr",
        "backup_name": name,
        "bytes": 40 * GIB,
    }
    values.update(fields)
    return Job(**values)  # type: ignore[arg-type]


def test_a_submitting_job_left_by_a_crash_is_posted_even_when_it_holds_the_only_slot() -> None:
    engine, target, cloud, ledger, _ = setup(max_in_flight=1)
    crashed = job_for(
        "web-1",
        state=JobState.SUBMITTING,
        lease_owner="dead:9:9",
        lease_expires_at=START - timedelta(seconds=1),
    )
    ledger.save_jobs([crashed], START)
    report = submit.submit_due(engine, target)
    assert (report.claimed, report.submitted) == (1, 1)
    assert cloud.posts == [("id-web-1", DEST)]
    stored = ledger.get_job("id-web-1", DEST)
    assert stored is not None
    assert (stored.state, stored.lease_owner) == (JobState.REPLICATING, None)


def test_the_intent_is_stored_before_the_post() -> None:
    engine, target, cloud, ledger, _ = setup(max_in_flight=5)
    ledger.save_jobs([job_for("web-1")], START)
    seen: list[JobState] = []
    cloud.on_post = lambda backup_id: seen.append(ledger.jobs[(backup_id, DEST)].state)
    submit.submit_due(engine, target)
    assert seen == [JobState.SUBMITTING]


def test_a_live_lease_of_another_process_is_respected_until_it_expires() -> None:
    engine, target, cloud, ledger, clock = setup(max_in_flight=5)
    held = job_for("web-1", lease_owner="other:2:2", lease_expires_at=START + timedelta(minutes=1))
    ledger.save_jobs([held], START)
    assert submit.submit_due(engine, target).claimed == 0
    assert cloud.posts == []
    clock.now = START + timedelta(minutes=2)
    assert submit.submit_due(engine, target).submitted == 1
    assert len(cloud.posts) == 1


def test_a_post_that_landed_before_the_crash_is_found_and_never_repeated() -> None:
    engine, target, cloud, ledger, _ = setup(max_in_flight=1)
    ledger.save_jobs([job_for("web-2")], START)
    assert submit.submit_due(engine, target).submitted == 1
    landed = ledger.get_job("id-web-2", DEST)
    assert landed is not None
    ledger.save_jobs([landed.evolve(state=JobState.SUBMITTING, replication_record_id=None)], START)
    report = submit.submit_due(engine, target)
    assert (report.reconciled, report.submitted) == (1, 0)
    assert len(cloud.posts) == 1


def test_an_answer_lost_after_the_cloud_applied_the_post_is_reconciled_not_repeated() -> None:
    engine, target, cloud, ledger, clock = setup(max_in_flight=5)
    ledger.save_jobs([job_for("web-1")], START)
    cloud.answer = lambda _backup_id: AmbiguousError("connection reset after sending")
    cloud.applied = lambda _backup_id: True
    assert submit.submit_due(engine, target).deferred == 1
    kept = ledger.get_job("id-web-1", DEST)
    assert kept is not None
    assert kept.state == JobState.SUBMITTING
    clock.now = START + engine.recheck  # the POST can no longer be in flight
    report = submit.submit_due(engine, target)
    assert (report.reconciled, report.submitted) == (1, 0)
    assert len(cloud.posts) == 1
    done = ledger.get_job("id-web-1", DEST)
    assert done is not None
    assert done.state == JobState.REPLICATING


def test_the_daily_traffic_budget_defers_the_rest_to_the_next_local_day() -> None:
    engine, target, cloud, ledger, clock = setup(max_in_flight=5)
    target = replace(target, traffic_budget_per_day=50 * GIB, timezone="Asia/Shanghai")
    ledger.save_jobs([job_for(name) for name in ("web-1", "web-2")], START)
    first = submit.submit_due(engine, target)
    assert (first.submitted, first.deferred) == (1, 1)
    deferred = [
        job
        for job in ledger.jobs_in_states([JobState.QUEUED], limit=5)
        if job.last_error_code == "traffic_budget_exhausted"
    ]
    local_midnight = datetime(2026, 11, 25, 16, 0, tzinfo=UTC)
    assert [job.next_attempt_at for job in deferred] == [local_midnight]
    assert ledger.submitted_bytes(policy="web", since=START) == 40 * GIB
    clock.now = local_midnight - timedelta(minutes=1)
    assert submit.submit_due(engine, target).claimed == 0
    clock.now = local_midnight
    assert submit.submit_due(engine, target).submitted == 1
    assert len(cloud.posts) == 2


def test_a_new_post_forgets_the_record_of_the_attempt_before() -> None:
    """Retried after its record failed, a job's intent holds no record id: otherwise, with the
    new POST's answer lost, a sweep would follow the old failed record and fail the job while
    the new replication runs."""
    engine, target, cloud, ledger, _ = setup(max_in_flight=5)
    failed = job_for(
        "web-1",
        state=JobState.FAILED,
        attempts=1,
        replication_record_id="record-of-the-failed-attempt",
        next_attempt_at=START - timedelta(seconds=1),
    )
    ledger.save_jobs([failed], START)
    cloud.answer = lambda _backup_id: AmbiguousError("connection reset after sending")
    assert submit.submit_due(engine, target).deferred == 1
    kept = ledger.get_job("id-web-1", DEST)
    assert kept is not None
    assert (kept.state, kept.attempts) == (JobState.SUBMITTING, 2)
    assert kept.replication_record_id is None
