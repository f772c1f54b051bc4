"""Operator commands: ``replicate-backup``, ``replicate-vault`` and ``retry``.

Every rule is checked before the replicate call; a refusal raises ``RefusedError`` with its
reason code and nothing is sent. The ledger rows follow the same intent-then-POST protocol as
policy jobs, so a crash leaves something a later run reconciles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from daemon.core import naming, retrying, rules
from daemon.core.errors import (
    AmbiguousError,
    BusyError,
    NotFoundError,
    RefusedError,
    TransientError,
)
from daemon.core.jobs import Event, create
from daemon.core.model import (
    Attempt,
    Backup,
    Destination,
    Job,
    JobState,
    Origin,
    Reason,
    ReplicationRecord,
    Vault,
    VaultBinding,
)
from daemon.engine import submit
from daemon.engine.context import Engine, Target
from daemon.engine.resolve import project_in, vault_in
from daemon.engine.track import MANUAL_RETRY

log = structlog.get_logger("cbr_replicator")

MANUAL = "manual"
DEFAULT_DESCRIPTION = "Manual replica of {backup_name} ({backup_id}) from {source_region}"


@dataclass(frozen=True)
class ManualRequest:
    """Where an operator wants something replicated."""

    source_region: str
    destination_region: str
    destination_vault: str
    destination_project: str | None = None
    enable_acceleration: bool = False


@dataclass(frozen=True)
class ManualResult:
    """What a manual command did: the job (backup) or the records started (vault)."""

    message: str
    jobs: tuple[Job, ...] = ()


def resolve_destination(engine: Engine, request: ManualRequest) -> tuple[str, Destination]:
    """Source project and destination, with the capability and vault checks of policies."""
    cloud = engine.cloud
    source_project = project_in(engine, request.source_region, None)
    destinations = cloud.replication_destinations(request.source_region, source_project)
    refusal = rules.check_destination(
        destinations, request.destination_region, request.source_region
    )
    if refusal is not None:
        raise RefusedError(
            refusal,
            f"{request.source_region} cannot replicate to {request.destination_region}",
        )
    project_id = project_in(engine, request.destination_region, request.destination_project)
    vault = vault_in(engine, request.destination_region, project_id, request.destination_vault)
    if rules.check_destination_vault(vault.protect_type) is not None:
        raise RefusedError(
            Reason.DESTINATION_NOT_REPLICATION_VAULT,
            f"vault {vault.name} in {request.destination_region} is not a replication vault",
        )
    return source_project, Destination(request.destination_region, project_id, vault.id)


# -- replicate-backup ----------------------------------------------------------------------


def replicate_backup(
    engine: Engine,
    request: ManualRequest,
    backup_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
) -> ManualResult:
    if name is not None and not naming.valid_name(name):
        raise ValueError(f"--name {name!r}: use 1-64 letters, digits, '_' or '-'")
    if description is not None and not naming.valid_description(description):
        raise ValueError("--description: at most 255 characters, without '<' or '>'")
    source_project, destination = resolve_destination(engine, request)
    try:
        backup = engine.cloud.show_backup(request.source_region, source_project, backup_id)
    except NotFoundError:
        raise RefusedError(
            Reason.BACKUP_NOT_FOUND,
            f"no backup {backup_id!r} in {request.source_region}; check the id "
            "(cbr-replicator --run-once --dry-run lists them)",
        ) from None
    block = rules.manual_block(
        backup, destination.region, lambda record: _replica_exists(engine, destination, record)
    )
    if block is not None:
        raise RefusedError(block, _block_message(backup, destination.region, block))
    job = _manual_job(engine, backup, request, source_project, destination)
    target = _manual_target(request, source_project, destination, name, description)
    now = engine.now()
    claimed = engine.ledger.claim_job(
        job.source_backup_id,
        job.destination_region,
        owner=engine.owner,
        now=now,
        lease_until=now + engine.lease,
    )
    if claimed is None:
        raise RefusedError(
            Reason.REPLICATION_IN_PROGRESS,
            f"backup {backup_id} is being submitted by another process",
        )
    outcome, result = submit.submit_claimed(engine, target, claimed)
    return ManualResult(f"backup {backup_id} -> {destination.region}: {outcome}", (result,))


def _replica_exists(engine: Engine, destination: Destination, record: ReplicationRecord) -> bool:
    """A ``success`` record may be stale: the replica can have been deleted since. Look the
    replica up in the destination region (404 = gone, docs/design.md §2)."""
    if not record.destination_backup_id:
        return True  # cannot check: assume it exists (never risk a duplicate)
    project = record.destination_project_id or destination.project_id
    try:
        engine.cloud.show_backup(destination.region, project, record.destination_backup_id)
    except NotFoundError:
        return False
    return True


def _block_message(backup: Backup, region: str, reason: str) -> str:
    if reason in (Reason.REPLICA_EXISTS, Reason.REPLICATION_IN_PROGRESS):
        return f"backup {backup.id} ({backup.name}) already has a live replica in {region}"
    return f"backup {backup.id} ({backup.name}) cannot be replicated"


def _manual_job(
    engine: Engine,
    backup: Backup,
    request: ManualRequest,
    source_project: str,
    destination: Destination,
) -> Job:
    """A fresh manual job; an old row for the same pair (e.g. a success whose replica was
    deleted since) is reset, keeping its id and attempt history."""
    existing = engine.ledger.get_job(backup.id, destination.region)
    fresh = create(
        Event.MANUAL,
        JobState.QUEUED,
        source_backup_id=backup.id,
        destination_region=destination.region,
        origin=Origin.MANUAL,
        policy=existing.policy if existing else None,
        source_region=request.source_region,
        source_project_id=source_project,
        source_vault_id=backup.vault_id,
        destination_project_id=destination.project_id,
        destination_vault_id=destination.vault_id,
        backup_name=backup.name,
        backup_created_at=backup.created_at,
        bytes=backup.bytes,
        id=existing.id if existing else None,
    )
    if existing is not None and existing.state in (JobState.SUBMITTING, JobState.REPLICATING):
        return existing  # reconcile it rather than start over
    return engine.ledger.save_jobs([fresh], engine.now())[0]


def _manual_target(
    request: ManualRequest,
    source_project: str,
    destination: Destination,
    name: str | None,
    description: str | None,
) -> Target:
    return Target(
        policy=MANUAL,
        source_region=request.source_region,
        source_project_id=source_project,
        destination=destination,
        retry=MANUAL_RETRY,
        name_template=name or "{backup_name}",
        description_template=description if description is not None else DEFAULT_DESCRIPTION,
        enable_acceleration=request.enable_acceleration,
        max_in_flight=1,
    )


# -- replicate-vault -----------------------------------------------------------------------


def find_binding(engine: Engine, region: str, vault: str) -> VaultBinding | None:
    """A binding of VAULT (an id, or a name recorded with the binding) to ``region``, from
    the ledger alone: a repeated request is refused before any API call."""
    for binding in engine.ledger.list_bindings():
        if binding.destination_region == region and vault in (
            binding.source_vault_id,
            binding.source_vault_name,
        ):
            return binding
    return None


def refuse_bound(vault: str, binding: VaultBinding) -> RefusedError:
    return RefusedError(
        Reason.VAULT_ALREADY_REPLICATED,
        f"vault {vault} was replicated to {binding.destination_region} on "
        f"{binding.created_at:%Y-%m-%d %H:%M}Z by {binding.origin} (vault "
        f"{binding.destination_vault_id}); a vault goes to a region once only",
    )


def replicate_vault(engine: Engine, request: ManualRequest, vault_name: str) -> ManualResult:
    region = request.destination_region
    earlier = find_binding(engine, region, vault_name)
    if earlier is not None:
        raise refuse_bound(vault_name, earlier)
    source_project, destination = resolve_destination(engine, request)
    vault = vault_in(engine, request.source_region, source_project, vault_name)
    if rules.check_source_vault(vault.protect_type) is not None:
        raise RefusedError(
            Reason.SOURCE_IS_REPLICATION_VAULT,
            f"vault {vault.name} is a replication vault; replicas are never replicated again",
        )
    intent = VaultBinding(
        source_vault_id=vault.id,
        destination_region=region,
        destination_project_id=destination.project_id,
        destination_vault_id=destination.vault_id,
        origin=MANUAL,
        created_at=engine.now(),
        source_region=request.source_region,
        state="intent",
        source_vault_name=vault.name,
    )
    stored = engine.ledger.add_binding(intent)
    if stored.created_at != intent.created_at or stored.origin != MANUAL:
        raise refuse_bound(vault.name, stored)
    try:
        accepted = engine.cloud.replicate_vault(
            request.source_region,
            source_project,
            vault.id,
            destination,
            request.enable_acceleration,
        )
    except BusyError as error:
        # 6130 "the vault is being replicated, try again later": refused, so not applied.
        # Our binding stays the only once-only authority: the intent goes, a retry may post.
        engine.ledger.withdraw_binding_intent(vault.id, region)
        raise TransientError(
            f"vault {vault.name} is being replicated ({error.code}); try again later",
            code=error.code,
            status=error.status,
            request_id=error.request_id,
        ) from None
    except (AmbiguousError, TransientError) as error:
        log.warning("vault_replicate_uncertain", vault=vault.name, region=region, error=str(error))
        raise
    engine.ledger.mark_binding_bound(vault.id, region)
    jobs = _vault_jobs(
        engine,
        request,
        source_project,
        destination,
        vault,
        records=accepted.records,
        request_id=accepted.request_id,
    )
    return ManualResult(
        f"vault {vault.name} -> {region}: {len(accepted.records)} backup(s) started", jobs
    )


def _vault_jobs(
    engine: Engine,
    request: ManualRequest,
    source_project: str,
    destination: Destination,
    vault: Vault,
    *,
    records: Mapping[str, str],
    request_id: str | None = None,
) -> tuple[Job, ...]:
    started = dict(records)
    jobs = [
        create(
            Event.MANUAL,
            JobState.REPLICATING,
            source_backup_id=backup_id,
            destination_region=destination.region,
            origin=Origin.MANUAL,
            policy=None,
            source_region=request.source_region,
            source_project_id=source_project,
            source_vault_id=vault.id,
            destination_project_id=destination.project_id,
            destination_vault_id=destination.vault_id,
            replication_record_id=record_id,
            attempts=1,
        )
        for backup_id, record_id in started.items()
        if engine.ledger.get_job(backup_id, destination.region) is None
    ]
    if not jobs:
        return ()
    now = engine.now()
    # One "accepted" attempt per backup the vault call started, as for a backup's POST: the
    # jobs are in ``history`` and their tracked outcomes follow them there.
    attempts = [Attempt(job_id=0, at=now, outcome="accepted", request_id=request_id)] * len(jobs)
    return tuple(engine.ledger.save_jobs(jobs, now, attempts))


# -- retry ---------------------------------------------------------------------------------


_STATE_PHRASES = {
    JobState.QUEUED: "is already queued for the next run",
    JobState.SUBMITTING: "is being submitted",
    JobState.REPLICATING: "is still replicating",
    JobState.SUCCEEDED: "has already been replicated",
}


def retry_job(engine: Engine, backup_id: str, region: str) -> Job:
    job = engine.ledger.get_job(backup_id, region)
    if job is None:
        raise LookupError(f"no job for backup {backup_id} to {region}")
    if job.state not in (JobState.GIVEN_UP, JobState.FAILED):
        raise LookupError(
            f"backup {backup_id} to {region} {_STATE_PHRASES[job.state]}; "
            "only failed or given-up jobs are retried"
        )
    return engine.ledger.save_jobs([retrying.requeue(job)], engine.now())[0]
