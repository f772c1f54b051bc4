"""Submit due jobs and track in-flight ones: the one place where cloud exceptions become
outcomes in the ledger.

The no-duplicate protocol of docs/design.md §11 lives here: claim with a lease, reconcile a job
left ``submitting`` before anything else, commit the intent, then POST; after any failure of the
POST the job stays ``submitting`` until a reconcile read says what happened.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog

from daemon.core import naming, retrying, rules
from daemon.core.errors import (
    AlreadyReplicatedError,
    AmbiguousError,
    CloudError,
    MalformedAnswerError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    ThrottledError,
    TransientError,
)
from daemon.core.model import (
    Attempt,
    Backup,
    Destination,
    Job,
    JobState,
    Reason,
    RecordStatus,
    ReplicaSpec,
    ReplicationRecord,
)
from daemon.core.ports import Cloud, Ledger

log = structlog.get_logger("cbr_replicator")

CRASH_ENV = "CBR_REPLICATOR_TEST_CRASH_AT"  # test-only: kill this process at a named point
RECHECK_MARGIN = timedelta(seconds=5)


def ambiguous_recheck(connect_timeout: timedelta, read_timeout: timedelta) -> timedelta:
    """How soon a job whose POST may have been applied is reconciled again. The reconcile
    read must come after anything the POST could still do: the request may be in flight for
    up to connect + read timeout, and the margin lets the service finish one that reached it
    just before our timeout. Sooner, a read could miss a replication about to start."""
    return connect_timeout + read_timeout + RECHECK_MARGIN


# The default config's (10 s connect, 30 s read); the composition root derives its own.
AMBIGUOUS_RECHECK = ambiguous_recheck(timedelta(seconds=10), timedelta(seconds=30))
CLAIM_ROUND = 1000  # jobs claimed at once by a submission pass
TRACK_BATCH = 500  # replicating jobs read from the ledger at once by a tracking round


@dataclass(frozen=True)
class Engine:
    """What the services share: ports, clock, randomness and this process's identity."""

    cloud: Cloud
    ledger: Ledger
    clock: Callable[[], datetime]
    owner: str
    lease: timedelta = timedelta(minutes=2)
    max_in_flight_per_region: int | None = None
    rng: random.Random = field(default_factory=random.Random)
    concurrency: int = 8
    # Does this lease owner (another process's ``owner``) no longer run? Lets a policy's
    # sweep lease be taken over at once from a killed process; never by default.
    owner_gone: Callable[[str], bool] = field(default=lambda _owner: False)
    # How soon a ``submitting`` job is reconciled again (``ambiguous_recheck``).
    recheck: timedelta = AMBIGUOUS_RECHECK

    def now(self) -> datetime:
        return self.clock()

    @property
    def worker_threads(self) -> int:
        """Threads that make API calls: as many as the calls in flight. Twice as many kept
        the slots fuller while some threads signed or parsed, but the process is bound by one
        core (the GIL) in a catch-up, and the extra threads' contention cost more than they
        gained: 10-15 % more CPU and a catch-up ratio of 1.52-1.55 against 1.38-1.42 (1,000
        vaults, 10,000 POSTs, one batch; issue 7)."""
        return self.concurrency


@dataclass(frozen=True)
class Target:
    """A resolved destination of one policy: what every job of that policy needs."""

    policy: str
    source_region: str
    source_project_id: str
    destination: Destination
    retry: retrying.RetryPolicy
    name_template: str
    description_template: str
    enable_acceleration: bool
    max_in_flight: int
    traffic_budget_per_day: int | None = None  # bytes; None: no budget
    timezone: str = "UTC"  # the day of the traffic budget is a day of this zone


@dataclass
class SubmitReport:
    """What one submission pass did."""

    claimed: int = 0
    submitted: int = 0
    reconciled: int = 0
    failed: int = 0
    given_up: int = 0
    deferred: int = 0
    job_keys: list[tuple[str, str]] = field(default_factory=list)

    def add(self, outcome: str, job: Job) -> None:
        self.job_keys.append(job.key)
        if outcome == "submitted":
            self.submitted += 1
        elif outcome == "reconciled":
            self.reconciled += 1
        elif outcome == "given_up":
            self.given_up += 1
        elif outcome == "failed":
            self.failed += 1
        else:
            self.deferred += 1


def crash_point(name: str) -> None:
    """Test-only: die like ``kill -9`` at a named point of the protocol (issue 6, T1)."""
    wanted = os.environ.get(CRASH_ENV)
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


def free_slots(engine: Engine, target: Target) -> int:
    """How many more replications this policy may start (policy and region limits)."""
    in_flight = {JobState.SUBMITTING, JobState.REPLICATING}
    slots = target.max_in_flight - engine.ledger.count_jobs(in_flight, policy=target.policy)
    if engine.max_in_flight_per_region is not None:
        region_used = engine.ledger.count_jobs(
            in_flight, destination_region=target.destination.region
        )
        slots = min(slots, engine.max_in_flight_per_region - region_used)
    return max(0, slots)


def submit_due(engine: Engine, target: Target, *, limit: int | None = None) -> SubmitReport:
    """Claim the policy's due jobs (within its limits) and submit each once."""
    report = SubmitReport()
    slots = free_slots(engine, target)
    # Jobs already ``submitting`` count against the slots but are claimed too (to reconcile),
    # so always allow a few claims even when every slot is taken.
    claim_limit = max(slots, 1) if limit is None else min(max(slots, 1), limit)
    budget: _SlotBudget | None = None
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
            budget = _SlotBudget(slots, _traffic_left(engine, target))
        workers = max(1, min(engine.worker_threads, len(claimed)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="submit") as pool:
            outcomes = _submit_round(engine, target, claimed, budget, pool=pool, workers=workers)
        for outcome, job in outcomes:
            report.add(outcome, job)
        # A job released for want of a slot is due again: with no slot left, stop here.
        if len(claimed) < wanted or budget.slots_left() <= 0:
            break
    return report


def _submit_round(
    engine: Engine,
    target: Target,
    claimed: list[Job],
    budget: _SlotBudget,
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
    budget: _SlotBudget,
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
            failed.append(_unleased(intent))
    stored = _store_posts(engine, posted)
    if failure is not None:
        engine.ledger.save_jobs(failed, engine.now())
        raise failure
    return stored


class _SlotBudget:
    """Slots for new POSTs, shared by the worker threads of one pass."""

    def __init__(self, slots: int, traffic: int | None = None) -> None:
        self._slots = slots
        self._traffic = traffic  # bytes left of today's budget; None: no budget
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._slots <= 0:
                return False
            self._slots -= 1
            return True

    def slots_left(self) -> int:
        with self._lock:
            return self._slots

    def take_traffic(self, size: int) -> bool:
        with self._lock:
            if self._traffic is None:
                return True
            if size > self._traffic:
                return False
            self._traffic -= size
            return True


def day_bounds(moment: datetime, timezone: str) -> tuple[datetime, datetime]:
    """Start of ``moment``'s day in ``timezone`` and of the next one, both in UTC."""
    local = moment.astimezone(ZoneInfo(timezone))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    following = start + timedelta(days=1)  # wall-clock arithmetic: the next local midnight
    return start.astimezone(UTC), following.astimezone(UTC)


def _traffic_left(engine: Engine, target: Target) -> int | None:
    if target.traffic_budget_per_day is None:
        return None
    day_start, _ = day_bounds(engine.now(), target.timezone)
    used = engine.ledger.submitted_bytes(policy=target.policy, since=day_start)
    return max(0, target.traffic_budget_per_day - used)


def _submit_one(engine: Engine, target: Target, job: Job, budget: _SlotBudget) -> tuple[str, Job]:
    bound = log.bind(
        policy=target.policy, backup=job.source_backup_id, region=job.destination_region
    )
    try:
        return _submit_claimed(engine, target, job, budget)
    except (PermissionDeniedError, ThrottledError):
        _release(engine, job)
        raise
    except CloudError as error:
        # A read during reconcile failed: nothing was sent; keep the state, retry later.
        bound.warning("reconcile_failed", error=str(error), code=error.code)
        _defer(engine, job, error)
        return "deferred", job


def _submit_claimed(
    engine: Engine, target: Target, job: Job, budget: _SlotBudget
) -> tuple[str, Job]:
    if job.state == JobState.SUBMITTING:
        reconciled = reconcile(engine, job)
        crash_point("after_reconcile")
        if reconciled is not None:
            return "reconciled", reconciled
    # A submitting job was counted in flight when the slots were computed: it keeps its slot
    # (and was admitted to the traffic budget when its intent was written). Asking again would
    # starve it for good once every slot is held by such jobs.
    else:
        refused = _admit(engine, target, job, budget)
        if refused is not None:
            return refused
    intents = _write_intents(engine, target, [job])
    if not intents:
        return "deferred", job  # another process claimed it meanwhile
    crash_point("after_intent")
    return _post(engine, target, intents[0])


def _admit(engine: Engine, target: Target, job: Job, budget: _SlotBudget) -> tuple[str, Job] | None:
    """None when the job may be posted now (traffic and slot taken); else its deferral."""
    if not budget.take_traffic(job.bytes):
        return "deferred", _defer_to_next_day(engine, target, job)
    if not budget.take():
        _release(engine, job)
        return "deferred", job
    return None


def _defer_to_next_day(engine: Engine, target: Target, job: Job) -> Job:
    """Today's traffic budget is spent: the job waits, queued, for the next day."""
    _, next_day = day_bounds(engine.now(), target.timezone)
    log.info(
        "traffic_budget_exhausted",
        policy=target.policy,
        backup=job.source_backup_id,
        region=job.destination_region,
        until=next_day.isoformat(),
    )
    later = job.evolve(
        next_attempt_at=next_day,
        last_error_code=str(Reason.TRAFFIC_BUDGET_EXHAUSTED),
        last_error=f"the policy's traffic budget for today is spent; waits until {next_day}",
    )
    return engine.ledger.save_jobs([_unleased(later)], engine.now())[0]


def submit_claimed(engine: Engine, target: Target, job: Job) -> tuple[str, Job]:
    """Submit one job this process has claimed, outside any slot budget (manual commands)."""
    return _submit_one(engine, target, job, _SlotBudget(1))


def reconcile(engine: Engine, job: Job) -> Job | None:
    """Did an earlier POST of this job land? Read the backup and look for a live record to
    the job's region. Returns the updated job, or None when the POST did not land."""
    try:
        backup = engine.cloud.show_backup(
            job.source_region, job.source_project_id, job.source_backup_id
        )
    except NotFoundError as error:
        gone = job.evolve(
            state=JobState.GIVEN_UP,
            last_error_code="source_backup_deleted",
            last_error=f"the source backup no longer exists ({error.code})",
            finished_at=engine.now(),
            lease_owner=None,
            lease_expires_at=None,
        )
        return _save(engine, gone, "source_deleted", error=error)
    record = rules.live_record(backup, job.destination_region)
    if record is None:
        return None
    updated = apply_record(job, record, engine.now())
    return _save(engine, updated.evolve(lease_owner=None, lease_expires_at=None), "reconciled")


def apply_record(job: Job, record: ReplicationRecord, now: datetime) -> Job:
    """The job as the cloud's replication record says it is (live records only)."""
    if record.status == RecordStatus.SUCCESS:
        return job.evolve(
            state=JobState.SUCCEEDED,
            replication_record_id=record.id,
            replica_backup_id=record.destination_backup_id,
            finished_at=job.finished_at or now,
            last_error_code=None,
            last_error=None,
        )
    return job.evolve(state=JobState.REPLICATING, replication_record_id=record.id)


def _write_intents(engine: Engine, target: Target, jobs: list[Job]) -> list[Job]:
    now = engine.now()
    intents = []
    for job in jobs:
        replica = job_replica(target, job, now)
        intents.append(
            job.evolve(
                state=JobState.SUBMITTING,
                attempts=job.attempts + 1,
                replica_name=replica.name,
                replica_description=replica.description,
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
        _attempt(item.job, now, item.attempt, error=item.error, request_id=item.request_id)
        for item in pending
    ]
    saved = iter(engine.ledger.save_jobs([item.job for item in pending], now, attempts))
    return [(item.outcome, item.job if item.stored else next(saved)) for item in posted]


def _post_only(engine: Engine, target: Target, job: Job) -> _Posted:
    replica = job_replica(target, job, engine.now())
    destination = Destination(
        job.destination_region, job.destination_project_id, job.destination_vault_id
    )
    bound = log.bind(
        policy=target.policy, backup=job.source_backup_id, region=job.destination_region
    )
    try:
        accepted = engine.cloud.replicate_backup(
            job.source_region, job.source_project_id, job.source_backup_id, destination, replica
        )
    except AlreadyReplicatedError as error:
        # 1009: being or already replicated there. Never a failure: learn the record.
        crash_point("after_post")
        _save(engine, job, "already_replicated", error=error)
        reconciled = reconcile(engine, job)
        if reconciled is not None:
            return _Posted("reconciled", reconciled, stored=True)
        return _Posted("deferred", _release(engine, job), stored=True)
    except ThrottledError:
        # Throttled past what a POST may wait (not applied): the job stays submitting, and
        # the pass stops here rather than posting into the same throttle.
        raise
    except (AmbiguousError, TransientError) as error:
        crash_point("after_post")
        bound.warning("replicate_uncertain", error=str(error), code=error.code)
        retry_at = engine.now() + _uncertain_delay(error, engine.recheck)
        kept = job.evolve(
            next_attempt_at=retry_at, last_error_code=error.code, last_error=str(error)
        )
        outcome = "ambiguous" if isinstance(error, AmbiguousError) else "transient"
        return _Posted("deferred", _unleased(kept), outcome, error)
    except PermissionDeniedError:
        raise
    except PermanentError as error:
        bound.warning("replicate_refused", error=str(error), code=error.code)
        failed = retrying.after_failure(
            job, target.retry, engine.now(), code=error.code, message=str(error), rng=engine.rng
        )
        label = "given_up" if failed.state == JobState.GIVEN_UP else "failed"
        return _Posted(label, _unleased(failed), "refused", error)
    crash_point("after_post")
    replicating = job.evolve(
        state=JobState.REPLICATING,
        replication_record_id=accepted.replication_record_id,
        next_attempt_at=None,
        last_error_code=None,
        last_error=None,
    )
    bound.info("replication_submitted", record=accepted.replication_record_id)
    return _Posted("submitted", _unleased(replicating), "accepted", request_id=accepted.request_id)


def _uncertain_delay(error: CloudError, recheck: timedelta) -> timedelta:
    retry_after = getattr(error, "retry_after", None)
    if retry_after:
        return max(recheck, timedelta(seconds=float(retry_after)))
    return recheck


def _unleased(job: Job) -> Job:
    return job.evolve(lease_owner=None, lease_expires_at=None)


def _release(engine: Engine, job: Job) -> Job:
    return engine.ledger.save_jobs([_unleased(job)], engine.now())[0]


def _defer(engine: Engine, job: Job, error: CloudError) -> None:
    later = job.evolve(next_attempt_at=engine.now() + _uncertain_delay(error, engine.recheck))
    engine.ledger.save_jobs([_unleased(later)], engine.now())


def _save(
    engine: Engine,
    job: Job,
    outcome: str,
    *,
    error: CloudError | None = None,
    request_id: str | None = None,
) -> Job:
    """Store the job and one attempt row (what ``history`` shows) in one transaction."""
    now = engine.now()
    attempt = _attempt(job, now, outcome, error=error, request_id=request_id)
    return engine.ledger.save_jobs([job], now, [attempt])[0]


def _attempt(
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


# -- tracking ------------------------------------------------------------------------------


def replicating_batches(
    ledger: Ledger, policy: str | None = None, *, manual: bool = False
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
        bound = log.bind(
            policy=after.policy, backup=after.source_backup_id, region=after.destination_region
        )
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
    if record.status == RecordStatus.SUCCESS:
        return apply_record(job, record, now)
    if record.status in (RecordStatus.FAIL, RecordStatus.SKIP):
        return retrying.after_record_failure(job, retry, now, record=record, rng=rng)
    if job.replication_record_id != record.id:
        return job.evolve(replication_record_id=record.id)
    return None


def _job_record(job: Job, backup: Backup) -> ReplicationRecord | None:
    for record in backup.replication_records:
        if record.id == job.replication_record_id:
            return record
    return rules.live_record(backup, job.destination_region)
