"""``replicate-backup``, ``replicate-vault`` and ``retry`` against the emulator."""

from __future__ import annotations

from collections.abc import Callable

from tests.engine.harness import Deployment, policy
from tests.engine.test_run_once import WEB_SOUTH, backup_ids


def test_manual_backup_replication_refused_while_replica_exists_then_allowed(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB_SOUTH])
    backup = backup_ids(deployment)["web-done"]
    args = ("replicate-backup", backup, "--to-region", "cn-south-1", "--to-vault", "web-dr")
    refused = deployment.cli(*args)
    assert refused.returncode == 3, refused.stderr
    assert "replica_exists" in refused.stderr
    assert deployment.replicate_calls() == []
    deployment.emulator.delete_backup(backup_ids(deployment)["web-done-copy"])
    allowed = deployment.cli(*args)
    assert allowed.returncode == 0, allowed.stderr
    assert len(deployment.replicate_calls()) == 1


def test_manual_backup_replication_of_a_replica_is_refused(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB_SOUTH])
    replica = backup_ids(deployment)["web-replica"]
    result = deployment.cli(
        "replicate-backup", replica, "--to-region", "cn-south-1", "--to-vault", "web-dr"
    )
    assert result.returncode == 3
    assert "is_replica" in result.stderr
    assert deployment.replicate_calls() == []


def test_vault_is_replicated_to_a_region_once_only(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy([WEB_SOUTH])
    args = ("replicate-vault", "db-prod", "--to-region", "ap-southeast-1", "--to-vault", "apac-dr")
    first = deployment.cli(*args)
    assert first.returncode == 0, first.stderr
    assert len(deployment.emulator.requests("replicate_vault")) == 1
    seen = len(deployment.emulator.requests())
    again = deployment.cli(*args)
    assert again.returncode == 3
    assert "vault_already_replicated" in again.stderr
    assert "manual" in again.stderr
    assert len(deployment.emulator.requests()) == seen, "refused before any API call"


def test_vault_bound_by_a_policy_cannot_be_replicated_manually(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB_SOUTH])
    assert deployment.cli("--run-once").returncode == 0
    seen = len(deployment.emulator.requests())
    result = deployment.cli(
        "replicate-vault", "web-prod", "--to-region", "cn-south-1", "--to-vault", "web-dr"
    )
    assert result.returncode == 3
    assert "vault_already_replicated" in result.stderr
    assert "policy:web-south" in result.stderr
    assert len(deployment.emulator.requests()) == seen


def test_policy_whose_destination_differs_from_a_manual_binding_is_refused(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([policy("db-apac", ["db-prod"], "ap-southeast-1", "apac-dr")])
    manual = deployment.cli(
        "replicate-vault", "db-prod", "--to-region", "cn-south-1", "--to-vault", "web-dr"
    )
    assert manual.returncode == 0, manual.stderr
    # Same region as the manual binding but another vault: refused at the sweep.
    moved = policy("db-apac", ["db-prod"], "cn-south-1", "ops-dr")
    moved["destination"]["project"] = "cn-south-1_ops"
    deployment.rewrite([moved])
    before = len(deployment.replicate_calls())
    result = deployment.cli("--run-once")
    assert result.returncode == 1
    assert "vault_already_replicated" in result.stderr
    assert len(deployment.replicate_calls()) == before
