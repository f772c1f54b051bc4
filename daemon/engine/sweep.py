"""One pass of one policy: resolve it against the cloud, keep its vault bindings, scan its
vaults page by page, decide per backup, record the decisions, then submit due work.

Per page there is one ledger read (the jobs of that page's backups) and one ledger write, so
memory stays flat however many backups a vault holds (docs/design.md §4). Up to
``engine.worker_threads`` threads list different vaults at once (``engine.concurrency``
requests on the wire), or one thread lists the whole source project (``source.listing:
project``); the pages are decided and recorded in the sweeping thread, one batch at a time,
so the ledger has one user per sweep.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import NamedTuple

import structlog

from daemon.core import alerts, retrying, rules
from daemon.core.errors import (
    CloudError,
    EndpointError,
    LedgerError,
    MalformedAnswerError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    RefusedError,
)
from daemon.core.model import (
    LEASED,
    Action,
    Backup,
    BackupPage,
    Decision,
    Destination,
    Job,
    JobState,
    Origin,
    Reason,
    SweepReport,
    Vault,
    VaultBinding,
)
from daemon.core.policy import Policy
from daemon.engine import track
from daemon.engine.context import Engine, Target
from daemon.engine.submit import submit_due

log = structlog.get_logger("cbr_replicator")

BATCH_BACKUPS = 1000  # backups decided together at most (one ledger read and write)

DecisionSink = Callable[[Policy, Vault, Backup, Decision], None]
# Told how many backups of a policy were just scanned (the live progress): unlike a decision
# sink it leaves the settled backups unbuilt.
ScanHook = Callable[[Policy, int], None]


@dataclass(frozen=True)
class ResolvedPolicy:
    """A policy with its cloud objects looked up (source vaults, destination)."""

    policy: Policy
    target: Target
    source_vaults: tuple[Vault, ...]


def retry_policy(policy: Policy) -> retrying.RetryPolicy:
    settings = policy.retry
    return retrying.RetryPolicy(
        max_attempts=settings.max_attempts,
        initial_backoff=settings.initial_backoff,
        max_backoff=settings.max_backoff,
        multiplier=settings.multiplier,
        jitter=settings.jitter,
    )


def resolve_policy(engine: Engine, policy: Policy) -> ResolvedPolicy:
    """Look the policy's objects up; a rule the cloud's answers break raises RefusedError.

    The source's look-ups (project, then capabilities and vaults) and the destination's
    (project, then vault) are independent chains of calls, so they run at once: two round
    trips before the first listing instead of five. Their errors are raised in the order a
    one-by-one resolution meets them, so a policy is refused for the same reason either way."""
    source_region = policy.source.region
    destination_region = policy.destination.region
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="resolve") as pool:
        destination = pool.submit(_destination, engine, policy)
        source_project = _project(engine, source_region, None)
        source_vaults = pool.submit(_source_vaults, engine, policy, source_project)
        destinations = engine.cloud.replication_destinations(source_region, source_project)
        refusal = rules.check_destination(destinations, destination_region, source_region)
        if refusal is not None:
            raise RefusedError(
                refusal,
                f"policy {policy.name}: {source_region} cannot replicate to "
                f"{destination_region} (replication destinations: "
                f"{', '.join(sorted(destinations)) or 'none'})",
            )
        vaults = source_vaults.result()
        destination_project, destination_vault = destination.result()
    target = Target(
        policy=policy.name,
        source_region=source_region,
        source_project_id=source_project,
        destination=Destination(destination_region, destination_project, destination_vault.id),
        retry=retry_policy(policy),
        name_template=policy.replica.name,
        description_template=policy.replica.description,
        enable_acceleration=policy.enable_acceleration,
        max_in_flight=policy.max_in_flight,
        traffic_budget_per_day=policy.traffic_budget_per_day,
        timezone=policy.schedule.timezone,
    )
    return ResolvedPolicy(policy=policy, target=target, source_vaults=vaults)


def _source_vaults(engine: Engine, policy: Policy, project_id: str) -> tuple[Vault, ...]:
    return tuple(_source_vault(engine, policy, project_id, name) for name in policy.source.vaults)


def _destination(engine: Engine, policy: Policy) -> tuple[str, Vault]:
    """The destination project and vault; refused unless it is a replication vault."""
    region = policy.destination.region
    project_id = _project(engine, region, policy.destination.project)
    vault = _find_vault(engine, region, project_id, policy.destination.vault, policy)
    refusal = rules.check_destination_vault(vault.protect_type)
    if refusal is not None:
        raise RefusedError(
            refusal,
            f"policy {policy.name}: destination vault {vault.name} in {region} is not a "
            f"replication vault (protect_type {vault.protect_type})",
        )
    return project_id, vault


def _project(engine: Engine, region: str, project: str | None) -> str:
    try:
        return engine.cloud.resolve_project(region, project)
    except NotFoundError as error:
        raise RefusedError(Reason.PROJECT_NOT_FOUND, str(error)) from None


def _find_vault(
    engine: Engine, region: str, project_id: str, name_or_id: str, policy: Policy
) -> Vault:
    try:
        return engine.cloud.find_vault(region, project_id, name_or_id)
    except NotFoundError:
        raise RefusedError(
            Reason.VAULT_NOT_FOUND,
            f"policy {policy.name}: vault {name_or_id!r} not found in {region}",
        ) from None


def _source_vault(engine: Engine, policy: Policy, project_id: str, name_or_id: str) -> Vault:
    vault = _find_vault(engine, policy.source.region, project_id, name_or_id, policy)
    refusal = rules.check_source_vault(vault.protect_type, vault.object_type)
    if refusal is not None:
        raise RefusedError(
            refusal,
            f"policy {policy.name}: source vault {vault.name} is a replication vault; "
            "replicas are never replicated again",
        )
    return vault


# -- vault bindings ------------------------------------------------------------------------


def keep_bindings(engine: Engine, resolved: ResolvedPolicy, *, dry_run: bool) -> None:
    """Write the once-only binding of each source vault to the destination region on the
    policy's first sweep; refuse the policy when a binding points elsewhere."""
    target = resolved.target
    bindings = engine.ledger.get_bindings(
        target.destination.region, [vault.id for vault in resolved.source_vaults]
    )
    now = engine.now()
    wanted = {
        vault.id: VaultBinding(
            source_vault_id=vault.id,
            destination_region=target.destination.region,
            destination_project_id=target.destination.project_id,
            destination_vault_id=target.destination.vault_id,
            origin=f"policy:{target.policy}",
            created_at=now,
            source_region=target.source_region,
            source_vault_name=vault.name,
        )
        for vault in resolved.source_vaults
    }
    missing = [binding for vault_id, binding in wanted.items() if vault_id not in bindings]
    if missing and not dry_run:
        # One transaction for all: a first sweep of 1,000 vaults took 1.5 s committing
        # (and syncing) one binding at a time, before its first listing.
        added = engine.ledger.add_bindings(missing)
        bindings.update((binding.source_vault_id, binding) for binding in added)
    for vault in resolved.source_vaults:
        existing = bindings.get(vault.id)
        if existing is not None and not _same_destination(existing, wanted[vault.id]):
            raise RefusedError(
                Reason.VAULT_ALREADY_REPLICATED,
                f"policy {target.policy}: vault {vault.name} was replicated to "
                f"{target.destination.region} on {existing.created_at:%Y-%m-%d %H:%M}Z by "
                f"{existing.origin} (vault {existing.destination_vault_id}, project "
                f"{existing.destination_project_id}); a vault goes to a region once only",
            )


def _same_destination(binding: VaultBinding, wanted: VaultBinding) -> bool:
    return (
        binding.destination_project_id == wanted.destination_project_id
        and binding.destination_vault_id == wanted.destination_vault_id
    )


# -- scanning ------------------------------------------------------------------------------


@dataclass
class _Tally:
    backups_seen: int = 0
    enqueued: int = 0
    adopted: int = 0
    reasons: Counter[str] | None = None

    def __post_init__(self) -> None:
        self.reasons = Counter()


def scan_vaults(
    engine: Engine,
    resolved: ResolvedPolicy,
    tally: _Tally,
    *,
    dry_run: bool,
    sink: DecisionSink | None,
    renew: Callable[[], None],
    on_scanned: ScanHook | None = None,
) -> list[CloudError]:
    """List the policy's vaults (several at once, each vault's pages in order; or, with
    ``source.listing: project``, the whole source project once, each page split among the
    policy's vaults) and decide and record every page here. A listing whose own answers fail
    it (malformed, or a 4xx such as not found) is left for the next sweep and its error
    returned: the other vaults are still swept (docs/design.md §13, T5). Anything else stops
    the scan and is raised: the cloud unreachable or throttling after retries (the other
    vaults would only wait for the same), permission denied (stop everything)."""
    vaults = resolved.source_vaults
    listings: list[Callable[[], None]]
    feed = _PageFeed(engine, resolved, size=2 * max(1, min(engine.concurrency, len(vaults))))
    if resolved.policy.source.listing == "project":
        listings = [feed.fetch_project]
    else:
        listings = [functools.partial(feed.fetch, vault) for vault in vaults]
    pool = ThreadPoolExecutor(
        max_workers=max(1, min(engine.worker_threads, len(listings))), thread_name_prefix="scan"
    )
    failed: list[CloudError] = []
    try:
        for listing in listings:
            pool.submit(listing)
        for pages in feed.batches(len(listings), most=BATCH_BACKUPS, failed=failed):
            renew()
            decide_pages(engine, resolved, pages, tally, dry_run=dry_run, sink=sink)
            if on_scanned is not None:
                on_scanned(resolved.policy, sum(len(page) for _, page in pages))
    finally:
        feed.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return failed


class _Pages(NamedTuple):
    vault: Vault
    page: BackupPage


class _Done(NamedTuple):
    """The end of one listing (a vault's, or the project's), with the error that ended it."""

    listing: str
    error: Exception | None


class _PageFeed:
    """Listing threads put pages in a bounded queue (so memory stays flat); the sweeping
    thread takes them. Each listing ends with a ``_Done``, carrying the error that stopped
    it if one did."""

    def __init__(self, engine: Engine, resolved: ResolvedPolicy, size: int) -> None:
        self._cloud = engine.cloud
        self._target = resolved.target
        self._vaults = {vault.id: vault for vault in resolved.source_vaults}
        self._queue: queue.Queue[_Pages | _Done] = queue.Queue(size)
        self._closed = threading.Event()

    def fetch(self, vault: Vault) -> None:
        """One vault's listing."""
        self._list(vault.id, f"vault {vault.name}", lambda page: [_Pages(vault, page)])

    def fetch_project(self) -> None:
        """The source project's listing: each page split by vault, the backups of vaults
        outside the policy dropped unbuilt."""
        vaults = self._vaults

        def split(page: BackupPage) -> list[_Pages]:
            return [
                _Pages(vaults[vault_id], part)
                for vault_id, part in page.by_vault().items()
                if vault_id in vaults
            ]

        self._list(None, f"project {self._target.source_project_id}", split)

    def _list(
        self,
        vault_id: str | None,
        listing: str,
        pieces: Callable[[BackupPage], list[_Pages]],
    ) -> None:
        if self._closed.is_set():
            return
        target = self._target
        try:
            for page in self._cloud.list_backup_pages(
                target.source_region, target.source_project_id, vault_id
            ):
                for piece in pieces(page):
                    if not self._put(piece):
                        return
        except Exception as error:  # handed over: the sweeping thread raises it
            self._put(_Done(listing, error))
            return
        self._put(_Done(listing, None))

    def _put(self, item: _Pages | _Done) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.05)
            except queue.Full:
                continue
            return True
        return False

    def batches(
        self, listings: int, most: int, failed: list[CloudError]
    ) -> Iterator[list[tuple[Vault, BackupPage]]]:
        """Pages as they come; the pages already waiting go together (up to ``most``
        backups), so small pages of many vaults cost one ledger read and write, not one each.
        A listing's own error (malformed answer, 4xx) ends that listing only and is added to
        ``failed``."""
        finished, size = 0, 0
        batch: list[tuple[Vault, BackupPage]] = []
        while finished < listings:
            try:
                item = self._queue.get(block=not batch)
            except queue.Empty:
                yield batch
                batch, size = [], 0
                continue
            if isinstance(item, _Done):
                finished += 1
                if isinstance(item.error, MalformedAnswerError | PermanentError):
                    log.warning("listing_failed", listing=item.listing, error=str(item.error))
                    failed.append(item.error)
                elif item.error is not None:
                    raise item.error
                continue
            batch.append((item.vault, item.page))
            size += len(item.page)
            if size >= most:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    def close(self) -> None:
        self._closed.set()


def decide_pages(
    engine: Engine,
    resolved: ResolvedPolicy,
    pages: list[tuple[Vault, BackupPage]],
    tally: _Tally,
    *,
    dry_run: bool,
    sink: DecisionSink | None,
) -> None:
    """One ledger read for the pages' jobs, a decision per backup, one ledger write.

    A backup whose job is settled is skipped for a reason its job's state alone gives, so
    without a sink (which shows every decision) it is only counted: its model is never built
    (issue 7: nearly every backup of a steady sweep)."""
    region = resolved.target.destination.region
    known = engine.ledger.get_page_jobs(
        region, [backup_id for _, page in pages for backup_id in page.ids]
    )
    settled_jobs, open_jobs = known.settled, known.open
    settled_seen: Counter[JobState] = Counter()
    now = engine.now()
    writes: list[Job] = []
    finished: list[tuple[Job, Job]] = []
    for vault, page in pages:
        for index, backup_id in enumerate(page.ids):
            settled = settled_jobs.get(backup_id)
            if settled is not None:  # nothing to write for it, whatever the cloud says
                if sink is None:
                    settled_seen[settled] += 1
                    continue
                backup = page[index]
                decision = rules.decide_settled(backup, settled)
                write = None
            else:
                backup = page[index]
                job = open_jobs.get(backup_id)
                decision = rules.decide(backup, region, job, now)
                write = plan_write(engine, resolved, vault, backup, job=job, decision=decision)
            _count(tally, decision)
            if sink is not None:
                sink(resolved.policy, vault, backup, decision)
            if write is not None:
                writes.append(write)
                if job is not None:
                    finished.append((job, write))
    for state, seen in settled_seen.items():
        tally.backups_seen += seen
        assert tally.reasons is not None
        tally.reasons[rules.settled_reason(state)] += seen
    if writes and not dry_run:
        engine.ledger.save_jobs(writes, now, track.finished_attempts(finished, now))
        track.log_finished(finished)


def _count(tally: _Tally, decision: Decision) -> None:
    tally.backups_seen += 1
    assert tally.reasons is not None
    tally.reasons[decision.reason] += 1
    if decision.action == Action.ENQUEUE:
        tally.enqueued += 1
    elif decision.action == Action.ADOPT:
        tally.adopted += 1


def plan_write(
    engine: Engine,
    resolved: ResolvedPolicy,
    vault: Vault,
    backup: Backup,
    *,
    job: Job | None,
    decision: Decision,
) -> Job | None:
    """The ledger row this decision leads to, or None when nothing changes."""
    now = engine.now()
    if job is not None and _leased_by_other(engine, job):
        return None  # a submitter holds it: its own writes win
    if decision.action == Action.ENQUEUE:
        if job is None:
            return new_job(resolved, vault, backup, JobState.QUEUED, Origin.POLICY)
        return None  # queued or failed-and-due: the claim picks it up as it is
    if decision.action == Action.ADOPT and decision.record is not None:
        base = job or new_job(resolved, vault, backup, JobState.QUEUED, Origin.ADOPTED)
        adopted = track.apply_record(base, decision.record, now)
        return adopted if adopted != job else None
    if decision.action == Action.TRACK and job is not None and decision.record is not None:
        return track.track_from_backup(
            job.evolve(replication_record_id=job.replication_record_id or decision.record.id),
            backup,
            resolved.target.retry,
            now,
            engine.rng,
        ) or (
            track.apply_record(job, decision.record, now)
            if job.state == JobState.SUBMITTING and decision.record.is_live
            else None
        )
    return None


def _leased_by_other(engine: Engine, job: Job) -> bool:
    return (
        job.lease_owner is not None
        and job.lease_owner != engine.owner
        and job.lease_expires_at is not None
        and job.lease_expires_at > engine.now()
    )


def new_job(
    resolved: ResolvedPolicy, vault: Vault, backup: Backup, state: JobState, origin: Origin
) -> Job:
    target = resolved.target
    return Job(
        source_backup_id=backup.id,
        destination_region=target.destination.region,
        state=state,
        origin=origin,
        policy=target.policy,
        source_region=target.source_region,
        source_project_id=target.source_project_id,
        source_vault_id=vault.id,
        destination_project_id=target.destination.project_id,
        destination_vault_id=target.destination.vault_id,
        backup_name=backup.name,
        backup_created_at=backup.created_at,
        bytes=backup.bytes,
    )


# -- one sweep -----------------------------------------------------------------------------


class LeaseLostError(Exception):
    """Another process holds the lease this one was working under."""


class LeaseKeeper:
    """Keeps a named ledger lease while a long piece of work runs: a thread of its own renews
    it every quarter of its length, whatever the work is doing (a slow page, a long
    submission pass), so it never runs out under a live holder. ``check()`` raises
    LeaseLostError once the lease is lost: a renewal was refused (another process took it
    over, this one having stalled for a whole lease), or the ledger could not be reached for
    a whole lease (another may have taken it by now)."""

    def __init__(self, engine: Engine, name: str, length: timedelta) -> None:
        self._engine = engine
        self._name = name
        self._length = length
        self._stopped = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease:{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def check(self) -> None:
        if self._lost.is_set():
            raise LeaseLostError(
                f"lease {self._name} lost: another process took it over; this one stops here"
            )

    def _run(self) -> None:
        period = self._length.total_seconds() / 4
        renewed = time.monotonic()
        while not self._stopped.wait(period):
            now = self._engine.now()
            try:
                held = self._engine.ledger.acquire_lease(
                    self._name, owner=self._engine.owner, now=now, until=now + self._length
                )
            except LedgerError as error:
                log.warning("lease_renewal_failed", lease=self._name, error=str(error))
                held = time.monotonic() - renewed < self._length.total_seconds()
            else:
                renewed = time.monotonic() if held else renewed
            if not held:
                log.warning("lease_lost", lease=self._name, owner=self._engine.owner)
                self._lost.set()
                return


def _nothing() -> None:
    pass


def sweep_policy(
    engine: Engine,
    policy: Policy,
    *,
    dry_run: bool = False,
    sink: DecisionSink | None = None,
    submit: bool = True,
    on_scanned: ScanHook | None = None,
) -> tuple[SweepReport, ResolvedPolicy | None]:
    """Sweep one policy under its ledger lease. Refusals and cloud errors end up in the
    report (``error``/``error_reason``); PermissionDeniedError propagates (stop everything)."""
    started = engine.now()
    lease_name = f"sweep:{policy.name}"
    # Renewed every quarter of its length while the sweep runs (LeaseKeeper): another
    # instance takes the policy over at most one lease after this one stopped renewing.
    lease_length = engine.lease
    if not dry_run and not engine.ledger.acquire_lease(
        lease_name,
        owner=engine.owner,
        now=started,
        until=started + lease_length,
        holder_gone=engine.owner_gone,
    ):
        holder = engine.ledger.lease_holder(lease_name, started) or "another process"
        report = SweepReport(policy=policy.name, started_at=started, finished_at=engine.now())
        skipped = f"held by {holder}: another process is sweeping this policy"
        return replace(report, error=skipped, error_reason=LEASED), None

    keeper = None if dry_run else LeaseKeeper(engine, lease_name, lease_length)
    renew = keeper.check if keeper is not None else _nothing
    sweep_id = None if dry_run else engine.ledger.start_sweep(policy.name, started)
    tally = _Tally()
    submitted = 0
    error: str | None = None
    error_reason: str | None = None
    resolved: ResolvedPolicy | None = None
    monotonic_start = time.monotonic()
    try:
        if keeper is not None:
            keeper.start()
        resolved = resolve_policy(engine, policy)
        keep_bindings(engine, resolved, dry_run=dry_run)
        failed = scan_vaults(
            engine,
            resolved,
            tally,
            dry_run=dry_run,
            sink=sink,
            renew=renew,
            on_scanned=on_scanned,
        )
        if submit and not dry_run:
            renew()
            submitted = submit_due(engine, resolved.target).submitted
        if failed:
            raise failed[0]  # reported as the sweep's error, once the other vaults are done
    except RefusedError as refusal:
        error, error_reason = str(refusal), refusal.reason
    except LeaseLostError as lost:
        error, error_reason = str(lost), "lease_lost"
    except Exception as failure:
        if isinstance(failure, PermissionDeniedError | EndpointError) or not isinstance(
            failure, CloudError
        ):
            raise
        error, error_reason = str(failure), failure.code or failure.__class__.__name__
    finally:
        if keeper is not None:
            keeper.stop()  # before the release: a late renewal would take the lease again
        if not dry_run:
            engine.ledger.release_lease(lease_name, owner=engine.owner)
    report = SweepReport(
        policy=policy.name,
        started_at=started,
        finished_at=engine.now(),
        backups_seen=tally.backups_seen,
        reasons=dict(tally.reasons or {}),
        enqueued=tally.enqueued,
        adopted=tally.adopted,
        submitted=submitted,
        error=error,
        error_reason=error_reason,
    )
    if sweep_id is not None:
        engine.ledger.finish_sweep(sweep_id, report)
    log.info(
        "sweep_finished",
        policy=policy.name,
        seen=report.backups_seen,
        enqueued=report.enqueued,
        adopted=report.adopted,
        submitted=report.submitted,
        error_reason=error_reason,
        error=error,
        seconds=round(time.monotonic() - monotonic_start, 3),
        **_rpo_fields(engine, policy, dry_run=dry_run),
    )
    return report, resolved


def _rpo_fields(engine: Engine, policy: Policy, *, dry_run: bool) -> dict[str, object]:
    """The policy's RPO figures for the sweep's log line (none on a dry run)."""
    if dry_run:
        return {}
    window = engine.ledger.replication_window(policy.name)
    return alerts.rpo_log_fields(alerts.rpo_status(window, policy.rpo, engine.now()))
