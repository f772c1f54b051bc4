"""Saving what a submission's failure means for the job: released, deferred, retried after
backoff or given up, with its attempt row.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from daemon.core.errors import CloudError
from daemon.core.model import Attempt, Job
from daemon.engine.context import Engine


def uncertain_delay(error: CloudError, recheck: timedelta) -> timedelta:
    retry_after = getattr(error, "retry_after", None)
    if retry_after:
        return max(recheck, timedelta(seconds=float(retry_after)))
    return recheck


def unleased(job: Job) -> Job:
    return job.evolve(lease_owner=None, lease_expires_at=None)


def release(engine: Engine, job: Job) -> Job:
    return engine.ledger.save_jobs([unleased(job)], engine.now())[0]


def defer(engine: Engine, job: Job, error: CloudError) -> None:
    later = job.evolve(next_attempt_at=engine.now() + uncertain_delay(error, engine.recheck))
    engine.ledger.save_jobs([unleased(later)], engine.now())


def save(
    engine: Engine,
    job: Job,
    outcome: str,
    *,
    error: CloudError | None = None,
    request_id: str | None = None,
) -> Job:
    """Store the job and one attempt row (what ``history`` shows) in one transaction."""
    now = engine.now()
    attempt = attempt_row(job, now, outcome, error=error, request_id=request_id)
    return engine.ledger.save_jobs([job], now, [attempt])[0]


def attempt_row(
    job: Job,
    now: datetime,
    outcome: str,
    *,
    error: CloudError | None = None,
    request_id: str | None = None,
) -> Attempt:
    return Attempt(
        job_id=job.id or 0,
        at=now,
        outcome=outcome,
        error_code=error.code if error else None,
        error_message=str(error) if error else None,
        request_id=request_id or (error.request_id if error else None),
    )
