"""The messages of bad input and machine-readable times, through the installed CLI: a
usage error says what was wrong in the user's terms (exit 2, never a traceback)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.engine.harness import CLI, Deployment, policy, server_backup

SCENARIO: dict[str, Any] = {
    "regions": {
        "cn-north-4": {
            "replication_destinations": ["cn-south-1"],
            "vaults": [{"name": "web-prod", "backups": [server_backup("web-0")]}],
        },
        "cn-south-1": {"vaults": [{"name": "web-dr", "protect_type": "replication"}]},
    }
}
WEB = policy("web", ["web-prod"], "cn-south-1", "web-dr")
ROOT = Path(__file__).resolve().parents[2]
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_bad_arguments_are_usage_errors_in_the_users_terms(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB], SCENARIO, time_scale=120)
    since = usage_error(deployment.cli("report", "traffic", "--since", "yesterday"))
    assert "'yesterday' is neither a date" in since
    assert "_since" not in since
    assert "longer than" in usage_error(deployment.cli("report", "traffic", "--since", "99999999d"))
    usage_error(deployment.cli("history", "--limit", "-1"))
    usage_error(deployment.cli("history", "--limit", "0"))
    usage_error(deployment.cli("history", "--limit", "99999999999999999999"))
    usage_error(deployment.cli("--run-once", "--wait", "--wait-timeout", "99999999d"))

    assert deployment.cli("--run-once", "--wait", "--wait-timeout", "60s").returncode == 0
    missing = usage_error(deployment.cli("history", "--backup", "nonexistent"))
    assert "no replication of backup nonexistent" in missing
    assert "no policy named typo" in usage_error(deployment.cli("history", "--policy", "typo"))
    assert deployment.cli("report", "traffic", "--since", "0d").returncode == 0
    backup = deployment.replicate_calls()[0]["path"].split("/")[-2]
    finished = usage_error(deployment.cli("retry", backup, "--to-region", "cn-south-1"))
    assert "has already been replicated" in finished
    assert "is succeeded" not in finished


def test_times_in_json_are_rfc3339(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy([WEB], SCENARIO, time_scale=120)
    assert deployment.cli("--run-once", "--wait", "--wait-timeout", "60s").returncode == 0
    _, status = deployment.cli_json("status")
    _, history = deployment.cli_json("history")
    _, report = deployment.cli_json("report", "traffic")
    times = [
        status["policies"][0]["last_sweep"],
        status["instances"][0]["last_seen_at"] if status["instances"] else None,
        status["vault_bindings"][0]["created_at"],
        *(entry["at"] for entry in history),
        report["since"],
    ]
    assert [moment for moment in times if moment is not None and not RFC3339.match(moment)] == []
    assert history
    assert report["since"].endswith("Z")


def test_check_config_lists_problems_in_line_order_in_plain_words(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    document = {
        "ledger": {"url": "sqlite:///ledger.db"},
        "cloud": {"provider": "emulator", "timeout": "soon"},
        "policies": [
            {
                "name": "${NOT_SET_ANYWHERE}",
                "source": {"region": "cn-north-4", "vaults": []},
                "destination": {"region": "cn-south-1", "vault": "web-dr"},
                "schedule": {"interval": "1h"},
            }
        ],
    }
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run(
        [CLI, "-c", str(config), "check-config"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 78
    lines = [int(line.split(":")[1]) for line in result.stderr.splitlines()]
    assert len(lines) == 3, result.stderr
    assert lines == sorted(lines), result.stderr
    assert "Tuple should have" not in result.stderr
    assert "list at least one" in result.stderr


def test_the_demo_is_healthy_after_its_first_run(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    config = str(tmp_path / "config" / "demo.yaml")
    run = subprocess.run(
        [CLI, "-c", config, "--log-format", "json", "--run-once", "--wait"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert '"level": "error"' not in run.stderr
    shown = subprocess.run(
        [CLI, "-c", config, "status", "--json"], capture_output=True, text=True, check=True
    )
    document = json.loads(shown.stdout)
    assert {row["rpo"]["state"] for row in document["policies"]} == {"ok"}
    assert document["recent_alerts"] == []


def test_a_config_without_policies_is_warned_about(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy([], SCENARIO)
    checked = deployment.cli("check-config")
    assert checked.returncode == 0, checked.stderr
    assert "warning:" in checked.stderr
    assert "no enabled policy" in checked.stderr
    run = deployment.cli("--run-once")
    assert run.returncode == 0, run.stderr
    assert "no enabled policy, nothing to sweep" in run.stderr
