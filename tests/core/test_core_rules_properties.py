"""Invariants of ``rules.decide`` over generated backups, records and jobs (hypothesis)."""

from __future__ import annotations

from datetime import timedelta

from core_factories import NOW, OTHER_REGION, REGION, job
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core import rules
from daemon.core.model import (
    ECS_RESOURCE_TYPE,
    Action,
    Backup,
    Job,
    JobState,
    Reason,
    RecordStatus,
    ReplicationRecord,
)

ages = st.one_of(st.none(), st.integers(0, 10_000).map(lambda minutes: timedelta(minutes=minutes)))

records = st.builds(
    lambda index, status, region, age: ReplicationRecord(
        id=f"rec-{index}",
        status=status,
        destination_region=region,
        created_at=None if age is None else NOW - age,
    ),
    st.integers(0, 5),
    st.sampled_from([*(str(status) for status in RecordStatus), "unknown"]),
    st.sampled_from([REGION, OTHER_REGION, None]),
    ages,
)

backups = st.builds(
    Backup,
    id=st.just("b-1"),
    name=st.just("web-01"),
    vault_id=st.just("v-1"),
    resource_type=st.sampled_from([ECS_RESOURCE_TYPE, "OS::Cinder::Volume"]),
    image_type=st.sampled_from(["backup", "replication"]),
    status=st.sampled_from(["available", "creating", "error", "deleting"]),
    contain_system_disk=st.sampled_from([None, True, False]),
    children_bootable=st.lists(st.sampled_from([None, True, False]), max_size=3).map(tuple),
    replication_records=st.lists(records, max_size=5).map(tuple),
)

jobs = st.one_of(
    st.none(),
    st.builds(
        lambda state, next_in, record_index: job(
            state,
            next_attempt_at=None if next_in is None else NOW + timedelta(minutes=next_in),
            replication_record_id=None if record_index is None else f"rec-{record_index}",
        ),
        st.sampled_from(list(JobState)),
        st.one_of(st.none(), st.integers(-100, 100)),
        st.one_of(st.none(), st.integers(0, 6)),
    ),
)


@settings(max_examples=300, deadline=None)
@given(backups, jobs)
def test_a_replica_is_never_enqueued(backup: Backup, known: Job | None) -> None:
    decision = rules.decide(backup, REGION, known, NOW)
    if backup.image_type == "replication":
        assert decision.action != Action.ENQUEUE


@settings(max_examples=300, deadline=None)
@given(backups, jobs)
def test_a_live_record_for_the_region_is_never_enqueued(backup: Backup, known: Job | None) -> None:
    """At most one live replica per backup and region: never submit beside a live one."""
    decision = rules.decide(backup, REGION, known, NOW)
    if rules.live_record(backup, REGION) is not None:
        assert decision.action != Action.ENQUEUE


@settings(max_examples=300, deadline=None)
@given(backups, jobs)
def test_enqueue_only_for_eligible_backups_that_are_not_in_flight_or_done(
    backup: Backup, known: Job | None
) -> None:
    decision = rules.decide(backup, REGION, known, NOW)
    if decision.action == Action.ENQUEUE:
        assert rules.eligibility(backup) == Reason.ELIGIBLE
        assert known is None or known.state in (JobState.QUEUED, JobState.FAILED)
        assert decision.reason in (Reason.ELIGIBLE, Reason.RETRY_AFTER_FAILURE)


@settings(max_examples=300, deadline=None)
@given(backups, jobs)
def test_adopt_and_track_carry_a_record_of_the_region(backup: Backup, known: Job | None) -> None:
    decision = rules.decide(backup, REGION, known, NOW)
    if decision.action in (Action.ADOPT, Action.TRACK):
        assert decision.record is not None
        assert decision.record in backup.replication_records
    if decision.action == Action.ADOPT:
        assert decision.record is not None
        assert decision.record.is_live
        assert decision.record.destination_region == REGION


@settings(max_examples=300, deadline=None)
@given(backups, jobs)
def test_decide_is_deterministic(backup: Backup, known: Job | None) -> None:
    assert rules.decide(backup, REGION, known, NOW) == rules.decide(backup, REGION, known, NOW)


@settings(max_examples=200, deadline=None)
@given(backups, st.sampled_from([JobState.SUCCEEDED, JobState.GIVEN_UP]))
def test_terminal_jobs_are_never_submitted_again(backup: Backup, state: JobState) -> None:
    decision = rules.decide(backup, REGION, job(state), NOW)
    assert decision.action == Action.SKIP
