"""What operators are told: after a sweep (and the daemon's tracking rounds), a policy's RPO,
stuck replications, given-up jobs and sweep health are evaluated against what the ledger last
recorded; each change is recorded once (compare and set, across processes and restarts) with
its notification, and logged. ``service.outbox`` delivers the notifications from the ledger.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from daemon.core import alerts
from daemon.core.alerts import AlertChange, AlertKind, Observation, RpoStatus
from daemon.core.model import Job, JobState, SweepReport
from daemon.core.policy import Policy
from daemon.core.ports import JobsLedger, Ledger, Notification, SweepsLedger
from daemon.core.redaction import redact_text

log = structlog.get_logger("cbr_replicator")
PAGE = 1000
SENDER = "cbr-replicator"

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Evaluation:
    """One policy's alert figures now, and the changes this evaluation recorded."""

    rpo: RpoStatus
    stuck: list[Job]
    changes: list[AlertChange] = field(default_factory=list)


# -- evaluating ----------------------------------------------------------------------------------


def rpo_now(ledger: SweepsLedger, policy: Policy, now: datetime) -> RpoStatus:
    return alerts.rpo_status(ledger.replication_window(policy.name), policy.rpo, now)


def stuck_now(ledger: JobsLedger, policy: Policy, now: datetime) -> list[Job]:
    # Only the candidates are read: after a catch-up, thousands of jobs are replicating and
    # none of them stuck yet (reading them all was 0.45 s per evaluation at 10,000).
    candidates = _all_jobs(
        ledger, JobState.REPLICATING, policy.name, unchanged_since=now - policy.stuck_after
    )
    return alerts.stuck_jobs(candidates, policy.stuck_after, now)


def evaluate_policy(
    ledger: Ledger, policy: Policy, now: datetime, report: SweepReport | None = None
) -> Evaluation:
    """Record and log what changed for ``policy``; ``report`` (a sweep's) also decides the
    policy's health, which a tracking round leaves alone."""
    region = policy.destination.region
    rpo = rpo_now(ledger, policy, now)
    stuck = stuck_now(ledger, policy, now)
    given_up = _all_jobs(ledger, JobState.GIVEN_UP, policy.name)
    observed: list[Observation] = [
        alerts.observe_rpo(policy.name, region, rpo),
        *alerts.observe_jobs(AlertKind.STUCK, stuck, region),
        *alerts.observe_jobs(AlertKind.GIVEN_UP, given_up, region),
        alerts.observe_budget(
            policy.name,
            region,
            ledger.budget_deferral(policy.name, now),
            policy.traffic_budget_per_day,
        ),
    ]
    kinds = [AlertKind.RPO, AlertKind.STUCK, AlertKind.GIVEN_UP, AlertKind.BUDGET]
    if report is not None and report.error_reason != "leased":  # another process swept it
        observed.append(
            alerts.observe_policy(policy.name, region, report.error_reason, report.error)
        )
        kinds.append(AlertKind.POLICY)
    found = alerts.changes(ledger.alert_states(policy.name), observed, kinds)
    drafts = [(change, None if change.quiet else _notification(change, now)) for change in found]
    applied = ledger.record_alerts(drafts, now)
    for change in applied:
        _log_change(change)
    quiet = sum(1 for change in applied if change.quiet and change.kind == AlertKind.GIVEN_UP)
    if quiet:
        log.info("alerts_baseline", policy=policy.name, given_up_jobs=quiet)
    return Evaluation(rpo=rpo, stuck=stuck, changes=applied)


def _all_jobs(
    ledger: JobsLedger, state: JobState, policy: str, *, unchanged_since: datetime | None = None
) -> list[Job]:
    found: list[Job] = []
    after_id = 0
    while True:
        page = ledger.jobs_in_states(
            {state}, limit=PAGE, after_id=after_id, policy=policy, unchanged_since=unchanged_since
        )
        found += page
        if len(page) < PAGE:
            return found
        after_id = max(job.id or 0 for job in page)


def _notification(change: AlertChange, now: datetime) -> Notification:
    event_id = uuid.uuid4().hex
    document = {
        "id": event_id,
        "source": SENDER,
        "event": change.event,
        "kind": str(change.kind),
        "subject": change.subject,
        "policy": change.policy,
        "destination_region": change.region,
        "previous": change.previous,
        "state": change.state,
        "at": now.isoformat(),
        "detail": dict(change.detail),
    }
    payload = redact_text(json.dumps(document, sort_keys=True, default=str))
    return Notification(
        event_id=event_id,
        event=change.event,
        subject=change.subject,
        policy=change.policy,
        payload=payload,
        created_at=now,
    )


def _log_change(change: AlertChange) -> None:
    if change.quiet:
        return
    fields = {
        "policy": change.policy,
        "region": change.region,
        "subject": change.subject,
        "previous": change.previous,
        "state": change.state,
        **{key: value for key, value in change.detail.items() if key != "since"},
    }
    getattr(log, change.level)(change.event, **fields)
