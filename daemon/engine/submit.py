"""Submitting due jobs: the one place where a POST's exceptions become outcomes in the ledger.

The no-duplicate protocol of docs/design.md §11 lives here: claim with a lease, reconcile a job
left ``submitting`` before anything else, commit the intent, then POST; after any failure of the
POST the job stays ``submitting`` until a reconcile read says what happened.
"""

from __future__ import annotations

import functools
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import structlog

from daemon.core import naming, retrying, rules
from daemon.core.errors import (
    AlreadyReplicatedError,
    AmbiguousError,
    CloudError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    ThrottledError,
    TransientError,
)
from daemon.core.jobs import Event, advance
from daemon.core.model import Destination, Job, JobState, ReplicaSpec
from daemon.engine.budget import SlotBudget, defer_to_next_day, free_slots, traffic_left
from daemon.engine.context import Engine, Target, crash_point, job_log
from daemon.engine.outcomes import attempt_row, defer, release, save, uncertain_delay, unleased
from daemon.engine.track import apply_record

log = structlog.get_logger("cbr_replicator")
CLAIM_ROUND = 1000  # jobs claimed at once by a submission pass


@dataclass
class SubmitReport:
    """What one submission pass did."""

    claimed: int = 0
    submitted: int = 0
    reconciled: int = 0
    failed: int = 0
    deferred: int = 0

    def add(self, outcome: str) -> None:
        if outcome == "submitted":
            self.submitted += 1
        elif outcome == "reconciled":
            self.reconciled += 1
        elif outcome == "failed":
            self.failed += 1
        elif outcome != "given_up":  # no field counts the given-up: nothing read one
            self.deferred += 1


def submit_due(engine: Engine, target: Target, *, limit: int | None = None) -> SubmitReport:
    """Claim the policy's due jobs (within its limits) and submit each once."""
    report = SubmitReport()
    slots = free_slots(engine, target)
    # Jobs already ``submitting`` count against the slots but are claimed too (to reconcile),
    # so always allow a few claims even when every slot is taken.
    claim_limit = max(slots, 1) if limit is None else min(max(slots, 1), limit)
    budget: SlotBudget | None = None
    # Claimed in rounds: memory stays flat, and each round is done long before its lease ends.
    while report.claimed < claim_limit:
        wanted = min(CLAIM_ROUND, claim_limit - report.claimed)
        now = engine.now()
        claimed = engine.ledger.claim_jobs(
            owner=engine.owner,
            now=now,
            lease_until=now + engine.lease,
            limit=wanted,
            policy=target.policy,
        )
        report.claimed += len(claimed)
        if not claimed:
            break
        crash_point("after_claim")
        if budget is None:
            budget = SlotBudget(slots, traffic_left(engine, target))
        workers = max(1, min(engine.worker_threads, len(claimed)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="submit") as pool:
            outcomes = _submit_round(engine, target, claimed, budget, pool=pool, workers=workers)
        for outcome, _job in outcomes:
            report.add(outcome)
        # A job released for want of a slot is due again: with no slot left, stop here.
        if len(claimed) < wanted or budget.slots_left() <= 0:
            break
    return report


def _submit_round(
    engine: Engine,
    target: Target,
    claimed: list[Job],
    budget: SlotBudget,
    *,
    pool: ThreadPoolExecutor,
    workers: int,
) -> list[tuple[str, Job]]:
    """Jobs left ``submitting`` are reconciled first, one by one; the others go in batches."""
    leftovers = [job for job in claimed if job.state == JobState.SUBMITTING]
    fresh = [job for job in claimed if job.state != JobState.SUBMITTING]
    submit = functools.partial(_submit_one, engine, target, budget=budget)
    outcomes = list(pool.map(submit, leftovers))
    outcomes += _submit_batches(engine, target, fresh, budget, pool=pool, size=2 * workers)
    return outcomes


def _submit_batches(
    engine: Engine,
    target: Target,
    jobs: list[Job],
    budget: SlotBudget,
    *,
    pool: ThreadPoolExecutor,
    size: int,
) -> list[tuple[str, Job]]:
    """One ledger write for a batch's intents, its POSTs in parallel, one write for their
    outcomes (two transactions per batch, not two per job). The next batch is queued while
    one is posted, so the workers never wait for the ledger; an intent is still committed
    before its POST."""
    outcomes: list[tuple[str, Job]] = []
    window: deque[tuple[Job, Future[_Posted]]] = deque()
    try:
        for start in range(0, len(jobs), size):
            admitted = []
            for job in jobs[start : start + size]:
                refused = _admit(engine, target, job, budget)
                if refused is None:
                    admitted.append(job)
                else:
                    outcomes.append(refused)
            if admitted:
                intents = _write_intents(engine, target, admitted)
                written = {intent.key for intent in intents}
                outcomes += [("deferred", job) for job in admitted if job.key not in written]
                crash_point("after_intent")
                window.extend(
                    (intent, pool.submit(_post_only, engine, target, intent)) for intent in intents
                )
            while len(window) >= 2 * size:
                outcomes += _store_finished(engine, [window.popleft() for _ in range(size)])
        while window:
            batch = [window.popleft() for _ in range(min(size, len(window)))]
            outcomes += _store_finished(engine, batch)
    finally:
        for _, future in window:
            future.cancel()  # after a failure: left submitting, reconciled by a later pass
    return outcomes


def _store_finished(
    engine: Engine, batch: list[tuple[Job, Future[_Posted]]]
) -> list[tuple[str, Job]]:
    """Store the outcomes of finished POSTs in one write; a failure (permission denied, a
    bug) is raised after the others are stored and its job released."""
    posted: list[_Posted] = []
    failed: list[Job] = []
    failure: Exception | None = None
    for intent, future in batch:
        try:
            posted.append(future.result())
        except Exception as error:
            failure = failure or error
            failed.append(unleased(intent))
    stored = _store_posts(engine, posted)
    if failure is not None:
        engine.ledger.save_jobs(failed, engine.now())
        raise failure
    return stored


def _submit_one(engine: Engine, target: Target, job: Job, budget: SlotBudget) -> tuple[str, Job]:
    bound = job_log(job, target.policy)
    try:
        return _submit_claimed(engine, target, job, budget)
    except (PermissionDeniedError, ThrottledError):
        release(engine, job)
        raise
    except CloudError as error:
        # A read during reconcile failed: nothing was sent; keep the state, retry later.
        bound.warning("reconcile_failed", error=str(error), code=error.code)
        defer(engine, job, error)
        return "deferred", job


def _submit_claimed(
    engine: Engine, target: Target, job: Job, budget: SlotBudget
) -> tuple[str, Job]:
    event = Event.INTENT
    if job.state == JobState.SUBMITTING:
        reconciled = reconcile(engine, job)
        crash_point("after_reconcile")
        if reconciled is not None:
            return "reconciled", reconciled
        event = Event.RESUBMIT
    # A submitting job was counted in flight when the slots were computed: it keeps its slot
    # (and was admitted to the traffic budget when its intent was written). Asking again would
    # starve it for good once every slot is held by such jobs.
    else:
        refused = _admit(engine, target, job, budget)
        if refused is not None:
            return refused
    intents = _write_intents(engine, target, [job], event)
    if not intents:
        return "deferred", job  # another process claimed it meanwhile
    crash_point("after_intent")
    return _post(engine, target, intents[0])


def _admit(engine: Engine, target: Target, job: Job, budget: SlotBudget) -> tuple[str, Job] | None:
    """None when the job may be posted now (traffic and slot taken); else its deferral."""
    if not budget.take_traffic(job.bytes):
        return "deferred", defer_to_next_day(engine, target, job)
    if not budget.take():
        release(engine, job)
        return "deferred", job
    return None


def submit_claimed(engine: Engine, target: Target, job: Job) -> tuple[str, Job]:
    """Submit one job this process has claimed, outside any slot budget (manual commands)."""
    return _submit_one(engine, target, job, SlotBudget(1))


def reconcile(engine: Engine, job: Job) -> Job | None:
    """Did an earlier POST of this job land? Read the backup and look for a live record to
    the job's region. Returns the updated job, or None when the POST did not land."""
    try:
        backup = engine.cloud.show_backup(
            job.source_region, job.source_project_id, job.source_backup_id
        )
    except NotFoundError as error:
        gone = advance(
            job,
            Event.RECONCILED,
            JobState.GIVEN_UP,
            last_error_code="source_backup_deleted",
            last_error=f"the source backup no longer exists ({error.code})",
            finished_at=engine.now(),
            lease_owner=None,
            lease_expires_at=None,
        )
        return save(engine, gone, "source_deleted", error=error)
    record = rules.live_record(backup, job.destination_region)
    if record is None:
        return None
    updated = apply_record(job, record, engine.now(), Event.RECONCILED)
    return save(engine, updated.evolve(lease_owner=None, lease_expires_at=None), "reconciled")


def _write_intents(
    engine: Engine, target: Target, claimed: list[Job], event: Event = Event.INTENT
) -> list[Job]:
    """The intents of ``claimed`` (``event``: a first intent, or one written again after a
    reconcile read found no record), committed before any of their POSTs."""
    now = engine.now()
    intents = []
    for job in claimed:
        replica = job_replica(target, job, now)
        intents.append(
            advance(
                job,
                event,
                JobState.SUBMITTING,
                attempts=job.attempts + 1,
                replica_name=replica.name,
                replica_description=replica.description,
                # A new POST makes a new record: an earlier attempt's (failed) one must not
                # be followed in its place while this answer is unknown.
                replication_record_id=None,
                next_attempt_at=now + engine.recheck,
                # The lease restarts with the intent: it must outlast this POST (the lease
                # exceeds connect + read timeout), however long the job waited for its turn.
                lease_owner=engine.owner,
                lease_expires_at=now + engine.lease,
            )
        )
    # Committed (synchronous=FULL on SQLite) before the POSTs: a crash after this point
    # leads to a reconcile, never to a blind second POST. Only where this process still
    # holds the claim: one whose lease ran out while it waited may have been claimed (and
    # posted) by another instance since; that one owns it now.
    stored = engine.ledger.write_intents(intents, now, owner=engine.owner)
    if len(stored) < len(intents):
        kept = {job.key for job in stored}
        for job in intents:
            if job.key not in kept:
                log.warning(
                    "claim_lost",
                    policy=target.policy,
                    backup=job.source_backup_id,
                    region=job.destination_region,
                    detail="claimed by another process after this one's lease ran out",
                )
    return stored


def job_replica(target: Target, job: Job, now: datetime) -> ReplicaSpec:
    """The replica's name and description; a retry keeps the first attempt's."""
    if job.replica_name:
        return ReplicaSpec(
            job.replica_name, job.replica_description or "", target.enable_acceleration
        )
    values = naming.replica_values(
        job.backup_name or job.source_backup_id,
        job.source_backup_id,
        job.source_region,
        job.destination_region,
        now,
    )
    return ReplicaSpec(
        name=naming.render_name(target.name_template, values),
        description=naming.render_description(target.description_template, values),
        enable_acceleration=target.enable_acceleration,
    )


@dataclass(frozen=True)
class _Posted:
    """What a POST came to: the job as it is to be stored and its attempt row's outcome,
    not stored yet (``stored``: already stored, on the 1009 path)."""

    outcome: str
    job: Job
    attempt: str = ""
    error: CloudError | None = None
    request_id: str | None = None
    stored: bool = False


def _post(engine: Engine, target: Target, job: Job) -> tuple[str, Job]:
    return _store_posts(engine, [_post_only(engine, target, job)])[0]


def _store_posts(engine: Engine, posted: list[_Posted]) -> list[tuple[str, Job]]:
    """One ledger write for the jobs and attempt rows of several POSTs."""
    pending = [item for item in posted if not item.stored]
    now = engine.now()
    attempts = [
        attempt_row(item.job, now, item.attempt, error=item.error, request_id=item.request_id)
        for item in pending
    ]
    saved = iter(engine.ledger.save_jobs([item.job for item in pending], now, attempts))
    return [(item.outcome, item.job if item.stored else next(saved)) for item in posted]


def _post_only(engine: Engine, target: Target, job: Job) -> _Posted:
    replica = job_replica(target, job, engine.now())
    destination = Destination(
        job.destination_region, job.destination_project_id, job.destination_vault_id
    )
    bound = job_log(job, target.policy)
    try:
        accepted = engine.cloud.replicate_backup(
            job.source_region, job.source_project_id, job.source_backup_id, destination, replica
        )
    except AlreadyReplicatedError as error:
        # 1009: being or already replicated there. Never a failure: learn the record.
        crash_point("after_post")
        save(engine, job, "already_replicated", error=error)
        reconciled = reconcile(engine, job)
        if reconciled is not None:
            return _Posted("reconciled", reconciled, stored=True)
        return _Posted("deferred", release(engine, job), stored=True)
    except ThrottledError:
        # Throttled past what a POST may wait (not applied): the job stays submitting, and
        # the pass stops here rather than posting into the same throttle.
        raise
    except (AmbiguousError, TransientError) as error:
        crash_point("after_post")
        bound.warning("replicate_uncertain", error=str(error), code=error.code)
        retry_at = engine.now() + uncertain_delay(error, engine.recheck)
        kept = job.evolve(
            next_attempt_at=retry_at, last_error_code=error.code, last_error=str(error)
        )
        outcome = "ambiguous" if isinstance(error, AmbiguousError) else "transient"
        return _Posted("deferred", unleased(kept), outcome, error)
    except PermissionDeniedError:
        raise
    except PermanentError as error:
        bound.warning("replicate_refused", error=str(error), code=error.code)
        failed = retrying.after_failure(
            job,
            target.retry,
            engine.now(),
            code=error.code,
            message=str(error),
            rng=engine.rng,
            event=Event.REFUSED,
        )
        label = "given_up" if failed.state == JobState.GIVEN_UP else "failed"
        return _Posted(label, unleased(failed), "refused", error)
    crash_point("after_post")
    replicating = advance(
        job,
        Event.ACCEPTED,
        JobState.REPLICATING,
        replication_record_id=accepted.replication_record_id,
        next_attempt_at=None,
        last_error_code=None,
        last_error=None,
    )
    bound.info("replication_submitted", record=accepted.replication_record_id)
    return _Posted("submitted", unleased(replicating), "accepted", request_id=accepted.request_id)
