"""``--run-once`` against the emulator: every rule of docs/design.md §2, through the real SDK."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.engine.harness import Deployment, policy, rules_scenario, server_backup

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
WEB_SOUTH = policy("web-south", ["web-prod"], "cn-south-1", "web-dr")
DB_SOUTH_OPS = policy(
    "db-south-ops",
    ["db-prod"],
    "cn-south-1",
    "ops-dr",
    destination={"region": "cn-south-1", "vault": "ops-dr", "project": "cn-south-1_ops"},
    replica={"name": "{backup_name}-{destination_region}", "description": "copy of {backup_id}"},
)
EXPECTED_WEB_REASONS = {
    "web-ok-1": "eligible",
    "web-ok-child": "eligible",
    "web name with spaces & <odd> chars": "eligible",
    "web-failed": "retry_after_failure",
    "web-nosys": "no_system_disk",
    "web-creating": "not_available",
    "web-volume": "not_server_backup",
    "web-replica": "is_replica",
    "web-done": "replica_exists",
    "web-inflight": "replication_in_progress",
}


def replicated_names(deployment: Deployment) -> Counter[str]:
    names = {backup_id: name for name, backup_id in backup_ids(deployment).items()}
    return Counter(names[call["path"].split("/")[-2]] for call in deployment.replicate_calls())


def backup_ids(deployment: Deployment) -> dict[str, str]:
    state = deployment.emulator.state()
    return {backup["name"]: backup_id for backup_id, backup in state["backups"].items()}


def test_dry_run_gives_every_backup_its_reason_and_sends_nothing(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB_SOUTH, DB_SOUTH_OPS])
    code, report = deployment.cli_json("--run-once", "--dry-run")
    assert code == 0
    reasons = {
        row["backup_name"]: row["reason"]
        for row in report["decisions"]
        if row["policy"] == "web-south"
    }
    assert reasons == EXPECTED_WEB_REASONS
    assert deployment.mutating_calls() == []


def test_run_once_replicates_exactly_the_eligible_backups_once(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB_SOUTH, DB_SOUTH_OPS])
    result = deployment.cli("--run-once")
    assert result.returncode == 0, result.stderr
    assert replicated_names(deployment) == Counter(
        {
            "web-ok-1": 1,
            "web-ok-child": 1,
            "web name with spaces & <odd> chars": 1,
            "web-failed": 1,
            "db-1": 1,
            "db-2": 1,
        }
    )
    emulator = deployment.emulator
    south_default = emulator.project_id("cn-south-1")
    south_ops = emulator.project_id("cn-south-1", "cn-south-1_ops")
    for call in deployment.replicate_calls():
        body = call["body"]["replicate"]
        assert body["destination_region"] == "cn-south-1"
        assert NAME.match(body["name"]), body["name"]
        assert len(body["description"]) <= 255
        assert not set(body["description"]) & {"<", ">"}
        if body["destination_vault_id"] == emulator.vault_id("cn-south-1", "web-dr"):
            assert body["destination_project_id"] == south_default
        else:
            assert body["destination_vault_id"] == emulator.vault_id("cn-south-1", "ops-dr")
            assert body["destination_project_id"] == south_ops
            assert body["name"].endswith("-cn-south-1")


def test_second_run_sends_no_replicate_call(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy([WEB_SOUTH, DB_SOUTH_OPS])
    assert deployment.cli("--run-once").returncode == 0
    deployment.emulator.advance(600)
    deployment.emulator.clear_requests()
    second = deployment.cli("--run-once")
    assert second.returncode == 0, second.stderr
    assert deployment.replicate_calls() == []
    code, status = deployment.cli_json("status")
    assert code == 0
    web = next(row for row in status["policies"] if row["policy"] == "web-south")
    # 4 submitted + 1 adopted success + 1 adopted in flight, which the emulator finished.
    assert web["jobs"]["succeeded"] == 6
    # Traffic counts the 4 replicas this tool made; adopted ones were made before it knew them.
    assert web["traffic_total_bytes"] == 4 * 40 * 2**30
    # Each run released its sweep leases and job leases on exit, and removed its instance row.
    assert status["instances"] == []


def test_policy_does_not_replicate_a_deleted_replica_again(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB_SOUTH])
    assert deployment.cli("--run-once").returncode == 0
    deployment.emulator.advance(600)
    assert deployment.cli("--run-once").returncode == 0
    deployment.emulator.delete_backup(backup_ids(deployment)["web-done-copy"])
    deployment.emulator.clear_requests()
    third = deployment.cli("--run-once")
    assert third.returncode == 0, third.stderr
    assert deployment.replicate_calls() == []


def test_unsupported_region_stops_that_policy_only(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy([policy("to-africa", ["web-prod"], "af-south-1", "af-dr"), DB_SOUTH_OPS])
    result = deployment.cli("--run-once")
    assert result.returncode == 1
    assert "region_not_supported" in result.stderr
    assert "to-africa" in result.stderr
    calls = deployment.replicate_calls()
    assert calls, "the other policy must still run"
    assert all(c["body"]["replicate"]["destination_region"] == "cn-south-1" for c in calls)


def test_replication_vault_as_source_is_refused(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy([policy("from-dr", ["old-dr"], "cn-south-1", "web-dr")])
    result = deployment.cli("--run-once")
    assert result.returncode == 1
    assert "source_is_replication_vault" in result.stderr
    assert deployment.mutating_calls() == []


def test_destination_that_is_not_a_replication_vault_is_refused(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([policy("to-plain", ["web-prod"], "cn-south-1", "plain-vault")])
    result = deployment.cli("--run-once")
    assert result.returncode == 1
    assert "destination_not_replication_vault" in result.stderr
    assert deployment.mutating_calls() == []


def test_eligible_backups_on_the_second_page_are_found(deploy: Callable[..., Deployment]) -> None:
    scenario = rules_scenario()
    # Listing is newest first: 1,200 newer unavailable backups fill page one.
    crowd = [
        server_backup(f"busy-{index:04}", status="error", created_at="2026-11-24T00:00:00")
        for index in range(1200)
    ]
    old = [server_backup(f"old-{index}", created_at="2026-10-01T00:00:00") for index in range(3)]
    scenario["regions"]["cn-north-4"]["vaults"].append({"name": "big", "backups": crowd + old})
    deployment = deploy([policy("big-south", ["big"], "cn-south-1", "web-dr")], scenario=scenario)
    result = deployment.cli("--run-once")
    assert result.returncode == 0, result.stderr
    assert replicated_names(deployment) == Counter({"old-0": 1, "old-1": 1, "old-2": 1})
    listings = deployment.emulator.requests("list_backups")
    assert sorted(int(call["params"].get("offset", ["0"])[0]) for call in listings) == [0, 1000]


def test_wrong_secret_key_exits_77(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy([WEB_SOUTH])
    text = deployment.config.read_text().replace(
        deployment.emulator.secret_key, "not-the-secret-key"
    )
    deployment.config.write_text(text)
    result = deployment.cli("--run-once")
    assert result.returncode == 77, result.stderr
    assert "permission denied" in result.stderr
    assert "not-the-secret-key" not in result.stderr + result.stdout
    assert deployment.mutating_calls() == []


def reasons_of(report: dict[str, Any], name: str) -> dict[str, int]:
    return next(row["reasons"] for row in report["policies"] if row["policy"] == name)


def test_dry_run_table_columns_line_up_whatever_the_reason(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB_SOUTH])
    result = deployment.cli("--run-once", "--dry-run")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()[: len(EXPECTED_WEB_REASONS) + 1]
    reason_at, name_at = header.index("REASON"), header.index("NAME")
    names = set(EXPECTED_WEB_REASONS)
    for row in rows:
        assert row[name_at - 1] == " ", row
        assert row[name_at:] in names, row
        assert row[reason_at:name_at].strip() == EXPECTED_WEB_REASONS[row[name_at:]], row
