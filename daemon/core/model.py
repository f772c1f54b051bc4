"""Frozen value types shared by every layer. No I/O, no clock.

Slotted dataclasses and named tuples rather than pydantic models: a sweep builds a ``Backup``
for every listed backup it must decide, and their construction cost is part of the per-backup
budget. ``BackupPage`` builds them only when read.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, overload

GIB = 2**30

ECS_RESOURCE_TYPE = "OS::Nova::Server"
REPLICA_IMAGE_TYPE = "replication"


class Reason(StrEnum):
    """Stable reason codes (docs/design.md §2), used in decisions, logs, the ledger and metrics."""

    # per backup
    ELIGIBLE = "eligible"
    RETRY_AFTER_FAILURE = "retry_after_failure"
    NOT_SERVER_BACKUP = "not_server_backup"
    NO_SYSTEM_DISK = "no_system_disk"
    NOT_AVAILABLE = "not_available"
    IS_REPLICA = "is_replica"
    REPLICA_EXISTS = "replica_exists"
    REPLICATION_IN_PROGRESS = "replication_in_progress"
    ALREADY_REPLICATED = "already_replicated"
    BACKING_OFF = "backing_off"
    GIVEN_UP = "given_up"
    TRAFFIC_BUDGET_EXHAUSTED = "traffic_budget_exhausted"
    # per policy or request
    SOURCE_IS_REPLICATION_VAULT = "source_is_replication_vault"
    DESTINATION_NOT_REPLICATION_VAULT = "destination_not_replication_vault"
    REGION_NOT_SUPPORTED = "region_not_supported"
    PROJECT_NOT_FOUND = "project_not_found"
    VAULT_NOT_FOUND = "vault_not_found"
    BACKUP_NOT_FOUND = "backup_not_found"
    VAULT_ALREADY_REPLICATED = "vault_already_replicated"


class JobState(StrEnum):
    """States of a ledger job (docs/design.md §5)."""

    QUEUED = "queued"
    SUBMITTING = "submitting"
    REPLICATING = "replicating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    GIVEN_UP = "given_up"


IN_FLIGHT_STATES = frozenset({JobState.SUBMITTING, JobState.REPLICATING})
TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.GIVEN_UP})


class Origin(StrEnum):
    """Who created a job."""

    POLICY = "policy"
    MANUAL = "manual"
    ADOPTED = "adopted"


class RecordStatus(StrEnum):
    """Status of a cloud replication record (docs/design.md §16)."""

    WAITING = "waiting_replicate"
    REPLICATING = "replicating"
    SUCCESS = "success"
    FAIL = "fail"
    SKIP = "skip"


LIVE_RECORD_STATUSES = frozenset(
    {RecordStatus.WAITING, RecordStatus.REPLICATING, RecordStatus.SUCCESS}
)


# The two types a listing makes one of per backup are named tuples, immutable like the other
# models: a frozen dataclass took 3-4 us to build (a setattr per field), a third of a steady
# sweep's parsing.
class ReplicationRecord(NamedTuple):
    """One replication of a backup to a destination, as the source region reports it."""

    id: str
    status: str
    destination_region: str | None = None
    destination_project_id: str | None = None
    destination_vault_id: str | None = None
    destination_backup_id: str | None = None
    created_at: datetime | None = None
    fail_code: str | None = None
    fail_reason: str | None = None
    progress: int | None = None

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_RECORD_STATUSES


class Backup(NamedTuple):
    """A backup as listed in its region (only the fields the rules and the ledger need)."""

    id: str
    name: str
    vault_id: str
    resource_type: str
    image_type: str
    status: str
    resource_size_gb: int = 0
    contain_system_disk: bool | None = None
    children_bootable: tuple[bool | None, ...] = ()
    created_at: datetime | None = None
    replication_records: tuple[ReplicationRecord, ...] = ()

    @property
    def bytes(self) -> int:
        """Replication traffic equals the backup's size (the seed); CBR reports GB."""
        return self.resource_size_gb * GIB


class BackupPage(Sequence[Backup]):
    """One page of a listing (a vault's or a project's). Its backup ids are at hand; each
    ``Backup`` is built the first time it is read. A steady sweep reads only the ids of the
    backups its ledger has settled (most of them), so it builds no model for them."""

    __slots__ = ("_build", "_built", "_items", "ids")

    def __init__(self, ids: Sequence[str], items: Sequence[Any], build: Callable[[Any], Backup]):
        self.ids = ids
        self._items = items
        self._build = build
        self._built: list[Backup | None] = [None] * len(ids)

    @classmethod
    def of(cls, backups: Iterable[Backup]) -> BackupPage:
        """A page of backups already built (the checked parse, and fakes in tests)."""
        items = list(backups)
        return cls([backup.id for backup in items], items, _itself)

    def without(self, ids: Collection[str]) -> BackupPage:
        """This page less the backups with those ids, still unbuilt."""
        if not ids:
            return self
        kept = [index for index, backup_id in enumerate(self.ids) if backup_id not in ids]
        return self._subset(kept)

    def by_vault(self) -> dict[str, BackupPage]:
        """This page's backups grouped by their vault, in listing order, still unbuilt (a
        listing of a whole project, split among the vaults of a policy). The raw items and
        built backups both carry ``vault_id``."""
        indexes: dict[str, list[int]] = {}
        for index, item in enumerate(self._items):
            indexes.setdefault(item.vault_id, []).append(index)
        return {vault_id: self._subset(kept) for vault_id, kept in indexes.items()}

    def _subset(self, indexes: list[int]) -> BackupPage:
        return BackupPage(
            [self.ids[index] for index in indexes],
            [self._items[index] for index in indexes],
            self._build,
        )

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Backup: ...
    @overload
    def __getitem__(self, index: slice) -> list[Backup]: ...
    def __getitem__(self, index: int | slice) -> Backup | list[Backup]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        backup = self._built[index]
        if backup is None:
            backup = self._built[index] = self._build(self._items[index])
        return backup

    def __iter__(self) -> Iterator[Backup]:
        for index in range(len(self.ids)):
            yield self[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BackupPage | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable cache, compared by content

    def __repr__(self) -> str:
        return f"BackupPage({list(self)!r})"


def _itself(backup: Backup) -> Backup:
    return backup


@dataclass(frozen=True, slots=True)
class Vault:
    """A CBR vault. The API has no region field; the adapter fills it from the endpoint."""

    id: str
    name: str
    region: str
    project_id: str
    protect_type: str
    object_type: str | None = None

    @property
    def is_replication_vault(self) -> bool:
        return self.protect_type == "replication"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where replicas of one policy (or one manual request) go."""

    region: str
    project_id: str
    vault_id: str


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """The body of one replicate call, beyond the destination."""

    name: str
    description: str
    enable_acceleration: bool = False


@dataclass(frozen=True, slots=True)
class ReplicationAccepted:
    """The cloud's answer to a backup replicate call."""

    replication_record_id: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class VaultReplicationAccepted:
    """The cloud's answer to a vault replicate call: one record per backup it started."""

    records: Mapping[str, str]  # source backup id -> replication record id
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """The ledger's row for one (source backup, destination region) pair."""

    source_backup_id: str
    destination_region: str
    state: JobState
    origin: Origin
    policy: str | None
    source_region: str
    source_project_id: str
    source_vault_id: str
    destination_project_id: str
    destination_vault_id: str
    backup_name: str = ""
    backup_created_at: datetime | None = None
    bytes: int = 0
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error_code: str | None = None
    last_error: str | None = None
    replication_record_id: str | None = None
    replica_backup_id: str | None = None
    replica_name: str | None = None
    replica_description: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    id: int | None = None

    def evolve(self, **changes: object) -> Job:
        """A copy with some fields changed (jobs are values; the ledger stores them).

        Not ``dataclasses.replace``: a job is copied several times on its way from the
        listing to the ledger (queued, claimed, submitting, submitted), and replace's generic
        pass over 26 fields and the frozen ``__init__`` took 10-13 us a copy, about a tenth of
        a catch-up sweep's ledger work. The slots are copied through their own
        descriptors instead (the frozen ``__setattr__`` is for callers, not for this copy)."""
        copy = object.__new__(Job)
        for store, value in zip(_JOB_SLOT_SETTERS, _job_fields(self), strict=True):
            store(copy, value)
        for name, value in changes.items():
            slot = _JOB_SLOTS.get(name)
            if slot is None:
                raise TypeError(f"Job has no field {name!r}")
            slot.__set__(copy, value)
        return copy

    @property
    def key(self) -> tuple[str, str]:
        return (self.source_backup_id, self.destination_region)


_JOB_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(Job))
_JOB_SLOTS: dict[str, Any] = {name: Job.__dict__[name] for name in _JOB_FIELD_NAMES}
_JOB_SLOT_SETTERS = tuple(_JOB_SLOTS[name].__set__ for name in _JOB_FIELD_NAMES)
_job_fields = operator.attrgetter(*_JOB_FIELD_NAMES)


@dataclass(frozen=True, slots=True)
class PageJobs:
    """The ledger's jobs for one listing page: the settled ones (succeeded, given up) by
    state alone, which is all a sweep needs of them, and the others whole."""

    open: dict[str, Job]
    settled: dict[str, JobState]

    def __len__(self) -> int:
        return len(self.open) + len(self.settled)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One API submission of a job, kept for ``history``."""

    job_id: int
    at: datetime
    outcome: str
    error_code: str | None = None
    error_message: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class VaultBinding:
    """Once-only row: source vault V was replicated to destination region R (never removed)."""

    source_vault_id: str
    destination_region: str
    destination_project_id: str
    destination_vault_id: str
    origin: str  # "policy:<name>" or "manual"
    created_at: datetime
    source_region: str = ""
    state: str = "bound"  # "intent" while a manual vault replication POST is outstanding
    source_vault_name: str = ""  # lets a repeated request by name be refused offline


class Action(StrEnum):
    """What a sweep does with one backup."""

    ENQUEUE = "enqueue"  # new job or failed job whose backoff passed: submit it
    ADOPT = "adopt"  # the cloud already has a live replica: record it, never submit
    TRACK = "track"  # a job in flight: update it from the cloud's record
    SKIP = "skip"  # nothing to do (ineligible, done, backing off, given up)


class Decision(NamedTuple):  # one per backup listed: a named tuple, like Backup
    """The rules' verdict on one backup for one destination region."""

    backup_id: str
    action: Action
    reason: Reason
    record: ReplicationRecord | None = None
    detail: str = ""


# The error_reason of a sweep skipped because another process holds the policy's lease: the
# policy is being swept, by the other process; nothing failed.
LEASED = "leased"


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep of one policy saw and did."""

    policy: str
    started_at: datetime
    finished_at: datetime | None = None
    backups_seen: int = 0
    reasons: Mapping[str, int] = field(default_factory=dict)
    enqueued: int = 0
    adopted: int = 0
    submitted: int = 0
    error: str | None = None
    error_reason: str | None = None
