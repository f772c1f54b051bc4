"""Scanning a policy's vaults: their listing pages read ahead, one ledger read and one
decision per backup, what to write for each decision, and the new jobs.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import structlog

from daemon.core import rules
from daemon.core.errors import CloudError, MalformedAnswerError, PermanentError
from daemon.core.jobs import Event, create
from daemon.core.model import Action, Backup, BackupPage, Decision, Job, JobState, Origin, Vault
from daemon.core.policy import Policy
from daemon.engine import track
from daemon.engine.context import Engine
from daemon.engine.resolve import ResolvedPolicy

log = structlog.get_logger("cbr_replicator")

BATCH_BACKUPS = 1000  # backups decided together at most (one ledger read and write)

DecisionSink = Callable[[Policy, Vault, Backup, Decision], None]
# Told how many backups of a policy were just scanned (the live progress): unlike a decision
# sink it leaves the settled backups unbuilt.
ScanHook = Callable[[Policy, int], None]


# -- scanning ------------------------------------------------------------------------------


@dataclass
class Tally:
    backups_seen: int = 0
    enqueued: int = 0
    adopted: int = 0
    reasons: Counter[str] | None = None

    def __post_init__(self) -> None:
        self.reasons = Counter()


def scan_vaults(
    engine: Engine,
    resolved: ResolvedPolicy,
    tally: Tally,
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
    tally: Tally,
    *,
    dry_run: bool,
    sink: DecisionSink | None,
) -> None:
    """One ledger read for the pages' jobs, a decision per backup, one ledger write.

    A backup whose job is settled is skipped for a reason its job's state alone gives, so
    without a sink (which shows every decision) it is only counted: its model is never built
    (nearly every backup of a steady sweep)."""
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


def _count(tally: Tally, decision: Decision) -> None:
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
        adopted = track.apply_record(base, decision.record, now, Event.ADOPTED)
        return adopted if adopted != job else None
    if decision.action == Action.TRACK and job is not None and decision.record is not None:
        return track.track_from_backup(
            job.evolve(replication_record_id=job.replication_record_id or decision.record.id),
            backup,
            resolved.target.retry,
            now,
            engine.rng,
        ) or (
            track.apply_record(job, decision.record, now, Event.RECONCILED)
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
    return create(
        Event.ELIGIBLE,
        state,
        source_backup_id=backup.id,
        destination_region=target.destination.region,
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
