"""The seed's rules (docs/design.md §2) and the job state machine's decisions (§5), table
by table."""

from __future__ import annotations

from datetime import timedelta

import pytest
from core_factories import NOW, OTHER_REGION, REGION, SOURCE_REGION, backup, job, record

from daemon.core import rules
from daemon.core.model import (
    Action,
    Backup,
    Decision,
    Job,
    JobState,
    Reason,
    RecordStatus,
    ReplicationRecord,
)

# -- eligibility ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({}, Reason.ELIGIBLE, id="eligible"),
        pytest.param({"image_type": "replication"}, Reason.IS_REPLICA, id="is_replica"),
        pytest.param(
            {"resource_type": "OS::Cinder::Volume"}, Reason.NOT_SERVER_BACKUP, id="volume"
        ),
        pytest.param(
            {"resource_type": "OS::Sfs::Turbo"}, Reason.NOT_SERVER_BACKUP, id="file_system"
        ),
        pytest.param({"contain_system_disk": False}, Reason.NO_SYSTEM_DISK, id="data_disks_only"),
        pytest.param(
            {"contain_system_disk": None}, Reason.NO_SYSTEM_DISK, id="field_absent_no_children"
        ),
        pytest.param(
            {"contain_system_disk": None, "children_bootable": (False, None)},
            Reason.NO_SYSTEM_DISK,
            id="field_absent_no_bootable_child",
        ),
        pytest.param(
            {"contain_system_disk": None, "children_bootable": (False, True)},
            Reason.ELIGIBLE,
            id="field_absent_bootable_child",
        ),
        pytest.param(
            {"contain_system_disk": False, "children_bootable": (True,)},
            Reason.NO_SYSTEM_DISK,
            id="field_present_wins_over_children",
        ),
        pytest.param({"status": "creating"}, Reason.NOT_AVAILABLE, id="creating"),
        pytest.param({"status": "error"}, Reason.NOT_AVAILABLE, id="error"),
        pytest.param({"status": "deleting"}, Reason.NOT_AVAILABLE, id="deleting"),
    ],
)
def test_eligibility_applies_each_seed_condition(
    fields: dict[str, object], expected: Reason
) -> None:
    assert rules.eligibility(backup(**fields)) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {"image_type": "replication", "resource_type": "x", "status": "error"},
            Reason.IS_REPLICA,
            id="replica_first",
        ),
        pytest.param(
            {"resource_type": "x", "contain_system_disk": False, "status": "error"},
            Reason.NOT_SERVER_BACKUP,
            id="server_before_disk",
        ),
        pytest.param(
            {"contain_system_disk": False, "status": "error"},
            Reason.NO_SYSTEM_DISK,
            id="disk_before_status",
        ),
    ],
)
def test_eligibility_reports_the_first_failing_rule(
    fields: dict[str, object], expected: Reason
) -> None:
    assert rules.eligibility(backup(**fields)) == expected


# -- records -------------------------------------------------------------------------------


def test_records_to_keeps_the_region_newest_first_undated_last() -> None:
    old = record(RecordStatus.FAIL, record_id="old", age=timedelta(days=2))
    new = record(RecordStatus.FAIL, record_id="new", age=timedelta(hours=1))
    undated = record(RecordStatus.SKIP, record_id="undated", age=None)
    elsewhere = record(RecordStatus.SUCCESS, record_id="elsewhere", region=OTHER_REGION)
    listed = backup(undated, old, elsewhere, new)
    assert [r.id for r in rules.records_to(listed, REGION)] == ["new", "old", "undated"]


def test_live_record_is_the_newest_live_one_ignoring_failures() -> None:
    failed = record(RecordStatus.FAIL, record_id="failed", age=timedelta(minutes=1))
    older = record(RecordStatus.SUCCESS, record_id="older", age=timedelta(days=3))
    newer = record(RecordStatus.REPLICATING, record_id="newer", age=timedelta(hours=2))
    assert rules.live_record(backup(older, failed, newer), REGION) == newer


def test_live_record_is_none_with_only_failures_or_other_regions() -> None:
    listed = backup(
        record(RecordStatus.FAIL),
        record(RecordStatus.SKIP, record_id="rec-2"),
        record(RecordStatus.SUCCESS, record_id="rec-3", region=OTHER_REGION),
    )
    assert rules.live_record(listed, REGION) is None


# -- decide without a job ------------------------------------------------------------------

SUCCESS = record(RecordStatus.SUCCESS, record_id="ok")
REPLICATING = record(RecordStatus.REPLICATING, record_id="running")
WAITING = record(RecordStatus.WAITING, record_id="waiting")
FAILED_RECORD = record(RecordStatus.FAIL, record_id="failed", age=timedelta(minutes=5))
SKIPPED_RECORD = record(RecordStatus.SKIP, record_id="skipped", age=timedelta(days=1))


def _expect(action: Action, reason: Reason, chosen: ReplicationRecord | None = None) -> Decision:
    return Decision(backup_id="b-1", action=action, reason=reason, record=chosen)


NEW_BACKUP_CASES = [
    pytest.param(backup(), _expect(Action.ENQUEUE, Reason.ELIGIBLE), id="never_replicated"),
    pytest.param(
        backup(record(RecordStatus.SUCCESS, region=OTHER_REGION)),
        _expect(Action.ENQUEUE, Reason.ELIGIBLE),
        id="replicated_elsewhere_only",
    ),
    pytest.param(
        backup(image_type="replication"), _expect(Action.SKIP, Reason.IS_REPLICA), id="replica"
    ),
    pytest.param(
        backup(resource_type="OS::Cinder::Volume"),
        _expect(Action.SKIP, Reason.NOT_SERVER_BACKUP),
        id="not_server",
    ),
    pytest.param(
        backup(contain_system_disk=False),
        _expect(Action.SKIP, Reason.NO_SYSTEM_DISK),
        id="no_system_disk",
    ),
    pytest.param(
        backup(status="creating"), _expect(Action.SKIP, Reason.NOT_AVAILABLE), id="not_available"
    ),
    pytest.param(
        backup(SUCCESS),
        _expect(Action.ADOPT, Reason.REPLICA_EXISTS, SUCCESS),
        id="adopt_success",
    ),
    pytest.param(
        backup(REPLICATING),
        _expect(Action.ADOPT, Reason.REPLICATION_IN_PROGRESS, REPLICATING),
        id="adopt_replicating",
    ),
    pytest.param(
        backup(WAITING),
        _expect(Action.ADOPT, Reason.REPLICATION_IN_PROGRESS, WAITING),
        id="adopt_waiting",
    ),
    pytest.param(
        backup(FAILED_RECORD, SUCCESS, SKIPPED_RECORD),
        _expect(Action.ADOPT, Reason.REPLICA_EXISTS, SUCCESS),
        id="live_wins_over_newer_failures",
    ),
    pytest.param(
        backup(FAILED_RECORD),
        _expect(Action.ENQUEUE, Reason.RETRY_AFTER_FAILURE),
        id="only_fail_record",
    ),
    pytest.param(
        backup(SKIPPED_RECORD, FAILED_RECORD),
        _expect(Action.ENQUEUE, Reason.RETRY_AFTER_FAILURE),
        id="only_fail_and_skip_records",
    ),
]


@pytest.mark.parametrize(("listed", "expected"), NEW_BACKUP_CASES)
def test_decide_without_job(listed: Backup, expected: Decision) -> None:
    assert rules.decide(listed, REGION, None, NOW) == expected


# -- decide with a job ---------------------------------------------------------------------

LATER = NOW + timedelta(minutes=1)
EARLIER = NOW - timedelta(minutes=1)

JOB_CASES = [
    pytest.param(
        backup(SUCCESS),
        job(JobState.SUCCEEDED),
        _expect(Action.SKIP, Reason.ALREADY_REPLICATED),
        id="succeeded",
    ),
    pytest.param(
        backup(),
        job(JobState.SUCCEEDED),
        _expect(Action.SKIP, Reason.ALREADY_REPLICATED),
        id="succeeded_replica_deleted_not_replicated_again",
    ),
    pytest.param(
        backup(FAILED_RECORD),
        job(JobState.GIVEN_UP),
        _expect(Action.SKIP, Reason.GIVEN_UP),
        id="given_up",
    ),
    pytest.param(
        backup(REPLICATING),
        job(JobState.SUBMITTING),
        _expect(Action.TRACK, Reason.REPLICATION_IN_PROGRESS, REPLICATING),
        id="submitting_post_landed",
    ),
    pytest.param(
        backup(FAILED_RECORD),
        job(JobState.SUBMITTING),
        _expect(Action.SKIP, Reason.REPLICATION_IN_PROGRESS),
        id="submitting_only_old_failure",
    ),
    pytest.param(
        backup(),
        job(JobState.SUBMITTING),
        _expect(Action.SKIP, Reason.REPLICATION_IN_PROGRESS),
        id="submitting_nothing_listed",
    ),
    pytest.param(
        backup(FAILED_RECORD, REPLICATING),
        job(JobState.REPLICATING, replication_record_id="failed"),
        _expect(Action.TRACK, Reason.REPLICATION_IN_PROGRESS, FAILED_RECORD),
        id="replicating_own_record",
    ),
    pytest.param(
        backup(SKIPPED_RECORD, FAILED_RECORD),
        job(JobState.REPLICATING, replication_record_id="unlisted"),
        _expect(Action.TRACK, Reason.REPLICATION_IN_PROGRESS, FAILED_RECORD),
        id="replicating_newest_record_of_region",
    ),
    pytest.param(
        backup(record(RecordStatus.SUCCESS, region=OTHER_REGION)),
        job(JobState.REPLICATING, replication_record_id="rec-9"),
        _expect(Action.SKIP, Reason.REPLICATION_IN_PROGRESS),
        id="replicating_record_not_listed_yet",
    ),
    pytest.param(
        backup(),
        job(JobState.QUEUED),
        _expect(Action.ENQUEUE, Reason.ELIGIBLE),
        id="queued",
    ),
    pytest.param(
        backup(SUCCESS),
        job(JobState.QUEUED),
        _expect(Action.ADOPT, Reason.REPLICA_EXISTS, SUCCESS),
        id="queued_replica_appeared",
    ),
    pytest.param(
        backup(status="error"),
        job(JobState.QUEUED),
        _expect(Action.SKIP, Reason.NOT_AVAILABLE),
        id="queued_went_unavailable",
    ),
    pytest.param(
        backup(FAILED_RECORD),
        job(JobState.FAILED, next_attempt_at=None),
        _expect(Action.ENQUEUE, Reason.RETRY_AFTER_FAILURE),
        id="failed_no_backoff",
    ),
    pytest.param(
        backup(FAILED_RECORD),
        job(JobState.FAILED, next_attempt_at=NOW),
        _expect(Action.ENQUEUE, Reason.RETRY_AFTER_FAILURE),
        id="failed_backoff_ends_now",
    ),
    pytest.param(
        backup(FAILED_RECORD),
        job(JobState.FAILED, next_attempt_at=EARLIER),
        _expect(Action.ENQUEUE, Reason.RETRY_AFTER_FAILURE),
        id="failed_backoff_passed",
    ),
    pytest.param(
        backup(FAILED_RECORD),
        job(JobState.FAILED, next_attempt_at=LATER),
        _expect(Action.SKIP, Reason.BACKING_OFF),
        id="failed_backing_off",
    ),
    pytest.param(
        backup(WAITING),
        job(JobState.FAILED, next_attempt_at=LATER),
        _expect(Action.ADOPT, Reason.REPLICATION_IN_PROGRESS, WAITING),
        id="failed_but_cloud_shows_live",
    ),
    pytest.param(
        backup(FAILED_RECORD, status="deleting"),
        job(JobState.FAILED, next_attempt_at=EARLIER),
        _expect(Action.SKIP, Reason.NOT_AVAILABLE),
        id="failed_went_unavailable",
    ),
]


@pytest.mark.parametrize(("listed", "known", "expected"), JOB_CASES)
def test_decide_with_job(listed: Backup, known: Job, expected: Decision) -> None:
    assert rules.decide(listed, REGION, known, NOW) == expected
    if known.state in {JobState.SUCCEEDED, JobState.GIVEN_UP}:
        # The sweep's shortcut for settled jobs (their state alone) decides the same.
        assert rules.decide_settled(listed, known.state) == expected


@pytest.mark.parametrize("state", [s for s in JobState if s not in rules.TERMINAL_STATES])
def test_decide_settled_refuses_a_job_that_is_not_settled(state: JobState) -> None:
    with pytest.raises(ValueError, match="not a settled state"):
        rules.decide_settled(backup(), state)


# -- per-policy and per-request checks -----------------------------------------------------


@pytest.mark.parametrize(
    ("capabilities", "destination", "expected"),
    [
        pytest.param(frozenset({REGION, OTHER_REGION}), REGION, None, id="listed"),
        pytest.param(frozenset({OTHER_REGION}), REGION, Reason.REGION_NOT_SUPPORTED, id="absent"),
        pytest.param(frozenset(), REGION, Reason.REGION_NOT_SUPPORTED, id="no_capabilities"),
        pytest.param(
            frozenset({SOURCE_REGION}),
            SOURCE_REGION,
            Reason.REGION_NOT_SUPPORTED,
            id="same_region",
        ),
    ],
)
def test_check_destination(
    capabilities: frozenset[str], destination: str, expected: Reason | None
) -> None:
    assert rules.check_destination(capabilities, destination, SOURCE_REGION) == expected


@pytest.mark.parametrize(
    ("protect_type", "expected"),
    [
        pytest.param("backup", None, id="server_backup_vault"),
        pytest.param("replication", Reason.SOURCE_IS_REPLICATION_VAULT, id="replication_vault"),
    ],
)
def test_check_source_vault(protect_type: str, expected: Reason | None) -> None:
    assert rules.check_source_vault(protect_type) == expected


@pytest.mark.parametrize(
    ("protect_type", "expected"),
    [
        pytest.param("replication", None, id="replication_vault"),
        pytest.param("backup", Reason.DESTINATION_NOT_REPLICATION_VAULT, id="backup_vault"),
    ],
)
def test_check_destination_vault(protect_type: str, expected: Reason | None) -> None:
    assert rules.check_destination_vault(protect_type) == expected


# -- manual replicate-backup ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("listed", "replica_there", "expected"),
    [
        pytest.param(backup(), True, None, id="never_replicated"),
        pytest.param(backup(FAILED_RECORD, SKIPPED_RECORD), True, None, id="only_failures"),
        pytest.param(backup(SUCCESS), True, Reason.REPLICA_EXISTS, id="replica_exists"),
        pytest.param(backup(SUCCESS), False, None, id="replica_deleted_allows_manual_retry"),
        pytest.param(backup(REPLICATING), False, Reason.REPLICATION_IN_PROGRESS, id="replicating"),
        pytest.param(backup(WAITING), True, Reason.REPLICATION_IN_PROGRESS, id="waiting"),
        pytest.param(
            backup(record(RecordStatus.SUCCESS, region=OTHER_REGION)),
            True,
            None,
            id="replica_in_other_region_only",
        ),
        pytest.param(
            backup(SUCCESS, image_type="replication"), True, Reason.IS_REPLICA, id="replica"
        ),
        pytest.param(backup(status="creating"), True, Reason.NOT_AVAILABLE, id="not_available"),
    ],
)
def test_manual_block(listed: Backup, replica_there: bool, expected: Reason | None) -> None:
    asked: list[ReplicationRecord] = []

    def replica_exists(checked: ReplicationRecord) -> bool:
        asked.append(checked)
        return replica_there

    assert rules.manual_block(listed, REGION, replica_exists) == expected
    assert all(r.status == RecordStatus.SUCCESS for r in asked)


def test_manual_block_looks_up_only_success_records_of_the_region() -> None:
    asked: list[str] = []
    listed = backup(
        FAILED_RECORD,
        SUCCESS,
        record(RecordStatus.SUCCESS, record_id="other", region=OTHER_REGION),
    )

    def replica_exists(checked: ReplicationRecord) -> bool:
        asked.append(checked.id)
        return False

    assert rules.manual_block(listed, REGION, replica_exists) is None
    assert asked == ["ok"]


def test_a_queued_job_deferred_by_the_traffic_budget_is_skipped_with_that_reason() -> None:
    deferred = job(
        JobState.QUEUED,
        next_attempt_at=NOW + timedelta(hours=3),
        last_error_code="traffic_budget_exhausted",
    )
    decision = rules.decide(backup(), REGION, deferred, NOW)
    assert (decision.action, decision.reason) == (Action.SKIP, Reason.TRAFFIC_BUDGET_EXHAUSTED)
    due = deferred.evolve(next_attempt_at=NOW)
    assert rules.decide(backup(), REGION, due, NOW).action == Action.ENQUEUE
