"""The ledger's part of issue 9 on SQLite and PostgreSQL: the replication window of the RPO,
the traffic entries and the budget deferral, and alert states recorded by compare and set
with their notifications (an outbox that is claimed, retried and finished)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from daemon.adapters.ledger import SqlLedger
from daemon.core.alerts import AlertChange, AlertKind
from daemon.core.model import GIB, JobState, Origin, Reason
from daemon.core.policy import Policy
from daemon.core.ports import Notification
from daemon.engine import alerting
from tests.engine.harness import policy
from tests.ledger.test_ledger import NOW, REGION, job

HOUR = timedelta(hours=1)


def test_the_window_is_the_newest_replica_and_the_oldest_newer_backup_without_one(
    ledger: SqlLedger,
) -> None:
    assert ledger.replication_window("web").newest_replicated is None
    ledger.save_jobs(
        [
            job("old-given-up", JobState.GIVEN_UP, backup_created_at=NOW - 9 * HOUR),
            job("done", JobState.SUCCEEDED, backup_created_at=NOW - 5 * HOUR),
            job("waiting", JobState.QUEUED, backup_created_at=NOW - 3 * HOUR),
            job("running", JobState.REPLICATING, backup_created_at=NOW - 2 * HOUR),
            job(
                "source-gone",
                JobState.GIVEN_UP,
                backup_created_at=NOW - 4 * HOUR,
                last_error_code="source_backup_deleted",
            ),
            job("other", JobState.QUEUED, backup_created_at=NOW - 8 * HOUR, policy="db"),
        ],
        NOW,
    )
    window = ledger.replication_window("web")
    assert window.newest_replicated == NOW - 5 * HOUR
    assert window.oldest_waiting == NOW - 3 * HOUR  # older ones no longer widen the window
    assert ledger.replication_window("db").oldest_waiting == NOW - 8 * HOUR


def test_traffic_entries_are_finished_replications_we_made(ledger: SqlLedger) -> None:
    ledger.save_jobs(
        [
            job("a", JobState.SUCCEEDED, bytes=40 * GIB, finished_at=NOW - HOUR),
            job("b", JobState.SUCCEEDED, bytes=10 * GIB, finished_at=NOW - 30 * HOUR),
            job("adopted", JobState.SUCCEEDED, origin=Origin.ADOPTED, finished_at=NOW, bytes=1),
            job("running", JobState.REPLICATING, bytes=5 * GIB),
            job("manual", JobState.SUCCEEDED, policy=None, finished_at=NOW, bytes=GIB),
        ],
        NOW,
    )
    entries = ledger.traffic_entries(since=NOW - 2 * HOUR)
    assert sorted((entry.policy or "", entry.bytes) for entry in entries) == [
        ("", GIB),  # a manual replication
        ("web", 40 * GIB),
    ]
    assert {entry.destination_region for entry in entries} == {REGION}
    assert len(ledger.traffic_entries(since=NOW - 48 * HOUR)) == 3


def test_budget_deferral_is_the_latest_wait_for_the_next_day(ledger: SqlLedger) -> None:
    code = str(Reason.TRAFFIC_BUDGET_EXHAUSTED)
    midnight = NOW + 4 * HOUR
    ledger.save_jobs(
        [
            job("a", next_attempt_at=midnight, last_error_code=code),
            job("b", JobState.FAILED, next_attempt_at=midnight, last_error_code=code),
            job("c", next_attempt_at=NOW + 8 * HOUR, last_error_code="other"),
        ],
        NOW,
    )
    assert ledger.budget_deferral("web", NOW) == midnight
    assert ledger.budget_deferral("web", midnight) is None  # the new day has begun
    assert ledger.budget_deferral("db", NOW) is None


def change(previous: str, state: str, subject: str = "rpo:web:r") -> AlertChange:
    return AlertChange(subject, AlertKind.RPO, previous, state, "web", "r", {"x": 1})


def note(event_id: str, subject: str = "rpo:web:r") -> Notification:
    return Notification(event_id, "rpo_breached", subject, "web", '{"a": 1}', NOW)


def test_a_change_is_recorded_once_even_by_two_processes(
    make_ledger: Callable[[], SqlLedger],
) -> None:
    first, second = make_ledger(), make_ledger()
    assert first.record_alerts([(change("ok", "breached"), note("e1"))], NOW) == [
        change("ok", "breached")
    ]
    # The other process saw "ok" too: its compare and set fails, and it queues nothing.
    assert second.record_alerts([(change("ok", "breached"), note("e2"))], NOW) == []
    stored = second.alert_states("web")
    assert stored["rpo:web:r"].state == "breached"
    assert stored["rpo:web:r"].since == NOW
    assert [n.event_id for n in second.recent_notifications()] == ["e1"]
    # Back to ok: the row goes (ok is no row), except a policy's health, which stays.
    assert second.record_alerts([(change("breached", "ok"), None)], NOW) != []
    health = AlertChange("policy:web", AlertKind.POLICY, "ok", "ok", "web", "", quiet=True)
    assert second.record_alerts([(health, None)], NOW) == [health]
    assert set(first.alert_states("web")) == {"policy:web"}
    assert first.alert_states("db") == {}


def test_notifications_are_leased_retried_and_finished(
    make_ledger: Callable[[], SqlLedger],
) -> None:
    ledger, other = make_ledger(), make_ledger()
    ledger.record_alerts(
        [
            (change("ok", "breached", "rpo:web:a"), note("e1", "rpo:web:a")),
            (change("ok", "breached", "rpo:web:b"), note("e2", "rpo:web:b")),
        ],
        NOW,
    )
    [claimed] = ledger.claim_notifications(owner="me", now=NOW, lease_until=NOW + HOUR, limit=1)
    assert claimed.event_id == "e1"
    assert claimed.payload == '{"a": 1}'
    [next_one] = other.claim_notifications(owner="it", now=NOW, lease_until=NOW + HOUR, limit=5)
    assert next_one.event_id == "e2"  # e1 is leased
    assert claimed.id is not None
    assert next_one.id is not None
    ledger.finish_notification(
        claimed.id, now=NOW, status="pending", error="HTTP 500", next_attempt_at=NOW + HOUR
    )
    other.finish_notification(next_one.id, now=NOW, status="delivered")
    assert ledger.claim_notifications(owner="me", now=NOW, lease_until=NOW, limit=5) == []
    [again] = ledger.claim_notifications(
        owner="me", now=NOW + HOUR, lease_until=NOW + 2 * HOUR, limit=5
    )
    assert (again.event_id, again.attempts, again.last_error) == ("e1", 1, "HTTP 500")
    assert again.id is not None
    ledger.finish_notification(again.id, now=NOW + HOUR, status="dropped", error="HTTP 400")
    assert [n.status for n in ledger.recent_notifications()] == ["delivered", "dropped"]


def test_stuck_replications_are_read_by_their_last_change_bound_included(
    ledger: SqlLedger,
) -> None:
    """``alerting.stuck_now`` asks the ledger for the candidates only (issue 7: after a catch-up
    thousands replicate, none stuck yet); a job unchanged for exactly ``stuck_after`` is
    stuck, as ``alerts.is_stuck`` says."""
    ledger.save_jobs([job("quiet", JobState.REPLICATING)], NOW - 2 * HOUR)
    ledger.save_jobs([job("on-the-hour", JobState.REPLICATING)], NOW - HOUR)
    ledger.save_jobs(
        [job("busy", JobState.REPLICATING), job("waiting", JobState.QUEUED)],
        NOW - HOUR + timedelta(microseconds=1),
    )
    ledger.save_jobs([job("other", JobState.REPLICATING, policy="db")], NOW - 2 * HOUR)
    web = Policy.model_validate(policy("web", ["v-src"], REGION, "v-dst", stuck_after="1h"))

    stuck = alerting.stuck_now(ledger, web, NOW)

    assert [found.source_backup_id for found in stuck] == ["quiet", "on-the-hour"]
    older = ledger.jobs_in_states({JobState.REPLICATING}, limit=10, unchanged_since=NOW - HOUR)
    assert [found.source_backup_id for found in older] == ["quiet", "on-the-hour", "other"]
