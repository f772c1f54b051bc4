"""Retries across sweeps as data: backoff with jitter and a job's next state after a failure.

Pure (docs/design.md §5): the time is passed in as ``now`` and randomness comes from an injected
``random.Random``, so tests fix both. Retries *inside* one API call are the cloud adapter's
business (tenacity); these are the slower retries of a whole job, kept in the ledger.

Attempts are counted by the caller when it submits: ``job.attempts`` is the number of
replicate POSTs tried (the submitter increments it with the intent, before the POST). The
functions here only read it, to size the backoff and to decide when to give up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from daemon.core.jobs import Event, advance
from daemon.core.model import Job, JobState, ReplicationRecord


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a failed job is retried (the policy's ``retry`` block)."""

    max_attempts: int = 6
    initial_backoff: timedelta = timedelta(minutes=5)
    max_backoff: timedelta = timedelta(hours=6)
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        # The same bounds as the config schema, so a policy built in code cannot bypass them.
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff <= timedelta(0):
            raise ValueError("initial_backoff must be positive")
        if self.max_backoff < self.initial_backoff:
            raise ValueError("max_backoff must not be shorter than initial_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")


def _capped_seconds(policy: RetryPolicy, attempts: int) -> float:
    """initial * multiplier ** (attempts - 1), capped at max_backoff without overflowing."""
    ceiling = policy.max_backoff.total_seconds()
    try:
        growth = policy.multiplier ** (max(attempts, 1) - 1)
    except OverflowError:  # a huge attempt count: far past the cap anyway
        return ceiling
    return min(policy.initial_backoff.total_seconds() * growth, ceiling)


def backoff(policy: RetryPolicy, attempts: int, rng: random.Random) -> timedelta:
    """The wait after the ``attempts``-th failed attempt (1 for the first), jittered.

    Jitter spreads jobs that failed together (a region outage) so they do not all retry in
    the same second. The result is within ``[0, max_backoff * (1 + jitter)]``.
    """
    base = _capped_seconds(policy, attempts)
    factor = 1.0 + rng.uniform(-policy.jitter, policy.jitter)
    return timedelta(seconds=max(base * factor, 0.0))


def after_failure(
    job: Job,
    policy: RetryPolicy,
    now: datetime,
    *,
    code: str | None,
    message: str,
    rng: random.Random,
    event: Event,
    count_attempt: bool = True,
) -> Job:
    """The job after a failed attempt: FAILED with its next attempt time, or GIVEN_UP.

    ``count_attempt`` says whether this failure counts toward ``max_attempts``. Pass False for
    a failure that our request did not cause (the cloud was unreachable, throttled us): the
    job then backs off but is never given up for it.
    """
    # Leases are the caller's business: it releases the claim when it saves the job.
    failed = job.evolve(last_error_code=code, last_error=message)
    if count_attempt and job.attempts >= policy.max_attempts:
        return advance(failed, event, JobState.GIVEN_UP, next_attempt_at=None, finished_at=now)
    return advance(
        failed,
        event,
        JobState.FAILED,
        next_attempt_at=now + backoff(policy, job.attempts, rng),
    )


def after_record_failure(
    job: Job,
    policy: RetryPolicy,
    now: datetime,
    *,
    record: ReplicationRecord,
    rng: random.Random,
    event: Event = Event.TRACKED,
) -> Job:
    """The job after the cloud's replication record ended in ``fail`` or ``skip``."""
    message = record.fail_reason or f"replication record {record.id} ended {record.status}"
    failed = after_failure(
        job, policy, now, code=record.fail_code, message=message, rng=rng, event=event
    )
    return failed.evolve(replication_record_id=record.id)


def requeue(job: Job) -> Job:
    """The operator's ``retry``: a failed or given-up job starts over with fresh attempts (the
    ledger stamps ``updated_at`` itself when it saves the job)."""
    if job.state not in (JobState.FAILED, JobState.GIVEN_UP):
        raise ValueError(f"only failed or given-up jobs are requeued, not {job.state}")
    return advance(
        job,
        Event.RETRY,
        JobState.QUEUED,
        attempts=0,
        next_attempt_at=None,
        finished_at=None,
        replication_record_id=None,
    )
