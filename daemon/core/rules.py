"""The seed's replication rules as pure functions (docs/design.md §2 and §5).

Every function takes the facts (a listed backup with its replication records, what the ledger
knows, the time) and returns a verdict with a stable reason code. Nothing here reads a clock,
the network or the ledger, so the rules are tested with plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from daemon.core.model import (
    ECS_RESOURCE_TYPE,
    REPLICA_IMAGE_TYPE,
    TERMINAL_STATES,
    Action,
    Backup,
    Decision,
    Job,
    JobState,
    Reason,
    RecordStatus,
    ReplicationRecord,
)

AVAILABLE = "available"
REPLICATION_PROTECT_TYPE = "replication"
IN_PROGRESS_STATUSES = frozenset({RecordStatus.WAITING, RecordStatus.REPLICATING})

# -- eligibility ---------------------------------------------------------------------------


def has_system_disk(backup: Backup) -> bool:
    """The seed: a backup must contain system-disk data.

    ``contain_system_disk`` is authoritative when the API reports it; older backups lack the
    field, and then a bootable child (a system disk) is the only evidence we have.
    """
    if backup.contain_system_disk is not None:
        return backup.contain_system_disk
    return any(bootable is True for bootable in backup.children_bootable)


def eligibility(backup: Backup) -> Reason:
    """ELIGIBLE, or the first rule the backup breaks (replica, not ECS, no system disk, state).

    ``is_replica`` comes first: a replica is never replicated whatever else holds for it.
    """
    if backup.image_type == REPLICA_IMAGE_TYPE:
        return Reason.IS_REPLICA
    if backup.resource_type != ECS_RESOURCE_TYPE:
        return Reason.NOT_SERVER_BACKUP
    if not has_system_disk(backup):
        return Reason.NO_SYSTEM_DISK
    if backup.status != AVAILABLE:
        return Reason.NOT_AVAILABLE
    return Reason.ELIGIBLE


# -- replication records -------------------------------------------------------------------


def _newest_first_key(record: ReplicationRecord) -> tuple[bool, float]:
    # Records without a creation time sort last; sorted() is stable, so ties keep the
    # listing's order and the result is the same for the same listing.
    if record.created_at is None:
        return (True, 0.0)
    return (False, -record.created_at.timestamp())


def records_to(backup: Backup, region: str) -> tuple[ReplicationRecord, ...]:
    """The backup's replication records to ``region``, newest first (undated ones last)."""
    matching = [r for r in backup.replication_records if r.destination_region == region]
    return tuple(sorted(matching, key=_newest_first_key))


def live_record(backup: Backup, region: str) -> ReplicationRecord | None:
    """The newest live record (success, replicating, waiting) to ``region``, if any.

    At most one should exist (one replica per backup and region); if the cloud ever shows
    more, the newest is the one a replication in progress or a retry would have made.
    """
    return next((r for r in records_to(backup, region) if r.is_live), None)


def _record_by_id(backup: Backup, record_id: str | None) -> ReplicationRecord | None:
    if record_id is None:
        return None
    return next((r for r in backup.replication_records if r.id == record_id), None)


# -- per-backup decision -------------------------------------------------------------------


def _verdict(
    backup: Backup, action: Action, reason: Reason, record: ReplicationRecord | None = None
) -> Decision:
    return Decision(backup_id=backup.id, action=action, reason=reason, record=record)


def _adopt(backup: Backup, record: ReplicationRecord) -> Decision:
    reason = (
        Reason.REPLICA_EXISTS
        if record.status == RecordStatus.SUCCESS
        else Reason.REPLICATION_IN_PROGRESS
    )
    return _verdict(backup, Action.ADOPT, reason, record)


def _decide_new(backup: Backup, region: str) -> Decision:
    """No ledger job: a policy replicates backups never replicated or whose replication failed."""
    reason = eligibility(backup)
    if reason != Reason.ELIGIBLE:
        return _verdict(backup, Action.SKIP, reason)
    record = live_record(backup, region)
    if record is not None:
        return _adopt(backup, record)
    if records_to(backup, region):  # only fail/skip records: earlier attempts failed
        return _verdict(backup, Action.ENQUEUE, Reason.RETRY_AFTER_FAILURE)
    return _verdict(backup, Action.ENQUEUE, Reason.ELIGIBLE)


def _decide_waiting(backup: Backup, region: str, job: Job, now: datetime) -> Decision:
    """A queued or failed job: adopt what the cloud shows, else submit when due and eligible."""
    record = live_record(backup, region)
    if record is not None:
        # Facts first: the cloud already has (or is making) the replica, whoever asked for it.
        return _adopt(backup, record)
    reason = eligibility(backup)
    if reason != Reason.ELIGIBLE:
        # Re-checked every sweep: a backup that went unavailable waits, and comes back later.
        return _verdict(backup, Action.SKIP, reason)
    if job.state == JobState.QUEUED:
        if job.next_attempt_at is not None and job.next_attempt_at > now:
            # Deferred by the submitter (today's traffic budget is spent); it stays queued.
            budget = job.last_error_code == Reason.TRAFFIC_BUDGET_EXHAUSTED
            reason = Reason.TRAFFIC_BUDGET_EXHAUSTED if budget else Reason.BACKING_OFF
            return _verdict(backup, Action.SKIP, reason)
        return _verdict(backup, Action.ENQUEUE, Reason.ELIGIBLE)
    if job.next_attempt_at is None or job.next_attempt_at <= now:
        return _verdict(backup, Action.ENQUEUE, Reason.RETRY_AFTER_FAILURE)
    return _verdict(backup, Action.SKIP, Reason.BACKING_OFF)


def _decide_submitting(backup: Backup, region: str) -> Decision:
    """A POST may be outstanding: a live record proves it landed; otherwise the submitter
    reconciles (never the sweep, which must not race it into a second POST)."""
    record = live_record(backup, region)
    if record is not None:
        return _verdict(backup, Action.TRACK, Reason.REPLICATION_IN_PROGRESS, record)
    return _verdict(backup, Action.SKIP, Reason.REPLICATION_IN_PROGRESS)


def _decide_replicating(backup: Backup, region: str, job: Job) -> Decision:
    """Follow the job's own record; fall back to the newest record to that region (any status,
    so that a fail/skip record moves the job to failed)."""
    region_records = records_to(backup, region)
    record = _record_by_id(backup, job.replication_record_id) or next(iter(region_records), None)
    if record is not None:
        return _verdict(backup, Action.TRACK, Reason.REPLICATION_IN_PROGRESS, record)
    return _verdict(backup, Action.SKIP, Reason.REPLICATION_IN_PROGRESS)


def decide(backup: Backup, destination_region: str, job: Job | None, now: datetime) -> Decision:
    """What a policy sweep does with ``backup`` for ``destination_region`` (docs/design.md §2, §5).

    Deterministic: the same facts always give the same decision, so a repeated sweep is
    idempotent. Never ENQUEUE for a replica or while a live record to the region exists.
    """
    if job is None:
        return _decide_new(backup, destination_region)
    if job.state in TERMINAL_STATES:
        return decide_settled(backup, job.state)
    if job.state == JobState.SUBMITTING:
        return _decide_submitting(backup, destination_region)
    if job.state == JobState.REPLICATING:
        return _decide_replicating(backup, destination_region, job)
    return _decide_waiting(backup, destination_region, job, now)


def decide_settled(backup: Backup, state: JobState) -> Decision:
    """The decision for a backup whose job is settled (succeeded or given up): it depends on
    the state alone, so a sweep reads no more of such a job, nor of the backup."""
    return _verdict(backup, Action.SKIP, settled_reason(state))


def settled_reason(state: JobState) -> Reason:
    """Why a backup with a settled job is skipped (the action is always SKIP)."""
    if state == JobState.SUCCEEDED:
        # A replica deleted after success is not re-replicated by a policy: it *was* replicated.
        return Reason.ALREADY_REPLICATED
    if state == JobState.GIVEN_UP:
        return Reason.GIVEN_UP  # waits for the operator's retry
    raise ValueError(f"{state.value} is not a settled state")


# -- per-policy and per-request checks -----------------------------------------------------


def check_destination(
    capabilities: frozenset[str], destination_region: str, source_region: str
) -> Reason | None:
    """REGION_NOT_SUPPORTED unless the source region's capabilities list the destination.

    Replicating into the source region itself is refused too: the seed's replication is
    cross-region only.
    """
    if destination_region == source_region or destination_region not in capabilities:
        return Reason.REGION_NOT_SUPPORTED
    return None


def check_source_vault(protect_type: str) -> Reason | None:
    """SOURCE_IS_REPLICATION_VAULT for a replication vault: replicas are never replicated.

    The vault's object type is not refused on: a vault of disks or files has no server
    backups, and each of its backups is skipped as ``not_server_backup`` where it is seen.
    """
    if protect_type == REPLICATION_PROTECT_TYPE:
        return Reason.SOURCE_IS_REPLICATION_VAULT
    return None


def check_destination_vault(protect_type: str) -> Reason | None:
    """DESTINATION_NOT_REPLICATION_VAULT unless replicas can be stored in that vault."""
    if protect_type != REPLICATION_PROTECT_TYPE:
        return Reason.DESTINATION_NOT_REPLICATION_VAULT
    return None


def manual_block(
    backup: Backup, region: str, replica_exists: Callable[[ReplicationRecord], bool]
) -> Reason | None:
    """Why ``replicate-backup`` must refuse, or None when it may submit.

    The seed lets a backup be replicated again by hand once its replica was deleted: a
    ``success`` record blocks only while ``replica_exists`` (a look-up in the destination
    region) says the replica is still there. Records in progress are checked first because
    they need no look-up.
    """
    reason = eligibility(backup)
    if reason != Reason.ELIGIBLE:
        return reason
    records = records_to(backup, region)
    if any(r.status in IN_PROGRESS_STATUSES for r in records):
        return Reason.REPLICATION_IN_PROGRESS
    successes = (r for r in records if r.status == RecordStatus.SUCCESS)
    if any(replica_exists(r) for r in successes):
        return Reason.REPLICA_EXISTS
    return None
