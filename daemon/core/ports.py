"""The two ports the services need: the cloud (CBR + IAM) and the ledger.

Services depend on these protocols only; ``adapters.cloud`` and ``adapters.ledger`` implement
them, and tests may implement them with in-memory fakes at the edge of a pure unit.
All datetimes crossing these ports are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from daemon.core.alerts import AlertChange, ReplicationWindow, StoredAlert
from daemon.core.model import (
    Attempt,
    Backup,
    BackupPage,
    Destination,
    Job,
    JobState,
    PageJobs,
    ReplicaSpec,
    ReplicationAccepted,
    SweepReport,
    Vault,
    VaultBinding,
    VaultReplicationAccepted,
)


class Cloud(Protocol):
    """What the engine needs from CBR and IAM. Errors are those of ``core.errors``."""

    def resolve_project(self, region: str, project: str | None = None) -> str:
        """Project id in ``region``: the default project (named like the region) when
        ``project`` is None, else the named project (name or id), which must exist there.
        Raises NotFoundError when it does not."""
        ...

    def replication_destinations(self, region: str, project_id: str) -> frozenset[str]:
        """Regions that backups of ``region`` may be replicated to (capability API)."""
        ...

    def find_vault(self, region: str, project_id: str, name_or_id: str) -> Vault:
        """The vault with that id or (unique) name. Raises NotFoundError."""
        ...

    def list_backup_pages(
        self, region: str, project_id: str, vault_id: str | None
    ) -> Iterator[BackupPage]:
        """The vault's backups (with ``vault_id`` None: the whole project's, every vault's)
        with their replication records, one page per API page (each backup built only when
        read)."""
        ...

    def show_backup(self, region: str, project_id: str, backup_id: str) -> Backup:
        """One backup with its replication records. Raises NotFoundError (6200)."""
        ...

    def replicate_backup(
        self,
        region: str,
        project_id: str,
        backup_id: str,
        destination: Destination,
        replica: ReplicaSpec,
    ) -> ReplicationAccepted:
        """POST .../backups/{id}/replicate. Never retried inside the adapter."""
        ...

    def replicate_vault(
        self,
        region: str,
        project_id: str,
        vault_id: str,
        destination: Destination,
        enable_acceleration: bool,
    ) -> VaultReplicationAccepted:
        """POST .../checkpoints/replicate. Never retried inside the adapter."""
        ...


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One attempt joined with its job, for ``history``."""

    at: datetime
    source_backup_id: str
    destination_region: str
    policy: str | None
    outcome: str
    error_code: str | None
    error_message: str | None
    request_id: str | None


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A process that used the ledger: who it is, when it was last seen, what it holds."""

    owner: str  # host:pid:start
    role: str  # daemon | run-once | command
    started_at: datetime
    last_seen_at: datetime
    leases: tuple[str, ...] = ()  # named leases still live (sweep:<policy>, ...)
    jobs_leased: int = 0


@dataclass(frozen=True, slots=True)
class TrafficEntry:
    """One finished replication as CBR bills it (the source backup's size), for reports."""

    policy: str | None  # None: a manual replication
    destination_region: str
    finished_at: datetime
    bytes: int


@dataclass(frozen=True, slots=True)
class Notification:
    """One alert change to send: its webhook body and its delivery so far."""

    event_id: str
    event: str
    subject: str
    policy: str
    payload: str  # the JSON document posted to the webhook
    created_at: datetime
    status: str = "pending"  # pending | delivered | dropped
    attempts: int = 0
    last_error: str | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one delivery round."""

    ok: bool
    tries: int
    status: int | None = None  # the last HTTP status, if any answer came
    error: str | None = None  # why it failed (never holds the secret or the URL's path)
    permanent: bool = False  # the receiver refused it (4xx): retrying will not help


class Notifier(Protocol):
    """Where operators' notifications go: webhook events and heartbeat pings. A failed
    delivery is an outcome (``Delivery``), never an exception: replication never waits on it."""

    def post_event(
        self,
        url: str,
        body: bytes,
        *,
        secret: str | None,
        timeout: float,
        event: str,
        delivery_id: str,
    ) -> Delivery:
        """POST one JSON event (signed with ``secret`` when there is one)."""
        ...

    def ping(self, url: str, *, timeout: float) -> Delivery:
        """Ping a heartbeat URL."""
        ...


class JobsLedger(Protocol):
    """The jobs: a page's jobs at once, decisions saved, intents written, claims and releases."""

    def get_jobs(self, destination_region: str, backup_ids: Collection[str]) -> dict[str, Job]:
        """Jobs for these backups to that region, keyed by source backup id (one query)."""
        ...

    def get_job(self, source_backup_id: str, destination_region: str) -> Job | None: ...

    def get_page_jobs(self, destination_region: str, backup_ids: Collection[str]) -> PageJobs:
        """The jobs a sweep needs for one page of backups (one transaction): in steady
        state nearly all are settled, and reading them whole cost most of a sweep's CPU."""
        ...

    def save_jobs(
        self, jobs: Sequence[Job], now: datetime, attempts: Sequence[Attempt] = ()
    ) -> list[Job]:
        """Insert or update jobs by (source backup id, destination region) and append
        attempts, in one transaction. Sets ``updated_at`` (and ``created_at`` on insert) to
        ``now``; returns the stored jobs with their ids. An attempt whose ``job_id`` is 0
        belongs to the job of the same position in ``jobs``."""
        ...

    def write_intents(self, jobs: Sequence[Job], now: datetime, *, owner: str) -> list[Job]:
        """Store these jobs (the intents written before their POSTs) where ``owner`` still
        holds the job's lease, in one transaction; return the stored ones. A job another
        process claimed meanwhile (the lease ran out) is left alone: that one posts it."""
        ...

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
        """Atomically lease up to ``limit`` due jobs: ``queued``; ``failed`` with
        ``next_attempt_at <= now``; ``submitting`` (an earlier attempt may have landed: the
        caller reconciles). Jobs leased by anyone until after ``now`` are skipped. Oldest
        ``next_attempt_at``/``created_at`` first. The state is not changed."""
        ...

    def claim_job(
        self,
        source_backup_id: str,
        destination_region: str,
        *,
        owner: str,
        now: datetime,
        lease_until: datetime,
    ) -> Job | None:
        """Lease one given job whatever its state, unless someone else holds its lease."""
        ...

    def release_jobs(self, owner: str) -> None:
        """Drop every job lease held by ``owner`` (clean exit)."""
        ...

    def count_jobs(
        self,
        states: Collection[JobState],
        *,
        policy: str | None = None,
        destination_region: str | None = None,
        retry_due_by: datetime | None = None,
        manual: bool = False,
    ) -> int:
        """Jobs in these states; with ``retry_due_by``, only those whose next attempt is
        unset or comes by then; with ``manual``, only the jobs of no policy."""
        ...

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
        """Jobs in these states with ``id > after_id``, by id (keyset paging); with
        ``unchanged_since``, only those last updated at or before it; with ``manual``, only
        the jobs of no policy."""
        ...


class BindingsLedger(Protocol):
    """The vault bindings, one for each (source vault, destination region), kept for good."""

    def get_binding(self, source_vault_id: str, destination_region: str) -> VaultBinding | None: ...

    def get_bindings(
        self, destination_region: str, source_vault_ids: Collection[str]
    ) -> dict[str, VaultBinding]:
        """The bindings of these vaults to the region, by source vault id (one read for a
        policy's vaults, not one per vault)."""
        ...

    def add_binding(self, binding: VaultBinding) -> VaultBinding:
        """Insert the binding unless one exists for (vault, region); return the stored row
        (the existing one when the unique constraint already held it)."""
        ...

    def add_bindings(self, bindings: Sequence[VaultBinding]) -> list[VaultBinding]:
        """``add_binding`` for many in one transaction (a policy's first sweep binds each of
        its vaults): the stored bindings in the same order."""
        ...

    def mark_binding_bound(self, source_vault_id: str, destination_region: str) -> None:
        """Turn an ``intent`` binding into ``bound`` after its POST was accepted."""
        ...

    def withdraw_binding_intent(self, source_vault_id: str, destination_region: str) -> None:
        """Delete an ``intent`` binding whose POST the cloud refused (so never applied);
        a ``bound`` one is never deleted."""
        ...

    def list_bindings(self) -> list[VaultBinding]: ...


class LeasesLedger(Protocol):
    """Policy leases (one sweeper per policy) and the instances sharing the ledger."""

    def acquire_lease(
        self,
        name: str,
        *,
        owner: str,
        now: datetime,
        until: datetime,
        holder_gone: Callable[[str], bool] | None = None,
    ) -> bool:
        """Take or renew the named lease; False when another owner holds it past ``now``,
        unless ``holder_gone(holder)`` says that owner is a process that no longer runs."""
        ...

    def release_lease(self, name: str, *, owner: str) -> None: ...

    def lease_holder(self, name: str, now: datetime) -> str | None:
        """Who holds the named lease past ``now``, if anyone."""
        ...

    def heartbeat(self, owner: str, *, role: str, now: datetime) -> None:
        """Record that ``owner`` is alive (several instances may share one ledger)."""
        ...

    def instances(self, now: datetime) -> list[InstanceInfo]:
        """Every instance seen, newest first, with the leases it holds at ``now``."""
        ...

    def forget_instance(self, owner: str) -> None:
        """``owner`` exits cleanly: it is no longer listed among the instances."""
        ...


class SweepsLedger(Protocol):
    """Sweeps and what is reported from the ledger (counts, traffic, history, the RPO window)."""

    def start_sweep(self, policy: str, now: datetime) -> int: ...

    def finish_sweep(self, sweep_id: int, report: SweepReport) -> None: ...

    def last_sweeps(self) -> dict[str, SweepReport]:
        """The newest finished sweep of every policy."""
        ...

    def job_counts(self) -> dict[tuple[str | None, JobState], int]:
        """Number of jobs per (policy, state)."""
        ...

    def traffic_bytes(self, *, policy: str | None = None, since: datetime | None = None) -> int:
        """Bytes of jobs that succeeded (finished) since ``since``, as CBR bills them; replicas
        adopted from the cloud were not made by us and do not count."""
        ...

    def submitted_bytes(self, *, policy: str, since: datetime) -> int:
        """Bytes of the policy's jobs whose replication the cloud accepted since ``since``
        (what the traffic budget counts: a replication costs its backup's size once)."""
        ...

    def oldest_pending_backup(self, policy: str) -> datetime | None:
        """Creation time of the oldest backup with a job not yet succeeded (RPO exposure)."""
        ...

    def history(
        self,
        *,
        source_backup_id: str | None = None,
        policy: str | None = None,
        limit: int = 50,
        manual: bool = False,
    ) -> list[HistoryEntry]:
        """Attempts, newest first; ``manual``: of the jobs of no policy (``policy`` is
        then ignored)."""
        ...

    def traffic_entries(self, *, since: datetime) -> list[TrafficEntry]:
        """Replications (not adopted replicas) that finished successfully since ``since``."""
        ...

    def replication_window(self, policy: str) -> ReplicationWindow:
        """Creation time of the policy's newest backup with a finished replica, and of the
        oldest newer one still without (a given-up job whose source is gone is no backup)."""
        ...

    def budget_deferral(self, policy: str, now: datetime) -> datetime | None:
        """Until when the policy's jobs deferred by its traffic budget wait (the latest
        ``next_attempt_at`` after ``now``), or None when none waits for it."""
        ...


class AlertsLedger(Protocol):
    """Alert states and the notification outbox."""

    def alert_states(self, policy: str) -> dict[str, StoredAlert]:
        """The recorded alert states of the policy's subjects, by subject."""
        ...

    def record_alerts(
        self, changes: Sequence[tuple[AlertChange, Notification | None]], now: datetime
    ) -> list[AlertChange]:
        """Apply each change whose ``previous`` state is still the recorded one (compare and
        set, so two processes never record one change twice) and queue its notification, in
        one transaction. Returns the changes applied."""
        ...

    def claim_notifications(
        self, *, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[Notification]:
        """Lease up to ``limit`` pending notifications that are due, oldest first."""
        ...

    def finish_notification(
        self,
        notification_id: int,
        *,
        now: datetime,
        status: str,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Count one delivery round: ``delivered``, ``dropped``, or ``pending`` again (due at
        ``next_attempt_at``); the lease is released."""
        ...

    def recent_notifications(self, *, limit: int = 20) -> list[Notification]:
        """The newest alert changes, newest first (``status``)."""
        ...


class Ledger(JobsLedger, BindingsLedger, LeasesLedger, SweepsLedger, AlertsLedger, Protocol):
    """Durable state: jobs, attempts, vault bindings, sweeps and leases; the roles above, each of
    which a part of the engine may ask for alone.

    Every method is one transaction. Writes that must survive a crash (the intent before a
    POST) are committed before the method returns.
    """

    def close(self) -> None: ...
