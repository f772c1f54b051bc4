"""In-memory implementations of the core's ports, for fast engine tests: the jobs and sweeps
roles of the ledger, and the cloud's backups and POSTs. They keep the semantics the engine
relies on (the claim's order and leases, intents stored only under a held lease, attempts),
not SQL; the adapters' own tests prove the real ones."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from daemon.core.errors import CloudError, NotFoundError
from daemon.core.model import (
    Attempt,
    Backup,
    Destination,
    Job,
    JobState,
    RecordStatus,
    ReplicaSpec,
    ReplicationAccepted,
    ReplicationRecord,
)

DUE_STATES = (JobState.QUEUED, JobState.FAILED, JobState.SUBMITTING)


@dataclass
class FakeLedger:
    """The ``JobsLedger`` role (and ``submitted_bytes`` of the sweeps role) in a dict."""

    jobs: dict[tuple[str, str], Job] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def get_job(self, source_backup_id: str, destination_region: str) -> Job | None:
        return self.jobs.get((source_backup_id, destination_region))

    def get_jobs(self, destination_region: str, backup_ids: Collection[str]) -> dict[str, Job]:
        found = (self.jobs.get((backup, destination_region)) for backup in backup_ids)
        return {job.source_backup_id: job for job in found if job is not None}

    def save_jobs(
        self, jobs: Sequence[Job], now: datetime, attempts: Sequence[Attempt] = ()
    ) -> list[Job]:
        stored = []
        for job in jobs:
            old = self.jobs.get(job.key)
            saved = job.evolve(
                id=old.id if old else next(self._ids),
                created_at=old.created_at if old else now,
                updated_at=now,
            )
            self.jobs[job.key] = saved
            stored.append(saved)
        for position, attempt in enumerate(attempts):
            # job_id 0: the attempt of the job at the same position
            owner = stored[position] if attempt.job_id == 0 else None
            self.attempts.append(attempt if owner is None else _attempt_of(attempt, owner))
        return stored

    def write_intents(self, jobs: Sequence[Job], now: datetime, *, owner: str) -> list[Job]:
        held = [job for job in jobs if self.jobs[job.key].lease_owner == owner]
        return self.save_jobs(held, now)

    def claim_jobs(
        self,
        *,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        policy: str | None = None,
        destination_region: str | None = None,
    ) -> list[Job]:
        def due(job: Job) -> bool:
            if job.state not in DUE_STATES:
                return False
            if job.state == JobState.FAILED and job.next_attempt_at is None:
                return False
            return job.next_attempt_at is None or job.next_attempt_at <= now

        def free(job: Job) -> bool:
            return job.lease_expires_at is None or job.lease_expires_at <= now

        candidates = [
            job
            for job in self.jobs.values()
            if due(job)
            and free(job)
            and (policy is None or job.policy == policy)
            and (destination_region is None or job.destination_region == destination_region)
        ]
        # Reconcile-first: submitting jobs before the rest, then the oldest.
        candidates.sort(
            key=lambda job: (
                job.state != JobState.SUBMITTING,
                job.next_attempt_at or job.created_at or now,
                job.id or 0,
            )
        )
        claimed = []
        for job in candidates[: max(0, limit)]:
            leased = job.evolve(lease_owner=owner, lease_expires_at=lease_until)
            self.jobs[job.key] = leased
            claimed.append(leased)
        return claimed

    def count_jobs(
        self,
        states: Collection[JobState],
        *,
        policy: str | None = None,
        destination_region: str | None = None,
        retry_due_by: datetime | None = None,
        manual: bool = False,
    ) -> int:
        return sum(
            1
            for job in self.jobs.values()
            if job.state in states
            and (not manual or job.policy is None)
            and (policy is None or job.policy == policy)
            and (destination_region is None or job.destination_region == destination_region)
            and (retry_due_by is None or _due_by(job, retry_due_by))
        )

    def jobs_in_states(
        self,
        states: Collection[JobState],
        *,
        limit: int,
        after_id: int = 0,
        policy: str | None = None,
        unchanged_since: datetime | None = None,
        manual: bool = False,
    ) -> list[Job]:
        found = sorted(
            (
                job
                for job in self.jobs.values()
                if job.state in states
                and (job.id or 0) > after_id
                and (policy is None or job.policy == policy)
                and (not manual or job.policy is None)
                and (unchanged_since is None or _unchanged(job, unchanged_since))
            ),
            key=lambda job: job.id or 0,
        )
        return found[:limit]

    def submitted_bytes(self, *, policy: str, since: datetime) -> int:
        ids = {a.job_id for a in self.attempts if a.outcome == "accepted" and a.at >= since}
        return sum(
            job.bytes or 0 for job in self.jobs.values() if job.id in ids and job.policy == policy
        )


def _due_by(job: Job, moment: datetime) -> bool:
    return job.next_attempt_at is None or job.next_attempt_at <= moment


def _unchanged(job: Job, since: datetime) -> bool:
    return job.updated_at is None or job.updated_at <= since


def _attempt_of(attempt: Attempt, job: Job) -> Attempt:
    return Attempt(
        job_id=job.id or 0,
        at=attempt.at,
        outcome=attempt.outcome,
        error_code=attempt.error_code,
        error_message=attempt.error_message,
        request_id=attempt.request_id,
    )


Answer = Callable[[str], CloudError | None]  # backup id -> the POST's error, None: accepted


@dataclass
class FakeCloud:
    """The CBR calls a submission makes: ``show_backup`` and ``replicate_backup``. ``answer``
    decides each POST: None accepts it; an error is raised, after applying the replication
    when ``applied`` says so (an answer lost after the cloud acted)."""

    backups: dict[str, Backup]
    answer: Answer = lambda _backup_id: None
    applied: Callable[[str], bool] = lambda _backup_id: False
    posts: list[tuple[str, str]] = field(default_factory=list)
    on_post: Callable[[str], None] = lambda _backup_id: None
    _records: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def show_backup(self, region: str, project_id: str, backup_id: str) -> Backup:
        if backup_id not in self.backups:
            raise NotFoundError(f"no backup {backup_id}", code="BackupService.1008")
        return self.backups[backup_id]

    def replicate_backup(
        self,
        region: str,
        project_id: str,
        backup_id: str,
        destination: Destination,
        replica: ReplicaSpec,
    ) -> ReplicationAccepted:
        self.on_post(backup_id)
        self.posts.append((backup_id, destination.region))
        error = self.answer(backup_id)
        if error is None or self.applied(backup_id):
            record = f"rec-{next(self._records)}"
            backup = self.backups[backup_id]
            live = ReplicationRecord(
                id=record, status=RecordStatus.REPLICATING, destination_region=destination.region
            )
            self.backups[backup_id] = backup._replace(
                replication_records=(*backup.replication_records, live)
            )
            if error is None:
                return ReplicationAccepted(replication_record_id=record, request_id=None)
        assert error is not None
        raise error
