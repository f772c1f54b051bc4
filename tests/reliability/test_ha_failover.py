"""Issue 8 in the suite: the ci profile of ``tests/reliability/ha_failover.py`` (three daemons
on one PostgreSQL ledger, one killed with SIGKILL while it sweeps and has jobs in flight), as
the script runs it. ``CBR_TEST_POSTGRES=off`` deselects it, like every PostgreSQL case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.mark.parametrize("ledger", ["postgres"])
def test_a_killed_instances_policies_and_jobs_are_taken_over_without_duplicates(
    tmp_path: Path, ledger: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability.ha_failover",
            "--profile",
            "ci",
            "--workdir",
            str(tmp_path / "ha"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    summary = json.loads(lines[-1])
    output = result.stdout + result.stderr[-3000:]

    assert summary["instances"] == 3, output
    assert summary["kills"] == 1, output
    # It died holding a sweep lease and claimed jobs...
    assert summary["leases_held_at_kill"] >= 1, output
    assert summary["jobs_held_at_kill"] >= 1, output
    # ...which the others took over: after its lease expired (another host: no shortcut),
    # within 2x the lease, and every job it held was taken on.
    assert summary["early_takeovers"] == 0, output
    assert summary["not_taken_over"] == 0, output
    assert summary["takeover_s"] <= 2 * summary["lease_s"], output
    assert summary["jobs_not_resumed"] == 0, output
    # The work is done once, completely.
    assert summary["duplicates"] == 0, output
    assert summary["missing"] == 0, output
    assert summary["jobs"] == summary["eligible_pairs"] > 0, output
    assert summary["non_terminal"] == 0, output
    assert summary["binding_duplicates"] == 0, output
    assert summary["bindings_wrong"] == 0, output
    # ``status`` lists every instance, the dead one included (last seen before the kill).
    assert summary["status_instances"] == 3, output
    assert summary["tracebacks"] == 0, output
    assert summary["survivor_exits"] == {"0": 2}, output
    assert summary["ok"], output
    assert result.returncode == 0, output
