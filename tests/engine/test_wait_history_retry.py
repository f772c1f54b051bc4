"""``--run-once --wait``, ``history`` and ``retry`` through the installed CLI.

The emulator runs on a real clock sped up 120 times, so a 60 s replication takes half a
second and ``--wait`` finishes on its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.engine.harness import Deployment, policy, server_backup

SCENARIO: dict[str, Any] = {
    "regions": {
        "cn-north-4": {
            "replication_destinations": ["cn-south-1"],
            "vaults": [
                {"name": "web-prod", "backups": [server_backup(f"web-{n}") for n in range(3)]}
            ],
        },
        "cn-south-1": {"vaults": [{"name": "web-dr", "protect_type": "replication"}]},
    }
}
WEB = policy("web", ["web-prod"], "cn-south-1", "web-dr")


def test_wait_follows_the_run_to_the_end_and_history_shows_each_submission(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB], SCENARIO, time_scale=120)
    code, run = deployment.cli_json("--run-once", "--wait", "--wait-timeout", "60s")
    assert code == 0
    assert run["policies"][0]["submitted"] == 3
    assert run["jobs"] == {"failed": 0, "given_up": 0, "unfinished": 0}
    code, status = deployment.cli_json("status")
    assert status["policies"][0]["jobs"]["succeeded"] == 3
    code, history = deployment.cli_json("history", "--policy", "web")
    assert code == 0
    outcomes = sorted(entry["outcome"] for entry in history)
    assert outcomes == ["accepted"] * 3 + ["succeeded"] * 3  # each POST, then how it ended
    assert all(entry["request_id"] for entry in history if entry["outcome"] == "accepted")
    assert len(deployment.replicate_calls()) == 3


def test_a_given_up_job_is_retried_only_when_an_operator_asks(
    deploy: Callable[..., Deployment],
) -> None:
    failing = {**SCENARIO, "settings": {"fail_rate": 1.0}}
    one_try = {**WEB, "retry": {"max_attempts": 1}}
    deployment = deploy([one_try], failing, time_scale=120)
    code, run = deployment.cli_json("--run-once", "--wait", "--wait-timeout", "60s")
    assert code == 1  # replications failed and were given up in this run
    assert run["jobs"]["given_up"] == 3
    calls = len(deployment.replicate_calls())
    assert calls == 3
    # Given up: the next run leaves them alone (and nothing failed in that run: exit 0).
    assert deployment.cli("--run-once").returncode == 0
    assert len(deployment.replicate_calls()) == calls
    backup_id = deployment.replicate_calls()[0]["path"].split("/")[-2]
    retried = deployment.cli("retry", backup_id, "--to-region", "cn-south-1")
    assert retried.returncode == 0, retried.stderr
    assert "queued" in retried.stdout
    again = deployment.cli("retry", backup_id, "--to-region", "cn-south-1")
    assert again.returncode == 2  # only failed or given-up jobs are retried
    deployment.cli("--run-once")
    assert len(deployment.replicate_calls()) == calls + 1
