"""Sweep benchmark (issue 7): how close one ``--run-once`` comes to the API lower bound.

It starts the CBR emulator in its own process with a generated scenario and an injected
per-request latency, runs the installed ``cbr-replicator --run-once`` against it as a real
process, and prints a table and, as its last line, one JSON object.

The lower bound for a sweep over V vaults holding B backups of which E are eligible, at latency
L per call and C calls in flight: list calls = sum over vaults of max(1, ceil(n / 1000)), plus
the resolution calls (two IAM project look-ups, the capability call, the destination vault and
one vault-listing page per 1,000 source vaults), plus E replicate calls; time >= calls x L / C.

    python -m tests.benchmarks.sweep --scenario catch-up --vaults 1000 --latency-ms 50 \
        --concurrency 16

Scenarios: ``steady`` (every eligible backup already replicated and known to the ledger: a
first, unmeasured run adopts the replicas, the measured second run must find nothing to do and
write no job), ``catch-up`` (nothing replicated yet), ``huge-vault`` (one vault). Figures are
the measured run's only: ``cpu_s`` and ``peak_rss_mb`` come from the daemon process's own
rusage, ``emulator_cpu_s`` from the emulator process over the same interval. ``sweep_cpu_s``
is the run's own report of its CPU while sweeping (``cpu_s`` of ``--run-once --json``): the
process's CPU without its start (interpreter, imports, config: ``startup_cpu_s``), which the
service pays once, not per sweep; ``sweep_wall_s`` and ``sweep_ratio`` are the same span in
elapsed time. ``decide_cpu_us_per_backup`` is the part of ``sweep_cpu_s`` spent by the sweeping
thread (``sweeping_thread_cpu_s``): the ledger reads, the decisions and the ledger writes, per
backup listed; the rest of the sweep's CPU is the API calls' (the SDK's request, our parse) on
their own threads: the listing calls, and in a catch-up the POSTs.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from daemon.emulator.scenario import DEFAULT_CREDENTIALS, generate_scenario

PAGE_SIZE = 1000
SOURCE_REGION = "cn-north-4"
DESTINATION_REGION = "cn-south-1"
CLI = str(Path(sys.executable).parent / "cbr-replicator")
# Replications are accepted but never progress during a run: the benchmark measures the sweep,
# not the cloud's copying (and keeps the emulator's clock work out of the figures).
FROZEN_REPLICATION = {"wait_seconds": 86_400.0, "replicate_seconds": 86_400.0}


@dataclass(frozen=True)
class Defaults:
    vaults: int
    backups_per_vault: int
    eligible_fraction: float
    replicated: bool  # eligible backups already have their replica (and a warm-up run)


SCENARIOS = {
    "steady": Defaults(1000, 100, 1.0, replicated=True),
    "catch-up": Defaults(1000, 100, 0.1, replicated=False),
    "huge-vault": Defaults(1, 200_000, 0.01, replicated=False),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.sweep",
        description="Measure one cbr-replicator --run-once against the emulator.",
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="catch-up")
    parser.add_argument("--vaults", type=int, help="source vaults (scenario default)")
    parser.add_argument("--backups-per-vault", type=int, help="backups in each source vault")
    parser.add_argument("--eligible-fraction", type=float, help="share of eligible backups")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added to every request")
    parser.add_argument("--concurrency", type=int, default=16, help="cloud.concurrency")
    parser.add_argument(
        "--listing",
        choices=("vault", "project"),
        default="vault",
        help="the policy's source.listing (the lower bound stays the per-vault one)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="do not delete the work dir")
    parser.add_argument(
        "--profile",
        metavar="COMMAND",
        help="prefix the measured daemon run with a profiler, e.g. 'py-spy record -o p.svg --'",
    )
    args = parser.parse_args(argv)
    defaults = SCENARIOS[args.scenario]
    args.vaults = args.vaults if args.vaults is not None else defaults.vaults
    if args.backups_per_vault is None:
        args.backups_per_vault = defaults.backups_per_vault
    if args.eligible_fraction is None:
        args.eligible_fraction = defaults.eligible_fraction
    args.replicated = defaults.replicated
    if args.vaults < 1 or args.backups_per_vault < 0 or not 0 <= args.eligible_fraction <= 1:
        parser.error("need --vaults >= 1, --backups-per-vault >= 0, 0 <= --eligible-fraction <= 1")
    return args


# -- the world -----------------------------------------------------------------------------


def vault_names(count: int) -> list[str]:
    return [f"vault-{index:04d}" for index in range(count)]


def write_scenario(path: Path, args: argparse.Namespace) -> int:
    """Write the scenario as JSON (the emulator loads ``.json`` fast); return its eligible
    backups. Built in a child process: a daemon started later by this process would inherit
    its memory high-water mark (Linux carries ``ru_maxrss`` across exec), and a 500,000-backup
    scenario would show up as the daemon's peak RSS."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as child:
        child.submit(_write_scenario, path, args).result()
    return round(args.vaults * args.backups_per_vault * args.eligible_fraction)


def _write_scenario(path: Path, args: argparse.Namespace) -> None:
    scenario = generate_scenario(
        args.vaults,
        args.backups_per_vault,
        args.eligible_fraction,
        replicated_fraction=1.0 if args.replicated else 0.0,
        seed=args.seed,
        source_region=SOURCE_REGION,
        destination_region=DESTINATION_REGION,
    )
    scenario["settings"] = dict(FROZEN_REPLICATION)
    path.write_text(json.dumps(scenario), encoding="utf-8")


def write_config(path: Path, url: str, args: argparse.Namespace, eligible: int) -> None:
    document: dict[str, Any] = {
        "ledger": {"url": f"sqlite:///{path.parent / 'ledger.db'}"},
        "cloud": {
            "provider": "huaweicloud",
            "credentials": dict(DEFAULT_CREDENTIALS),
            "endpoints": {
                "iam": url,
                "cbr": {SOURCE_REGION: url, DESTINATION_REGION: url},
            },
            "timeout": "60s",
            "connect_timeout": "10s",
            "lease": "5m",
            "requests_per_second": 1_000_000,  # the rate limit must not bind
            "concurrency": args.concurrency,
        },
        "log": {"level": "info"},
        "policies": [
            {
                "name": "bench",
                "source": {
                    "region": SOURCE_REGION,
                    "vaults": vault_names(args.vaults),
                    "listing": args.listing,
                },
                "destination": {"region": DESTINATION_REGION, "vault": "dr-vault"},
                "schedule": {"interval": "1h"},
                "max_in_flight": eligible + 10,  # must not bind either
            }
        ],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)


def min_api_calls(args: argparse.Namespace, eligible: int) -> int:
    pages_per_vault = max(1, math.ceil(args.backups_per_vault / PAGE_SIZE))
    resolution = 4 + math.ceil(args.vaults / PAGE_SIZE)
    return args.vaults * pages_per_vault + resolution + eligible


# -- processes -----------------------------------------------------------------------------


class EmulatorProcess:
    """``python -m daemon.emulator`` in its own process, without a state file."""

    def __init__(
        self, scenario: Path, latency_ms: float, log: Path, options: Sequence[str] = ()
    ) -> None:
        """``options``: more of the emulator's command-line options (gateway throttling)."""
        self._log = log.open("w", encoding="utf-8")
        command = [sys.executable, "-m", "daemon.emulator", "--scenario", str(scenario)]
        if latency_ms > 0:
            command += ["--latency-ms", str(latency_ms)]
        command += options
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.stop()
            raise RuntimeError(f"the emulator did not start; see {log}")

    def admin(self, method: str, name: str) -> Any:
        request = urllib.request.Request(f"{self.url}/__emulator__/{name}", method=method)
        with urllib.request.urlopen(request, timeout=300) as answer:
            return json.loads(answer.read())

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def process_cpu_seconds(pid: int) -> float | None:
    """user + sys of a running process (Linux /proc); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


@dataclass
class DaemonRun:
    returncode: int
    wall_s: float
    cpu_s: float
    sys_s: float
    peak_rss_mb: float
    report: dict[str, Any]


def run_daemon(config: Path, workdir: Path, label: str, profile: str | None = None) -> DaemonRun:
    """``cbr-replicator --run-once --json`` as a real process; its own rusage."""
    command = [CLI, "-c", str(config), "--log-format", "json", "--run-once", "--json"]
    if profile:
        command = [*profile.split(), *command]
    environment = {k: v for k, v in os.environ.items() if k != "CBR_REPLICATOR_CONFIG"}
    stdout_path, stderr_path = workdir / f"{label}.out", workdir / f"{label}.log"
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=environment)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    text = stdout_path.read_text()
    try:
        report = json.loads(text) if text.strip() else {}
    except ValueError:
        report = {}
    rss_kb = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return DaemonRun(
        returncode=process.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        sys_s=usage.ru_stime,
        peak_rss_mb=rss_kb / 1024,
        report=report,
    )


def ledger_writes(database: Path, since: str) -> dict[str, int]:
    """Job and attempt rows the measured run wrote (by their timestamps), and job states."""
    with sqlite3.connect(database) as connection:
        jobs = connection.execute(
            "SELECT COUNT(*) FROM jobs WHERE updated_at >= ?", (since,)
        ).fetchone()[0]
        attempts = connection.execute(
            "SELECT COUNT(*) FROM attempts WHERE at >= ?", (since,)
        ).fetchone()[0]
        states = dict(connection.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
    return {"job_rows_written": int(jobs), "attempt_rows_written": int(attempts), **states}


def ledger_time(moment: datetime) -> str:
    """How the ledger stores a UTC time on SQLite (naive, space-separated, microseconds)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


# -- the run -------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cbr-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    emulator: EmulatorProcess | None = None
    try:
        scenario = workdir / "scenario.json"
        eligible_in_world = write_scenario(scenario, args)
        to_submit = 0 if args.replicated else eligible_in_world
        emulator = EmulatorProcess(scenario, args.latency_ms, workdir / "emulator.log")
        config = workdir / "config.yaml"
        write_config(config, emulator.url, args, eligible_in_world)
        warmup: DaemonRun | None = None
        if args.replicated:
            warmup = run_daemon(config, workdir, "warmup")
        emulator.admin("DELETE", "requests")
        since = ledger_time(datetime.now(UTC))
        emulator_cpu_before = emulator.cpu_seconds()
        load = os.getloadavg()[0]  # other work on the machine when the measured run starts
        run = run_daemon(config, workdir, "run", args.profile)
        emulator_cpu_after = emulator.cpu_seconds()
        logged = emulator.admin("GET", "requests")
        writes = ledger_writes(workdir / "ledger.db", since)
        result = summarize(
            args,
            run,
            warmup,
            logged["requests"],
            writes,
            to_submit,
            emulator_cpu_before,
            emulator_cpu_after,
        )
        result["most_in_flight"] = logged["most_in_flight"]  # at most --concurrency
        result["mean_in_flight"] = logged["mean_in_flight"]  # below it: the daemon left gaps
        result["load_1m"] = round(load, 2)
        return result
    finally:
        if emulator is not None:
            emulator.stop()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def summarize(  # noqa: PLR0917 (one call site)
    args: argparse.Namespace,
    run: DaemonRun,
    warmup: DaemonRun | None,
    requests: list[dict[str, Any]],
    writes: dict[str, int],
    eligible: int,
    emulator_cpu_before: float | None,
    emulator_cpu_after: float | None,
) -> dict[str, Any]:
    backups = args.vaults * args.backups_per_vault
    calls = len(requests)
    floor = min_api_calls(args, eligible)
    lower_bound = floor * args.latency_ms / 1000 / args.concurrency
    policies = run.report.get("policies") or [{}]
    sweep = policies[0]
    sweep_cpu, sweep_wall = run.report.get("cpu_s"), run.report.get("wall_s")
    decide_cpu = run.report.get("sweeping_thread_cpu_s")
    emulator_cpu = (
        round(emulator_cpu_after - emulator_cpu_before, 2)
        if emulator_cpu_before is not None and emulator_cpu_after is not None
        else None
    )
    return {
        "scenario": args.scenario,
        "vaults": args.vaults,
        "backups": backups,
        "eligible": eligible,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "listing": args.listing,
        "api_calls": calls,
        "min_api_calls": floor,
        "calls_ratio": round(calls / floor, 4),
        "wall_s": round(run.wall_s, 2),
        "lower_bound_s": round(lower_bound, 2),
        "ratio": round(run.wall_s / lower_bound, 3) if lower_bound else None,
        "cpu_s": round(run.cpu_s, 2),
        "cpu_sys_s": round(run.sys_s, 2),
        "cpu_us_per_backup": round(run.cpu_s * 1e6 / backups, 1) if backups else None,
        "cpu_us_per_call": round(run.cpu_s * 1e6 / calls, 1) if calls else None,
        # The run's own figure: CPU while it swept, without the process start (interpreter,
        # imports, config), which the service pays once and not per sweep.
        "sweep_cpu_s": sweep_cpu,
        "startup_cpu_s": round(run.cpu_s - sweep_cpu, 2) if sweep_cpu is not None else None,
        "sweep_cpu_us_per_backup": (
            round(sweep_cpu * 1e6 / backups, 1) if sweep_cpu is not None and backups else None
        ),
        "decide_cpu_us_per_backup": (
            round(decide_cpu * 1e6 / backups, 1) if decide_cpu is not None and backups else None
        ),
        "sweep_wall_s": sweep_wall,
        "sweep_ratio": (
            round(sweep_wall / lower_bound, 3) if sweep_wall is not None and lower_bound else None
        ),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "emulator_cpu_s": emulator_cpu,
        "calls_by_operation": dict(Counter(r["operation"] for r in requests).most_common()),
        "failed_calls": sum(1 for r in requests if r.get("status") != 200),
        "backups_seen": sweep.get("backups_seen"),
        "submitted": sweep.get("submitted"),
        "sweep_error": sweep.get("error_reason"),
        "exit_code": run.returncode,
        "ledger_job_rows_written": writes["job_rows_written"],
        "ledger_attempt_rows_written": writes["attempt_rows_written"],
        "warmup_wall_s": round(warmup.wall_s, 2) if warmup else None,
    }


def print_table(result: dict[str, Any]) -> None:
    width = max(len(key) for key in result)
    for key, value in result.items():
        shown = json.dumps(value) if isinstance(value, dict) else value
        print(f"{key:<{width}}  {shown}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = benchmark(args)
    print_table(result)
    print(json.dumps(result, sort_keys=False), flush=True)
    return 0 if result["exit_code"] == 0 and result["sweep_error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
