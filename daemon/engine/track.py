"""Tracking replicating jobs: their backups' replication records, read in batches, move them
to ``succeeded`` or ``failed``; what finished is logged and recorded as attempts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import structlog

from daemon.core import retrying, rules
from daemon.core.errors import MalformedAnswerError, NotFoundError
from daemon.core.jobs import Event, advance
from daemon.core.model import Attempt, Backup, Job, JobState, RecordStatus, ReplicationRecord
from daemon.core.ports import JobsLedger
from daemon.engine.context import Engine, job_log

log = structlog.get_logger("cbr_replicator")
# A manual job is tried once: replicate-backup submits it so, and whoever tracks it agrees.
MANUAL_RETRY = retrying.RetryPolicy(max_attempts=1)
TRACK_BATCH = 500  # replicating jobs read from the ledger at once by a tracking round


def apply_record(job: Job, record: ReplicationRecord, now: datetime, event: Event) -> Job:
    """The job as the cloud's replication record says it is (live records only); ``event``
    says how the record was learned (adopted, reconciled, tracked)."""
    if record.status == RecordStatus.SUCCESS:
        return advance(
            job,
            event,
            JobState.SUCCEEDED,
            replication_record_id=record.id,
            replica_backup_id=record.destination_backup_id,
            finished_at=job.finished_at or now,
            last_error_code=None,
            last_error=None,
        )
    return advance(job, event, JobState.REPLICATING, replication_record_id=record.id)


# -- tracking ------------------------------------------------------------------------------


def replicating_batches(
    ledger: JobsLedger, policy: str | None = None, *, manual: bool = False
) -> Iterator[list[Job]]:
    """Every replicating job (of one policy, of none with ``manual``, or all),
    ``TRACK_BATCH`` at a time, by id: a job saved while its batch is tracked is not read
    twice, and a backlog is never cut short."""
    after_id = 0
    while True:
        jobs = ledger.jobs_in_states(
            {JobState.REPLICATING},
            limit=TRACK_BATCH,
            after_id=after_id,
            policy=policy,
            manual=manual,
        )
        if not jobs:
            return
        after_id = max(job.id or 0 for job in jobs)
        yield jobs


def track_jobs(engine: Engine, jobs: Iterable[Job], retry: retrying.RetryPolicy) -> list[Job]:
    """Update ``replicating`` jobs from their backups' records: one read per job, up to
    ``engine.worker_threads`` at once (one by one, 10,000 jobs replicating after a catch-up
    took 10,000 round trips per tracking round), decided and saved here in the jobs' order.
    The cloud unreachable, or permission denied, ends the round: the reads not yet sent are
    dropped, and nothing of the round is saved (the next round reads them again)."""
    replicating = [job for job in jobs if job.state == JobState.REPLICATING]
    if not replicating:
        return []
    workers = max(1, min(engine.worker_threads, len(replicating)))
    updated: list[Job] = []
    finished: list[tuple[Job, Job]] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="track") as pool:
        reads = [pool.submit(_read_tracked_backup, engine, job) for job in replicating]
        try:
            for job, read in zip(replicating, reads, strict=True):
                backup = read.result()
                if backup is None:
                    continue
                changed = track_from_backup(job, backup, retry, engine.now(), engine.rng)
                if changed is not None:
                    updated.append(changed)
                    finished.append((job, changed))
        finally:
            for read in reads:
                read.cancel()  # after a failure: the reads not started are not sent
    if not updated:
        return []
    now = engine.now()
    saved = engine.ledger.save_jobs(updated, now, finished_attempts(finished, now))
    log_finished(finished)
    return saved


FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.GIVEN_UP})


def _finished(before: Job, after: Job) -> bool:
    """Did tracking see this job's replication end (in the cloud, not in our POST)?"""
    return (
        before.id is not None
        and before.state in (JobState.SUBMITTING, JobState.REPLICATING)
        and after.state in FINISHED_STATES
    )


def finished_attempts(changes: Iterable[tuple[Job, Job]], now: datetime) -> list[Attempt]:
    """An attempt row per replication that ended: ``history`` shows how each submission
    came out (the cloud's code and message of a failed record), not only that it was sent."""
    return [
        Attempt(
            job_id=before.id or 0,
            at=now,
            outcome=str(after.state),
            error_code=None if after.state == JobState.SUCCEEDED else after.last_error_code,
            error_message=None if after.state == JobState.SUCCEEDED else after.last_error,
        )
        for before, after in changes
        if _finished(before, after)
    ]


def log_finished(changes: Iterable[tuple[Job, Job]]) -> None:
    """One line per replication that ended: ``replication_succeeded``, or
    ``replication_failed`` with the cloud's code and what happens next (``state``: failed
    and retried later, or given_up)."""
    for before, after in changes:
        if not _finished(before, after):
            continue
        bound = job_log(after, after.policy)
        if after.state == JobState.SUCCEEDED:
            bound.info(
                "replication_succeeded",
                record=after.replication_record_id,
                replica=after.replica_backup_id,
            )
        else:
            bound.warning(
                "replication_failed",
                record=after.replication_record_id,
                code=after.last_error_code,
                error=after.last_error,
                state=str(after.state),
                attempts=after.attempts,
            )


def _read_tracked_backup(engine: Engine, job: Job) -> Backup | None:
    """The job's source backup, or None when it cannot tell this job anything this round."""
    try:
        return engine.cloud.show_backup(
            job.source_region, job.source_project_id, job.source_backup_id
        )
    except NotFoundError:
        return None  # the source was deleted; the replication may still finish: keep it
    except MalformedAnswerError as error:
        # This backup's answer is odd: its job waits for a readable one, the others go on
        # (docs/design.md §13, T5). The cloud unreachable still ends the round.
        log.warning(
            "track_skipped",
            policy=job.policy,
            backup=job.source_backup_id,
            region=job.destination_region,
            error=str(error),
        )
        return None


def track_from_backup(
    job: Job, backup: Backup, retry: retrying.RetryPolicy, now: datetime, rng: random.Random
) -> Job | None:
    """The job's next state from the backup's records, or None when nothing changed."""
    record = _job_record(job, backup)
    if record is None:
        return None
    # A sweep reads a submitting job's backup too (a live record proves its POST landed):
    # for such a job the read is a reconcile read.
    event = Event.RECONCILED if job.state == JobState.SUBMITTING else Event.TRACKED
    if record.status == RecordStatus.SUCCESS:
        return apply_record(job, record, now, event)
    if record.status in (RecordStatus.FAIL, RecordStatus.SKIP):
        return retrying.after_record_failure(job, retry, now, record=record, rng=rng, event=event)
    if job.replication_record_id != record.id:
        return job.evolve(replication_record_id=record.id)
    return None


def _job_record(job: Job, backup: Backup) -> ReplicationRecord | None:
    for record in backup.replication_records:
        if record.id == job.replication_record_id:
            return record
    return rules.live_record(backup, job.destination_region)
