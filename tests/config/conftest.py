"""Fixtures for the config tests: write a config into a private directory, check it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.cli.entry import main

BASE: dict[str, Any] = {
    "cloud": {"provider": "emulator"},
    "policies": [
        {
            "name": "web-dr",
            "source": {"region": "cn-north-4", "vaults": ["web-prod"]},
            "destination": {"region": "cn-south-1", "vault": "web-dr"},
            "schedule": {"cron": "30 */6 * * *"},
        }
    ],
}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)
    return directory


@pytest.fixture
def write(config_dir: Path) -> Callable[..., Path]:
    """Write text (or a mapping, as YAML) to ``config_dir/name`` with a safe mode."""

    def write_file(content: str | dict[str, Any] | list[Any], name: str = "config.yaml") -> Path:
        path = config_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text)
        path.chmod(0o600)
        return path

    return write_file


@pytest.fixture
def base() -> dict[str, Any]:
    """A valid config (emulator provider, one policy) for tests to spoil."""
    return copy.deepcopy(BASE)


@pytest.fixture
def check(capsys: pytest.CaptureFixture[str]) -> Callable[[Path], tuple[int, str, str]]:
    """Run ``check-config`` in-process: (exit code, stdout, stderr)."""

    def run(path: Path) -> tuple[int, str, str]:
        code = main(["-c", str(path), "check-config"])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
