"""The throttling benchmark on a tiny world: it runs end to end, replicates every backup
exactly once through a gateway that throttles it, and reports every figure. Nothing timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_throttled_catch_up_replicates_each_backup_once_and_reports_its_figures() -> None:
    command = [
        sys.executable,
        "-m",
        "tests.benchmarks.throttle",
        *("--eligible", "20", "--limit", "10", "--window", "2", "--rates", "1000"),
        *("--latency-ms", "2"),
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    (run,) = summary["results"]
    assert run["replicated_once"] == 20
    assert run["replicated_more_than_once"] == run["duplicates"] == 0
    assert run["jobs"] == {"succeeded": 20}
    assert run["throttled_429"] > 0, "a 20-request window is used up at 1,000/s"
    assert run["calls"] == run["calls_answered"] + run["throttled_429"]
    assert run["calls_by_operation"]["replicate_backup"] >= 20
    assert {"wall_s", "bound_s", "ratio", "throttled_share"} <= set(run)
