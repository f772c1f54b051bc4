"""Resolving a policy against the cloud: the source vaults, the destination project and
vault, the regions the source can replicate to; every refusal a policy's names can meet.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from daemon.core import retrying, rules
from daemon.core.errors import NotFoundError, RefusedError
from daemon.core.model import Destination, Reason, Vault
from daemon.core.policy import Policy
from daemon.engine.context import Engine, Target


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
        source_project = project_in(engine, source_region, None)
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
    project_id = project_in(engine, region, policy.destination.project)
    vault = vault_in(engine, region, project_id, policy.destination.vault, policy)
    refusal = rules.check_destination_vault(vault.protect_type)
    if refusal is not None:
        raise RefusedError(
            refusal,
            f"policy {policy.name}: destination vault {vault.name} in {region} is not a "
            f"replication vault (protect_type {vault.protect_type})",
        )
    return project_id, vault


def project_in(engine: Engine, region: str, project: str | None) -> str:
    """The project id (the region's default when ``project`` is None); refused when unknown.
    Policies and manual commands resolve through here, so both refuse alike."""
    try:
        return engine.cloud.resolve_project(region, project)
    except NotFoundError as error:
        raise RefusedError(Reason.PROJECT_NOT_FOUND, str(error)) from None


def vault_in(
    engine: Engine, region: str, project_id: str, name_or_id: str, policy: Policy | None = None
) -> Vault:
    """The vault by name or id; refused when not found (the message names the policy when
    there is one)."""
    try:
        return engine.cloud.find_vault(region, project_id, name_or_id)
    except NotFoundError:
        whose = f"policy {policy.name}: " if policy is not None else ""
        raise RefusedError(
            Reason.VAULT_NOT_FOUND, f"{whose}vault {name_or_id!r} not found in {region}"
        ) from None


def _source_vault(engine: Engine, policy: Policy, project_id: str, name_or_id: str) -> Vault:
    vault = vault_in(engine, policy.source.region, project_id, name_or_id, policy)
    refusal = rules.check_source_vault(vault.protect_type)
    if refusal is not None:
        raise RefusedError(
            refusal,
            f"policy {policy.name}: source vault {vault.name} is a replication vault; "
            "replicas are never replicated again",
        )
    return vault
