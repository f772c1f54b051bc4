"""The operator's commands of issue 9 through the installed CLI against the emulator: a run's
notifications and heartbeat (sent once across runs), ``status``, ``report traffic``,
``schema`` and the progress display (on a terminal only)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from daemon.cli.progress import CLEAR_LINE
from tests.engine.harness import CLI, Deployment, policy, server_backup
from tests.engine.webhooks import Receiver, receiving

ROOT = Path(__file__).resolve().parents[2]
SECRET = "cli-hook-secret-93ab"  # a test value
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
WEB = policy("web", ["web-prod"], "cn-south-1", "web-dr", traffic_budget_per_day="1TiB")
BROKEN = policy("broken", ["web-prod"], "ap-southeast-1", "apac-dr")  # no such region here
SQLITE_ONLY = pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


def notify(receiver: Receiver) -> dict[str, Any]:
    return {
        "webhook": {"url": f"{receiver.url}/hook", "secret": SECRET},
        "heartbeat": {"url": f"{receiver.url}/ping/token-1"},
    }


@SQLITE_ONLY
def test_a_run_sends_each_change_once_and_pings_the_heartbeat_of_healthy_policies(
    deploy: Callable[..., Deployment], receiver: Receiver
) -> None:
    # The scenario's backups were made on 1 November: waiting for weeks, the RPO is breached.
    deployment = deploy([WEB, BROKEN], SCENARIO, notify=notify(receiver))
    first = deployment.cli("--run-once")
    assert first.returncode == 1, first.stderr  # the broken policy fails; web replicates
    assert len(deployment.replicate_calls()) == 3
    assert sorted(receiver.event_names()) == ["policy_failing", "rpo_breached"]
    assert all(post.signed_with(SECRET) for post in receiver.posts())
    assert len(receiver.pings("/ping/token-1")) == 1  # web's sweep only: broken failed

    second = deployment.cli("--run-once")
    assert second.returncode == 1
    assert len(receiver.posts()) == 2  # nothing changed: nothing sent again
    assert len(receiver.pings("/ping/token-1")) == 2
    for result in (first, second):
        assert SECRET not in result.stderr + result.stdout
        assert "token-1" not in result.stderr  # logs name the host of a URL, not its path

    _, status = deployment.cli_json("status")
    web = next(row for row in status["policies"] if row["policy"] == "web")
    assert web["rpo"]["state"] == "breached"
    assert web["rpo"]["rpo_seconds"] == 7200
    assert web["traffic_budget_per_day"] == 2**40
    assert web["traffic_budget_used_bytes"] == 3 * 40 * 2**30
    assert {alert["event"] for alert in status["recent_alerts"]} == {
        "policy_failing",
        "rpo_breached",
    }
    text = deployment.cli("status")
    assert text.returncode == 0, text.stderr
    assert "rpo breached (rpo 2h;" in text.stdout
    assert "(budget: 120.0 GiB of 1.0 TiB submitted)" in text.stdout
    assert "rpo_breached rpo:web:cn-south-1 (notification delivered)" in text.stdout


@SQLITE_ONLY
def test_report_traffic_by_day_policy_and_region(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy([WEB], SCENARIO)
    assert deployment.cli("--run-once").returncode == 0
    deployment.emulator.advance(3600)  # the replications finish; the next run sees it
    assert deployment.cli("--run-once").returncode == 0
    size = 40 * 2**30  # CBR bills a replication at its backup's size
    code, by_policy = deployment.cli_json("report", "traffic", "--by", "policy")
    assert code == 0
    assert by_policy["rows"] == [{"policy": "web", "bytes": 3 * size, "replications": 3}]
    assert by_policy["total_bytes"] == 3 * size
    table = deployment.cli("report", "traffic", "--by", "region", "--since", "1d")
    assert table.returncode == 0
    assert table.stdout.splitlines()[2].split() == [
        "cn-south-1",
        "3",
        "120.0",
        "GiB",
        str(3 * size),
    ]
    assert table.stdout.splitlines()[-1].split()[:2] == ["total", "3"]
    assert deployment.cli("report", "traffic", "--since", "soon").returncode == 2


def test_schema_validates_the_shipped_configs_and_flags_a_misspelt_key() -> None:
    result = subprocess.run([CLI, "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for name in ("cbr-replicator.yaml", "demo.yaml", "standalone-emulator.yaml"):
        document = yaml.safe_load((ROOT / "config" / name).read_text())
        assert list(validator.iter_errors(document)) == [], name
    misspelt = {"cloud": {"provider": "emulator", "timout": "5s"}}
    assert ["timout" in error.message for error in validator.iter_errors(misspelt)] == [True]
    with_files = {"cloud": {"credentials": {"access_key_file": "ak", "secret_key": "x"}}}
    assert list(validator.iter_errors(with_files)) == []
    both = {
        "cloud": {"credentials": {"access_key_file": "ak", "access_key": "a", "secret_key": "x"}}
    }
    assert list(validator.iter_errors(both)) != []

    files = subprocess.run(
        [CLI, "schema", "--policies-file"], capture_output=True, text=True, check=True
    )
    policies = jsonschema.Draft202012Validator(json.loads(files.stdout))
    example = yaml.safe_load((ROOT / "config" / "policies.d" / "example.yaml").read_text())
    assert list(policies.iter_errors(example)) == []
    assert list(policies.iter_errors([{"name": "x", "rpo": "soon"}])) != []


def test_check_config_describes_the_alert_settings(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cloud": {"provider": "emulator"},
                "notify": {"webhook": {"url": "https://hooks.example/x", "secret": SECRET}},
                "policies": [{**WEB, "rpo": "3h", "stuck_after": "2h"}],
            }
        )
    )
    config.chmod(0o600)
    result = subprocess.run(
        [CLI, "-c", str(config), "check-config"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "alerts: rpo 3h, stuck after 2h" in result.stdout
    assert "notify: webhook https://hooks.example (signed)" in result.stdout
    assert "not enforced" not in result.stdout
    assert SECRET not in result.stdout


@SQLITE_ONLY
def test_progress_is_drawn_on_a_terminal_and_never_into_a_pipe(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB], SCENARIO, time_scale=120)
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [CLI, "-c", str(deployment.config), "--log-format", "json", "--run-once", "--wait"],
        stdout=subprocess.PIPE,
        stderr=slave,
        env={k: v for k, v in os.environ.items() if k != "CBR_REPLICATOR_CONFIG"},
    )
    os.close(slave)
    terminal = _read_all(master)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert CLEAR_LINE in terminal
    assert "policies 1/1" in terminal
    assert "3 backups scanned" in terminal
    assert "3 submitted" in terminal
    assert "3 finished · 0 waiting" in terminal
    assert CLEAR_LINE not in stdout.decode()  # the report itself stays clean
    # Each log line starts a line of its own: the progress line is erased before it and
    # drawn again after it, never left in front of it.
    lines = terminal.replace("\r\n", "\n").split("\n")  # the terminal sends CR LF
    logged = [line for line in lines if '"event":' in line]
    assert any('"replication_submitted"' in line for line in logged)
    glued = [line for line in logged if not line.rpartition(CLEAR_LINE)[2].startswith("{")]
    assert glued == []

    piped = deployment.cli("--run-once")
    assert piped.returncode == 0
    assert "\x1b" not in piped.stderr
    assert "backups scanned" not in piped.stderr


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")
