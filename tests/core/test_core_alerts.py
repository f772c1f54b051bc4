"""The pure alert decisions (RPO state, stuck, changes to record) and the traffic grouping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from daemon.core import alerts
from daemon.core.alerts import AlertKind, ReplicationWindow, RpoState, StoredAlert
from daemon.core.model import Job, JobState, Origin
from daemon.core.ports import TrafficEntry
from daemon.core.traffic import group_traffic

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RPO = timedelta(hours=2)


def ago(minutes: int) -> datetime:
    return NOW - timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("newest", "waiting", "state"),
    [
        (None, None, RpoState.OK),  # nothing made yet
        (ago(600), None, RpoState.OK),  # caught up: an idle source is no replication problem
        (ago(600), ago(60), RpoState.OK),  # waited exactly half the RPO
        (ago(600), ago(61), RpoState.AT_RISK),
        (ago(600), ago(120), RpoState.AT_RISK),
        (None, ago(121), RpoState.BREACHED),  # never replicated, waiting longer than the RPO
    ],
)
def test_rpo_state_follows_the_oldest_backup_still_waiting(
    newest: datetime | None, waiting: datetime | None, state: RpoState
) -> None:
    status = alerts.rpo_status(ReplicationWindow(newest, waiting), RPO, NOW)
    assert status.state == state
    assert status.newest_replicated_age == (None if newest is None else NOW - newest)


def job(state: JobState, updated: datetime) -> Job:
    return Job(
        source_backup_id="b-1",
        destination_region="cn-south-1",
        state=state,
        origin=Origin.POLICY,
        policy="web",
        source_region="cn-north-4",
        source_project_id="p",
        source_vault_id="v",
        destination_project_id="d",
        destination_vault_id="dv",
        updated_at=updated,
    )


def test_only_a_replication_unchanged_for_stuck_after_is_stuck() -> None:
    hour = timedelta(hours=1)
    assert alerts.is_stuck(job(JobState.REPLICATING, ago(60)), hour, NOW)
    assert not alerts.is_stuck(job(JobState.REPLICATING, ago(59)), hour, NOW)
    assert not alerts.is_stuck(job(JobState.QUEUED, ago(600)), hour, NOW)


def stored(subject: str, kind: AlertKind, state: str) -> dict[str, StoredAlert]:
    return {subject: StoredAlert(subject, kind, state, NOW)}


HEALTH = stored("policy:web", AlertKind.POLICY, "ok")


def rpo(state: RpoState) -> alerts.Observation:
    status = alerts.RpoStatus(state, RPO, None, None)
    return alerts.observe_rpo("web", "cn-south-1", status)


def test_a_state_that_stays_makes_no_change_and_one_that_moves_makes_one() -> None:
    kinds = [AlertKind.RPO]
    assert alerts.changes(HEALTH, [rpo(RpoState.OK)], kinds) == []
    [change] = alerts.changes(HEALTH, [rpo(RpoState.AT_RISK)], kinds)
    assert (change.previous, change.state, change.event) == ("ok", "at_risk", "rpo_at_risk")
    before = {**HEALTH, **stored("rpo:web:cn-south-1", AlertKind.RPO, "breached")}
    [back] = alerts.changes(before, [rpo(RpoState.OK)], kinds)
    assert (back.event, back.level, back.quiet) == ("rpo_recovered", "info", False)


def test_a_stored_subject_no_longer_observed_is_back_to_ok_for_the_kinds_looked_at() -> None:
    before = {**HEALTH, **stored("stuck:web:cn-south-1:b-1", AlertKind.STUCK, "stuck")}
    [cleared] = alerts.changes(before, [], [AlertKind.STUCK])
    assert (cleared.event, cleared.policy, cleared.region) == (
        "replication_unstuck",
        "web",
        "cn-south-1",
    )
    assert alerts.changes(before, [], [AlertKind.RPO]) == []  # stuck was not looked at


def test_the_first_evaluation_records_old_given_up_jobs_quietly_and_marks_the_policy() -> None:
    given_up = alerts.observe_jobs(
        AlertKind.GIVEN_UP, [job(JobState.GIVEN_UP, ago(9000))], "cn-south-1"
    )
    health = alerts.observe_policy("web", "cn-south-1", None, None)
    found = alerts.changes({}, [*given_up, health], [AlertKind.GIVEN_UP, AlertKind.POLICY])
    assert [(c.event, c.quiet) for c in found] == [
        ("replication_given_up", True),
        ("policy_recovered", True),  # ok -> ok: only marks the policy as evaluated
    ]
    later = alerts.changes(HEALTH, given_up, [AlertKind.GIVEN_UP])
    assert [(c.event, c.quiet) for c in later] == [("replication_given_up", False)]


def test_a_failing_sweep_is_a_failing_policy() -> None:
    failing = alerts.observe_policy("web", "r", "vault_not_found", "no vault")
    [change] = alerts.changes(HEALTH, [failing], [AlertKind.POLICY])
    assert (change.event, change.level) == ("policy_failing", "warning")
    assert change.detail == {"reason": "vault_not_found", "error": "no vault"}


def test_traffic_is_grouped_by_utc_day_policy_or_region() -> None:
    entries = [
        TrafficEntry("web", "cn-south-1", datetime(2026, 11, 24, 23, 0, tzinfo=UTC), 5),
        TrafficEntry("web", "ap-southeast-1", datetime(2026, 11, 25, 1, 0, tzinfo=UTC), 7),
        TrafficEntry(None, "cn-south-1", datetime(2026, 11, 25, 2, 0, tzinfo=UTC), 11),
    ]
    by_day = [(row.key, row.bytes, row.replications) for row in group_traffic(entries, "day")]
    assert by_day == [("2026-11-24", 5, 1), ("2026-11-25", 18, 2)]
    by_policy = {row.key: row.bytes for row in group_traffic(entries, "policy")}
    assert by_policy == {"(manual)": 11, "web": 12}
    by_region = {row.key: row.bytes for row in group_traffic(entries, "region")}
    assert by_region == {"ap-southeast-1": 7, "cn-south-1": 16}
