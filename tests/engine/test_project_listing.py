"""``source.listing: project`` (issue 7): one listing of the whole source project, split among
the policy's vaults, instead of one listing per vault. Through the CLI, the SDK and the
emulator, on both ledgers: it decides every backup as the per-vault listings do, never touches
the backups of vaults outside the policy, pages through a project of more than 1,000 backups,
and a listing that fails leaves the policy's vaults for the next sweep with the error
reported."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.engine.harness import Deployment, policy, rules_scenario, server_backup
from tests.engine.test_run_once import replicated_names

VAULTS = ["web-prod", "db-prod"]
ELIGIBLE = [
    "web-ok-1",
    "web-ok-child",
    "web name with spaces & <odd> chars",
    "web-failed",
    "db-1",
    "db-2",
]


def by_project(name: str = "web-south") -> dict[str, Any]:
    document = policy(name, VAULTS, "cn-south-1", "web-dr")
    document["source"]["listing"] = "project"
    return document


def with_outsider(scenario: dict[str, Any]) -> dict[str, Any]:
    """A vault in the same project that no policy names, holding an eligible backup."""
    vaults = scenario["regions"]["cn-north-4"]["vaults"]
    vaults.append({"name": "not-ours", "backups": [server_backup("outsider-1")]})
    return scenario


def decisions(deployment: Deployment) -> list[tuple[str, str, str]]:
    code, report = deployment.cli_json("--run-once", "--dry-run")
    assert code == 0, report
    return sorted((row["vault"], row["backup_name"], row["reason"]) for row in report["decisions"])


def listing_params(deployment: Deployment) -> list[dict[str, list[str]]]:
    return [call["params"] for call in deployment.emulator.requests("list_backups")]


def test_a_project_listing_decides_every_backup_as_the_vault_listings_do(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([policy("web-south", VAULTS, "cn-south-1", "web-dr")])
    deployment.emulator.set_faults({})
    per_vault = decisions(deployment)
    assert sorted(params["vault_id"][0] for params in listing_params(deployment)) == sorted(
        deployment.emulator.vault_id("cn-north-4", vault) for vault in VAULTS
    )
    deployment.emulator.clear_requests()
    deployment.rewrite([by_project()])

    per_project = decisions(deployment)

    assert per_project == per_vault
    assert {vault for vault, _, _ in per_project} == set(VAULTS)
    assert len(per_project) == 12  # the ten of web-prod (docs/design.md §2) and db-1, db-2
    # one call for both vaults, without a vault filter, with the replication records
    [params] = listing_params(deployment)
    assert "vault_id" not in params
    assert params["show_replication"] == ["true"]


def test_a_project_listing_replicates_the_policys_eligible_backups_only(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([by_project()], scenario=with_outsider(rules_scenario()))

    result = deployment.cli("--run-once")

    assert result.returncode == 0, result.stderr
    assert replicated_names(deployment) == Counter(ELIGIBLE)
    code, status = deployment.cli_json("status")
    assert code == 0
    [row] = status["policies"]
    # the six submitted and the two it adopted (web-done, web-inflight): none for outsider-1
    assert sum(row["jobs"].values()) == 8
    outsider = deployment.emulator.backup_id("outsider-1")
    assert outsider not in {call["path"].split("/")[-2] for call in deployment.replicate_calls()}


def test_a_project_listing_reads_every_page_of_a_large_project(
    deploy: Callable[..., Deployment],
) -> None:
    scenario = with_outsider(rules_scenario())
    # Newest first: 1,200 newer backups of a vault outside the policy fill the first page.
    crowd = [
        server_backup(f"busy-{index:04}", created_at="2026-11-24T00:00:00") for index in range(1200)
    ]
    scenario["regions"]["cn-north-4"]["vaults"].append({"name": "crowd", "backups": crowd})
    deployment = deploy([by_project()], scenario=scenario)

    result = deployment.cli("--run-once")

    assert result.returncode == 0, result.stderr
    assert sorted(replicated_names(deployment)) == sorted(ELIGIBLE)
    offsets = sorted(int(params.get("offset", ["0"])[0]) for params in listing_params(deployment))
    assert offsets == [0, 1000]


def test_a_failed_project_listing_leaves_the_vaults_for_the_next_sweep(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([by_project()])
    deployment.emulator.set_faults({"operations": {"list_backups": {"malformed_rate": 1.0}}})

    failed = deployment.cli("--run-once")

    assert failed.returncode != 0
    assert "malformed" in failed.stderr.lower()
    logged = [json.loads(line) for line in failed.stderr.splitlines() if line.startswith("{")]
    project = deployment.emulator.project_id("cn-north-4")
    assert [entry["listing"] for entry in logged if entry["event"] == "listing_failed"] == [
        f"project {project}"
    ]
    assert deployment.replicate_calls() == []
    deployment.emulator.set_faults({})

    healed = deployment.cli("--run-once")

    assert healed.returncode == 0, healed.stderr
    assert replicated_names(deployment) == Counter(ELIGIBLE)
