"""T1 in the suite: the ci profile of ``tests/reliability/crash_faults.py`` (kill -9 and API
faults against the real process) and its negative control, each as the script runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run_script(workdir: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability.crash_faults",
            "--workdir",
            str(workdir),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    return result.returncode, json.loads(lines[-1]), result.stdout + result.stderr[-3000:]


def test_kills_and_faults_make_no_duplicate_and_lose_nothing(
    tmp_path: Path, ledger_url: str
) -> None:
    """On both ledgers (issue 8: the crash suite passes on PostgreSQL too)."""
    code, summary, output = run_script(
        tmp_path / "t1", "--profile", "ci", "--ledger-url", ledger_url
    )
    assert summary["ledger"] == ("sqlite" if ledger_url.startswith("sqlite") else "postgresql")
    assert summary["starts"] >= 60, output
    assert summary["kills"] >= 30, output
    assert summary["duplicates"] == 0, output
    assert summary["missing"] == 0, output
    assert summary["jobs"] == summary["eligible_pairs"] > 0, output
    assert summary["non_terminal"] == 0, output
    assert summary["succeeded_without_replica"] == 0, output
    assert summary["succeeded_replica_unknown"] == 0, output
    assert summary["integrity"] == "ok", output
    assert summary["tracebacks"] == 0, output
    assert summary["aborted_runs"] == 0, output
    assert summary["unexpected_exits"] == 0, output
    assert summary["hung"] == 0, output
    assert code == 0, output


def test_blind_retry_negative_control_shows_duplicates(tmp_path: Path) -> None:
    code, summary, output = run_script(tmp_path / "blind", "--profile", "ci", "--blind-retry")
    assert summary["mode"] == "blind-retry"
    assert summary["duplicates"] > 0, output
    assert code == 0, output
