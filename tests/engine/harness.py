"""End-to-end harness: an emulator in this process, the installed CLI as a subprocess.

The CLI talks to the emulator over HTTP through the real SDK; the tests assert on what the
emulator saw (its request log) and on the CLI's output and exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.emulator import Emulator

CLI = str(Path(sys.executable).parent / "cbr-replicator")
REGIONS = ("cn-north-4", "cn-south-1", "ap-southeast-1", "af-south-1")


def server_backup(name: str, **fields: Any) -> dict[str, Any]:
    backup: dict[str, Any] = {
        "name": name,
        "resource_type": "OS::Nova::Server",
        "status": "available",
        "resource_size": 40,
        "extend_info": {"contain_system_disk": True},
    }
    backup.update(fields)
    return backup


def one_vault_scenario(
    source: str, destination: str, backups: list[dict[str, Any]]
) -> dict[str, Any]:
    """The vault ``web-prod`` in ``source`` holding ``backups``, and the replication vault
    ``web-dr`` in ``destination``."""
    return {
        "regions": {
            source: {
                "replication_destinations": [destination],
                "vaults": [{"name": "web-prod", "backups": backups}],
            },
            destination: {"vaults": [{"name": "web-dr", "protect_type": "replication"}]},
        }
    }


def rules_scenario() -> dict[str, Any]:
    """One backup per row of docs/design.md §2, in the vault ``web-prod``."""
    web_backups = [
        server_backup("web-ok-1", created_at="2026-11-20T01:00:00"),
        server_backup(
            "web-ok-child",
            extend_info={},
            children=[{"name": "web-ok-child-sys", "extend_info": {"bootable": True}}],
            created_at="2026-11-20T02:00:00",
        ),
        server_backup(
            "web-nosys",
            extend_info={"contain_system_disk": False},
            children=[{"name": "web-nosys-data", "extend_info": {"bootable": False}}],
        ),
        server_backup("web-creating", status="creating"),
        server_backup("web-volume", resource_type="OS::Cinder::Volume"),
        server_backup("web-replica", image_type="replication"),
        server_backup(
            "web-done",
            replication_records=[
                {
                    "destination_region": "cn-south-1",
                    "destination_vault": "web-dr",
                    "destination_backup": "web-done-copy",
                    "status": "success",
                }
            ],
        ),
        server_backup(
            "web-failed",
            replication_records=[
                {
                    "destination_region": "cn-south-1",
                    "destination_vault": "web-dr",
                    "status": "fail",
                    "fail_code": "BackupService.6129",
                    "fail_reason": "destination vault full",
                }
            ],
        ),
        server_backup(
            "web-inflight",
            replication_records=[
                {
                    "destination_region": "cn-south-1",
                    "destination_vault": "web-dr",
                    "status": "replicating",
                }
            ],
        ),
        server_backup("web name with spaces & <odd> chars", created_at="2026-11-20T03:00:00"),
    ]
    return {
        "settings": {"wait_seconds": 10, "replicate_seconds": 60},
        "regions": {
            "cn-north-4": {
                "replication_destinations": ["cn-south-1", "ap-southeast-1"],
                "projects": [{"name": "cn-north-4"}, {"name": "cn-north-4_ops"}],
                "vaults": [
                    {"name": "web-prod", "backups": web_backups},
                    {"name": "db-prod", "backups": [server_backup("db-1"), server_backup("db-2")]},
                    {"name": "old-dr", "protect_type": "replication"},
                ],
            },
            "cn-south-1": {
                "projects": [{"name": "cn-south-1"}, {"name": "cn-south-1_ops"}],
                "vaults": [
                    {
                        "name": "web-dr",
                        "protect_type": "replication",
                        "backups": [server_backup("web-done-copy", image_type="replication")],
                    },
                    {"name": "ops-dr", "protect_type": "replication", "project": "cn-south-1_ops"},
                    {"name": "plain-vault"},
                ],
            },
            "ap-southeast-1": {"vaults": [{"name": "apac-dr", "protect_type": "replication"}]},
            "af-south-1": {"vaults": [{"name": "af-dr", "protect_type": "replication"}]},
        },
    }


def policy(name: str, vaults: list[str], region: str, vault: str, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": name,
        "source": {"region": "cn-north-4", "vaults": vaults},
        "destination": {"region": region, "vault": vault},
        "schedule": {"interval": "1h"},
    }
    document.update(extra)
    return document


@dataclass
class Deployment:
    """A config file pointing at the emulator, and a way to run the CLI on it."""

    emulator: Emulator
    config: Path
    workdir: Path
    ledger_url: str | None = None

    def rewrite(self, policies: list[dict[str, Any]], **overrides: Any) -> None:
        """A new config for the same emulator and ledger (as an operator edits the file)."""
        write_config(self.config, self.emulator, policies, ledger_url=self.ledger_url, **overrides)

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, **(env or {})}
        environment.pop("CBR_REPLICATOR_CONFIG", None)
        return subprocess.run(
            [CLI, "-c", str(self.config), "--log-format", "json", *args],
            capture_output=True,
            text=True,
            env=environment,
            timeout=120,
            check=False,
        )

    def cli_json(self, *args: str) -> tuple[int, Any]:
        result = self.cli(*args, "--json")
        assert result.stdout, result.stderr
        return result.returncode, json.loads(result.stdout)

    def replicate_calls(self) -> list[dict[str, Any]]:
        return self.emulator.requests("replicate_backup")

    def mutating_calls(self) -> list[dict[str, Any]]:
        return [call for call in self.emulator.requests() if call["method"] != "GET"]


def write_config(
    path: Path,
    emulator: Emulator,
    policies: list[dict[str, Any]],
    *,
    ledger_url: str | None = None,
    **overrides: Any,
) -> Path:
    url = emulator.url
    document: dict[str, Any] = {
        "ledger": {"url": ledger_url or f"sqlite:///{path.parent / 'ledger.db'}"},
        "cloud": {
            "provider": "huaweicloud",
            "credentials": {
                "access_key": emulator.access_key,
                "secret_key": emulator.secret_key,
                "domain_id": emulator.domain_id,
            },
            "endpoints": {"iam": url, "cbr": dict.fromkeys(REGIONS, url)},
            "timeout": "5s",
            "connect_timeout": "2s",
            "lease": "30s",
            "requests_per_second": 1000,
        },
        "policies": policies,
    }
    document["cloud"].update(overrides.pop("cloud", {}))
    document.update(overrides)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)
    return path


@pytest.fixture
def deploy(tmp_path: Path, ledger_url: str) -> Iterator[Callable[..., Deployment]]:
    """Deployments whose ledger is SQLite or PostgreSQL (``ledger_url`` is parametrized)."""
    emulators: list[Emulator] = []

    def make(
        policies: list[dict[str, Any]],
        scenario: dict[str, Any] | None = None,
        *,
        time_scale: float | None = None,
        **overrides: Any,
    ) -> Deployment:
        """``time_scale``: the emulator runs on a sped-up real clock (for ``--wait``); by
        default its clock only moves when a test advances it."""
        clock = "manual" if time_scale is None else "real"
        emulator = Emulator(scenario or rules_scenario(), clock=clock, time_scale=time_scale or 1.0)
        emulator.start()
        emulators.append(emulator)
        config = write_config(
            tmp_path / "config.yaml", emulator, policies, ledger_url=ledger_url, **overrides
        )
        return Deployment(emulator=emulator, config=config, workdir=tmp_path, ledger_url=ledger_url)

    yield make
    for emulator in emulators:
        emulator.stop()
