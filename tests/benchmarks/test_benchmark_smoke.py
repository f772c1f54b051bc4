"""The sweep benchmark on a tiny world: it runs end to end and its call counting holds.

Nothing here is timed: the number of API calls is deterministic (one listing page per vault,
a handful of resolution calls, one POST per eligible backup), so ``api_calls / min_api_calls``
is checked exactly, as are the fields of the JSON line and the steady state's empty write.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIELDS = (
    "vaults",
    "backups",
    "eligible",
    "latency_ms",
    "concurrency",
    "api_calls",
    "min_api_calls",
    "wall_s",
    "lower_bound_s",
    "ratio",
    "cpu_s",
    "peak_rss_mb",
    "emulator_cpu_s",
)


def run_benchmark(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "tests.benchmarks.sweep", *args]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    last_line = result.stdout.strip().splitlines()[-1]
    document: dict[str, Any] = json.loads(last_line)
    return document


TINY = ("--vaults", "3", "--backups-per-vault", "20", "--latency-ms", "5", "--concurrency", "4")


def test_catch_up_makes_the_minimum_calls_and_reports_every_field() -> None:
    result = run_benchmark("--scenario", "catch-up", *TINY, "--eligible-fraction", "0.25")
    assert all(field in result for field in FIELDS), sorted(set(FIELDS) - set(result))
    assert (result["vaults"], result["backups"], result["eligible"]) == (3, 60, 15)
    assert result["submitted"] == 15
    assert result["api_calls"] / result["min_api_calls"] <= 1.05
    assert result["calls_by_operation"]["replicate_backup"] == 15
    assert result["calls_by_operation"]["list_backups"] == 3
    assert result["cpu_s"] > 0
    # the run's own CPU figure (from its --json report) leaves out the process's start
    assert 0 < result["sweep_cpu_s"] < result["cpu_s"]
    assert result["startup_cpu_s"] > 0
    # the sweeping thread's share (ledger and decisions) is a part of the sweep's CPU
    sweeping_us = result["decide_cpu_us_per_backup"]
    assert 0 < sweeping_us < result["sweep_cpu_us_per_backup"]
    assert 0 < result["sweep_wall_s"] < result["wall_s"]
    assert result["peak_rss_mb"] > 0
    assert 1 <= result["most_in_flight"] <= 4  # --concurrency 4
    assert 0 < result["mean_in_flight"] <= result["most_in_flight"]


def test_a_second_sweep_in_steady_state_writes_no_job() -> None:
    result = run_benchmark("--scenario", "steady", *TINY, "--eligible-fraction", "1.0")
    assert result["eligible"] == 0  # every eligible backup already has its replica
    assert result["api_calls"] / result["min_api_calls"] <= 1.05
    assert "replicate_backup" not in result["calls_by_operation"]
    assert result["ledger_job_rows_written"] == 0
    assert result["ledger_attempt_rows_written"] == 0
