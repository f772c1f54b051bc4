"""A policy's vault bindings: the once-only (source vault, destination region) rows it made
or continues; a vault bound elsewhere stops the policy before any call.
"""

from __future__ import annotations

from daemon.core.errors import RefusedError
from daemon.core.model import Reason, VaultBinding
from daemon.engine.context import Engine
from daemon.engine.resolve import ResolvedPolicy

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
