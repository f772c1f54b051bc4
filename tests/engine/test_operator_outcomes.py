"""What the operator sees of each replication through the installed CLI: every attempt and
every tracked outcome in ``history`` (with the cloud's code), one log line per finished
replication, manual jobs followed by ``--run-once``, and the messages of bad input."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.adapters.ledger import open_ledger
from tests.engine.harness import Deployment, policy, server_backup

SCENARIO: dict[str, Any] = {
    "regions": {
        "cn-north-4": {
            "replication_destinations": ["cn-south-1"],
            "vaults": [
                {"name": "web-prod", "backups": [server_backup(f"web-{n}") for n in range(2)]}
            ],
        },
        "cn-south-1": {"vaults": [{"name": "web-dr", "protect_type": "replication"}]},
    }
}
WEB = policy("web", ["web-prod"], "cn-south-1", "web-dr")


def log_events(stderr: str, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def backup_ids(deployment: Deployment) -> list[str]:
    return [call["path"].split("/")[-2] for call in deployment.replicate_calls()]


def test_history_and_the_log_show_how_each_replication_ended_with_the_cloud_code(
    deploy: Callable[..., Deployment],
) -> None:
    failing = {**SCENARIO, "settings": {"fail_rate": 1.0}}
    deployment = deploy([{**WEB, "retry": {"max_attempts": 1}}], failing, time_scale=120)
    run = deployment.cli("--run-once", "--wait", "--wait-timeout", "60s")
    assert run.returncode == 1, run.stderr
    failed = log_events(run.stderr, "replication_failed")
    assert len(failed) == 2
    assert {line["code"] for line in failed} == {"BackupService.1006"}
    assert {line["state"] for line in failed} == {"given_up"}
    backup = backup_ids(deployment)[0]
    code, entries = deployment.cli_json("history", "--backup", backup)
    assert code == 0
    assert [entry["outcome"] for entry in entries] == ["given_up", "accepted"]
    assert entries[0]["error_code"] == "BackupService.1006"
    assert entries[0]["error_message"] == "Failed to import the backup replica."
    text = deployment.cli("history", "--backup", backup)
    assert "given_up BackupService.1006: Failed to import the backup replica." in text.stdout


def test_each_successful_replication_is_one_log_line_and_one_history_row(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB], SCENARIO, time_scale=120)
    run = deployment.cli("--run-once", "--wait", "--wait-timeout", "60s")
    assert run.returncode == 0, run.stderr
    succeeded = log_events(run.stderr, "replication_succeeded")
    assert sorted(line["backup"] for line in succeeded) == sorted(backup_ids(deployment))
    _, entries = deployment.cli_json("history", "--policy", "web")
    assert sorted(entry["outcome"] for entry in entries) == ["accepted"] * 2 + ["succeeded"] * 2


def test_a_vault_replication_waited_for_is_in_history_under_manual(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB], SCENARIO, time_scale=120)
    args = ("replicate-vault", "web-prod", "--to-region", "cn-south-1", "--to-vault", "web-dr")
    done = deployment.cli(*args, "--wait", "--wait-timeout", "60s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": succeeded") == 2
    code, entries = deployment.cli_json("history", "--policy", "manual")
    assert code == 0
    assert sorted(entry["outcome"] for entry in entries) == ["accepted"] * 2 + ["succeeded"] * 2
    assert all(entry["policy"] is None for entry in entries)
    assert deployment.cli("history").stdout.count("[manual]") == 4


def test_replicating_a_backup_that_does_not_exist_is_a_refusal(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB], SCENARIO)
    args = ("replicate-backup", "no-such-backup", "--to-region", "cn-south-1", "--to-vault")
    refused = deployment.cli(*args, "web-dr")
    assert refused.returncode == 3, refused.stderr
    assert "backup_not_found" in refused.stderr
    assert "cloud error" not in refused.stderr
    as_json = deployment.cli(*args, "web-dr", "--json")
    assert as_json.returncode == 3
    error = json.loads(as_json.stdout)["error"]
    assert error["reason"] == "backup_not_found"
    assert error["exit_code"] == 3
    assert "no-such-backup" in error["message"]
    assert deployment.replicate_calls() == []


def test_a_run_denied_by_the_cloud_still_prints_its_policy_summary(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB], SCENARIO)
    text = deployment.config.read_text().replace(deployment.emulator.secret_key, "wrong-key-1")
    deployment.config.write_text(text)
    result = deployment.cli("--run-once")
    assert result.returncode == 77, result.stderr
    assert "policy web: error permission_denied;" in result.stdout
    assert result.stderr.count("permission denied by the cloud") == 1
    code, document = deployment.cli_json("--run-once")
    assert code == 77
    assert [row["error_reason"] for row in document["policies"]] == ["permission_denied"]


def test_a_run_once_follows_manual_jobs_to_their_end(deploy: Callable[..., Deployment]) -> None:
    scenario = {
        "regions": {
            **SCENARIO["regions"],
            "ap-southeast-1": {"vaults": [{"name": "apac-dr", "protect_type": "replication"}]},
        }
    }
    scenario["regions"]["cn-north-4"] = {
        **SCENARIO["regions"]["cn-north-4"],
        "replication_destinations": ["cn-south-1", "ap-southeast-1"],
    }
    deployment = deploy([WEB], scenario, time_scale=120)
    backup = next(
        backup_id
        for backup_id, backup in deployment.emulator.state()["backups"].items()
        if backup["name"] == "web-0"
    )
    # To a region no policy replicates to: no sweep lists this job.
    started = deployment.cli(
        "replicate-backup", backup, "--to-region", "ap-southeast-1", "--to-vault", "apac-dr"
    )
    assert started.returncode == 0, started.stderr
    _, before = deployment.cli_json("status")
    assert before["manual_jobs"]["replicating"] == 1
    run = deployment.cli("--run-once", "--wait", "--wait-timeout", "60s")
    assert run.returncode == 0, run.stderr
    _, after = deployment.cli_json("status")
    assert after["manual_jobs"]["replicating"] == 0
    assert after["manual_jobs"]["succeeded"] == 1


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_a_run_once_leaves_no_instance_row_and_a_killed_one_is_shown_gone(
    deploy: Callable[..., Deployment], ledger_url: str
) -> None:
    deployment = deploy([WEB], SCENARIO)
    for _ in range(2):
        assert deployment.cli("--run-once").returncode == 0
    _, clean = deployment.cli_json("status")
    assert clean["instances"] == []
    # What a run killed with -9 leaves: the row of a process of this host that is gone.
    dead = f"{socket.gethostname()}:{2**22 + 1}:1"  # above Linux's highest pid
    ledger = open_ledger(ledger_url)
    try:
        ledger.heartbeat(dead, role="run-once", now=datetime.now(UTC))
    finally:
        ledger.close()
    _, after = deployment.cli_json("status")
    assert [(row["owner"], row["gone"]) for row in after["instances"]] == [(dead, True)]
    assert "(gone: it stopped without saying so)" in deployment.cli("status").stdout
