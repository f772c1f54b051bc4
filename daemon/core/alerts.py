"""Operators' alert states as pure decisions: the RPO of a policy, stuck replications, given-up
jobs and the policy's own health, and which of them changed since they were last recorded.

Pure: facts (from the ledger) and ``now`` in, values out; no clock, no I/O. ``engine.alerting``
gathers the facts, records the changes in the ledger and hands them to the notifier.

A state that is not stored is ``ok``: the ledger keeps a row only for what needs attention
(and one row per policy, its health, which also marks that the policy was evaluated once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from daemon.core.model import Job, JobState

OK = "ok"
# At risk once the oldest waiting backup has waited half the RPO: with the default RPO (twice
# the schedule's period) that is one whole period, so one more missed sweep breaches it.
AT_RISK_FRACTION = 0.5


class RpoState(StrEnum):
    OK = "ok"
    AT_RISK = "at_risk"
    BREACHED = "breached"


class AlertKind(StrEnum):
    """What an alert is about; each kind has its own subject per policy or per job."""

    POLICY = "policy"  # the policy's sweeps: ok or failing
    RPO = "rpo"  # ok, at_risk or breached
    STUCK = "stuck"  # one replication: ok or stuck
    GIVEN_UP = "given_up"  # one job: ok or given_up
    BUDGET = "budget"  # the policy's traffic budget of the day: ok or exhausted


# The event name of each change (kind, new state); "ok" means the attention is over.
EVENTS: Mapping[tuple[AlertKind, str], str] = {
    (AlertKind.POLICY, "failing"): "policy_failing",
    (AlertKind.POLICY, OK): "policy_recovered",
    (AlertKind.RPO, RpoState.AT_RISK): "rpo_at_risk",
    (AlertKind.RPO, RpoState.BREACHED): "rpo_breached",
    (AlertKind.RPO, OK): "rpo_recovered",
    (AlertKind.STUCK, "stuck"): "replication_stuck",
    (AlertKind.STUCK, OK): "replication_unstuck",
    (AlertKind.GIVEN_UP, "given_up"): "replication_given_up",
    (AlertKind.GIVEN_UP, OK): "replication_retried",
    (AlertKind.BUDGET, "exhausted"): "traffic_budget_exhausted",
    (AlertKind.BUDGET, OK): "traffic_budget_reset",
}
# How loud the log event of each new state is.
LEVELS: Mapping[str, str] = {
    "failing": "warning",
    RpoState.AT_RISK: "warning",
    RpoState.BREACHED: "error",
    "stuck": "warning",
    "given_up": "error",
    "exhausted": "warning",
    OK: "info",
}


# -- RPO ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicationWindow:
    """What the ledger knows of one policy's backups (creation times of source backups)."""

    newest_replicated: datetime | None  # the newest backup with a finished replica
    oldest_waiting: datetime | None  # the oldest newer backup still without one


@dataclass(frozen=True, slots=True)
class RpoStatus:
    state: RpoState
    rpo: timedelta
    newest_replicated_age: timedelta | None
    oldest_waiting_age: timedelta | None


def rpo_status(window: ReplicationWindow, rpo: timedelta, now: datetime) -> RpoStatus:
    """The RPO state: how long the oldest backup newer than the newest replica has waited.

    Backups older than the newest replica no longer widen the loss window (a given-up old
    backup is an alert of its own), and a source that makes no new backup is not a
    replication problem: with nothing waiting the state is ``ok``.
    """
    newest_age = _age(window.newest_replicated, now)
    waiting_age = _age(window.oldest_waiting, now)
    state = RpoState.OK
    if waiting_age is not None and waiting_age > rpo:
        state = RpoState.BREACHED
    elif waiting_age is not None and waiting_age > rpo * AT_RISK_FRACTION:
        state = RpoState.AT_RISK
    return RpoStatus(state, rpo, newest_age, waiting_age)


def _age(moment: datetime | None, now: datetime) -> timedelta | None:
    return None if moment is None else max(timedelta(0), now - moment)


# -- stuck and given up --------------------------------------------------------------------------


def is_stuck(job: Job, stuck_after: timedelta, now: datetime) -> bool:
    """A replication whose job has not changed (its record made no step) for ``stuck_after``."""
    if job.state != JobState.REPLICATING or job.updated_at is None:
        return False
    return now - job.updated_at >= stuck_after


def stuck_jobs(jobs: Iterable[Job], stuck_after: timedelta, now: datetime) -> list[Job]:
    return [job for job in jobs if is_stuck(job, stuck_after, now)]


# -- observations and changes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """The state of one subject now."""

    subject: str
    kind: AlertKind
    state: str
    policy: str
    region: str
    detail: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """The last recorded state of one subject (the ledger's row)."""

    subject: str
    kind: AlertKind
    state: str
    since: datetime


@dataclass(frozen=True, slots=True)
class AlertChange:
    """One subject moving from ``previous`` to ``state``; ``quiet`` changes are recorded but
    neither logged one by one nor sent (the first evaluation's backlog of given-up jobs)."""

    subject: str
    kind: AlertKind
    previous: str
    state: str
    policy: str
    region: str
    detail: Mapping[str, object] = field(default_factory=dict)
    quiet: bool = False

    @property
    def event(self) -> str:
        return EVENTS[(self.kind, OK if self.state == OK else self.state)]

    @property
    def level(self) -> str:
        return LEVELS.get(self.state, "info")


def budget_subject(policy: str, region: str) -> str:
    return f"budget:{policy}:{region}"


def observe_budget(
    policy: str, region: str, deferred_until: datetime | None, budget: int | None
) -> Observation:
    """Exhausted while submissions wait for the next day of the policy (``deferred_until``)."""
    if deferred_until is None:
        return Observation(budget_subject(policy, region), AlertKind.BUDGET, OK, policy, region)
    detail = {"until": deferred_until.isoformat(), "budget_bytes": budget}
    return Observation(
        budget_subject(policy, region), AlertKind.BUDGET, "exhausted", policy, region, detail
    )


def policy_subject(policy: str) -> str:
    return f"policy:{policy}"


def rpo_subject(policy: str, region: str) -> str:
    return f"rpo:{policy}:{region}"


def job_subject(kind: AlertKind, job: Job) -> str:
    return f"{kind}:{job.policy}:{job.destination_region}:{job.source_backup_id}"


def observe_rpo(policy: str, region: str, status: RpoStatus) -> Observation:
    detail: dict[str, object] = {"rpo_seconds": int(status.rpo.total_seconds())}
    if status.newest_replicated_age is not None:
        detail["newest_replicated_age_seconds"] = int(status.newest_replicated_age.total_seconds())
    if status.oldest_waiting_age is not None:
        detail["oldest_waiting_age_seconds"] = int(status.oldest_waiting_age.total_seconds())
    return Observation(
        rpo_subject(policy, region), AlertKind.RPO, status.state, policy, region, detail
    )


def observe_jobs(kind: AlertKind, jobs: Iterable[Job], region: str) -> list[Observation]:
    """``stuck`` or ``given_up`` observations, one per job."""
    return [
        Observation(
            job_subject(kind, job),
            kind,
            str(kind),
            job.policy or "",
            region,
            _job_detail(job),
        )
        for job in jobs
    ]


def _job_detail(job: Job) -> dict[str, object]:
    detail: dict[str, object] = {
        "backup_id": job.source_backup_id,
        "backup_name": job.backup_name,
        "attempts": job.attempts,
    }
    if job.replication_record_id:
        detail["replication_record_id"] = job.replication_record_id
    if job.last_error_code:
        detail["error_code"] = job.last_error_code
    if job.updated_at is not None:
        detail["since"] = job.updated_at.isoformat()
    return detail


def observe_policy(
    policy: str, region: str, error_reason: str | None, error: str | None
) -> Observation:
    state = OK if error is None else "failing"
    detail: dict[str, object] = {} if error is None else {"reason": error_reason, "error": error}
    return Observation(policy_subject(policy), AlertKind.POLICY, state, policy, region, detail)


def changes(
    stored: Mapping[str, StoredAlert],
    observed: Sequence[Observation],
    kinds: Iterable[AlertKind],
) -> list[AlertChange]:
    """What changed for one policy: every observed subject whose state differs from the
    stored one, and every stored subject of the observed ``kinds`` no longer observed (back
    to ok). Subjects of other kinds are left alone (not looked at this time).

    Until the policy's health was recorded once, given-up jobs are the backlog of an older
    ledger: they are recorded quietly rather than announced one by one.
    """
    first_time = not any(alert.kind == AlertKind.POLICY for alert in stored.values())
    seen = {observation.subject for observation in observed}
    found: list[AlertChange] = []
    for observation in observed:
        previous = stored[observation.subject].state if observation.subject in stored else OK
        if previous == observation.state:
            if first_time and observation.kind == AlertKind.POLICY:
                found.append(_change(observation, previous, quiet=True))  # marks it evaluated
            continue
        quiet = first_time and observation.kind == AlertKind.GIVEN_UP
        found.append(_change(observation, previous, quiet=quiet))
    looked_at = set(kinds)
    for subject, alert in sorted(stored.items()):
        if subject in seen or alert.kind not in looked_at or alert.state == OK:
            continue
        policy, region = _subject_parts(subject)
        found.append(AlertChange(subject, alert.kind, alert.state, OK, policy, region))
    return found


def _change(observation: Observation, previous: str, *, quiet: bool) -> AlertChange:
    return AlertChange(
        observation.subject,
        observation.kind,
        previous,
        observation.state,
        observation.policy,
        observation.region,
        observation.detail,
        quiet,
    )


def _subject_parts(subject: str) -> tuple[str, str]:
    """``kind:policy:region[:backup]`` -> (policy, region); policy names hold no colon."""
    parts = subject.split(":")
    return (parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else "")


def rpo_log_fields(status: RpoStatus) -> dict[str, object]:
    """The RPO figures of the sweep's log line."""

    def seconds(age: timedelta | None) -> int | None:
        return None if age is None else int(age.total_seconds())

    return {
        "rpo_state": str(status.state),
        "rpo_seconds": int(status.rpo.total_seconds()),
        "newest_replicated_age_seconds": seconds(status.newest_replicated_age),
        "oldest_waiting_age_seconds": seconds(status.oldest_waiting_age),
    }
