"""The commands that only read the ledger, through the installed CLI: they never create a
ledger (a missing one is exit 78 with its path) and never need the credentials."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.engine.harness import Deployment, policy, server_backup

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
READERS = (
    ("status",),
    ("history",),
    ("report", "traffic"),
    ("retry", "some-backup", "--to-region", "cn-south-1"),
)


def test_reading_commands_never_create_the_ledger(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy([WEB], SCENARIO)
    # Each in turn: had one made an empty ledger, the next would pass.
    for args in READERS:
        result = deployment.cli(*args)
        assert result.returncode == 78, (args, result.stdout, result.stderr)
        assert "--run-once` creates it" in result.stderr, args
        assert "Traceback" not in result.stderr
    # A dry run decides as the first run would, against an empty ledger in memory.
    dry = deployment.cli("--run-once", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "deciding as its first run would" in dry.stderr
    assert deployment.cli("status").returncode == 78  # and left none behind
    assert not (deployment.workdir / "state").exists()  # the SQLite ledger's directory
    assert deployment.cli("--run-once").returncode == 0  # a run creates it
    assert deployment.cli("status").returncode == 0


def credentials_from_the_environment(deployment: Deployment, keys: Path) -> None:
    """The config names its keys as a unit's does: ${VAR} and a file in $CREDENTIALS_DIRECTORY."""
    document = yaml.safe_load(deployment.config.read_text())
    document["cloud"]["credentials"] = {
        "access_key": "${TEST_CBR_AK}",
        "secret_key_file": "${CREDENTIALS_DIRECTORY}/sk",
        "domain_id": deployment.emulator.domain_id,
    }
    deployment.config.write_text(yaml.safe_dump(document))
    keys.mkdir(mode=0o700)
    (keys / "sk").write_text(deployment.emulator.secret_key)
    (keys / "sk").chmod(0o600)


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_commands_that_do_not_call_the_cloud_run_without_credentials(
    deploy: Callable[..., Deployment], tmp_path: Path
) -> None:
    deployment = deploy([WEB], SCENARIO)
    keys = tmp_path / "credentials"
    credentials_from_the_environment(deployment, keys)
    unit = {"TEST_CBR_AK": deployment.emulator.access_key, "CREDENTIALS_DIRECTORY": str(keys)}
    assert deployment.cli("--run-once", env=unit).returncode == 0
    for args in (("status",), ("history",), ("report", "traffic")):
        result = deployment.cli(*args)
        assert result.returncode == 0, (args, result.stderr)

    needs = deployment.cli("--run-once")
    assert needs.returncode == 78
    assert "CREDENTIALS_DIRECTORY is not set" in needs.stderr
    assert "TEST_CBR_AK is not set" in needs.stderr
    assert "No such file" not in needs.stderr  # not "secret file /sk": the variable is unset
    assert deployment.emulator.secret_key not in needs.stderr + needs.stdout
