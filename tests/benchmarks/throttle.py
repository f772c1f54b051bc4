"""Throttling benchmark: a catch-up against a gateway that throttles the tenant.

The emulator (its own process) limits the tenant to ``--limit`` requests per second counted
over fixed windows of ``--window`` seconds (20/s over 1-minute windows: 1,200 a minute), and
sends no ``Retry-After``, as Huawei's gateway does. The installed ``cbr-replicator --run-once
--wait`` replicates every eligible backup (the emulator finishes a replication within
seconds) and waits for the results. For each ``--rates`` value of ``cloud.requests_per_second``
it reports: whether every backup was replicated exactly once, the API calls, the share of them
answered 429, the wall time and the bound it is measured against (calls / limit: no client can
be answered faster than the gateway allows).

    python -m tests.benchmarks.throttle --eligible 1000 --limit 20 --window 60 \
        --rates 1000,50,20

The last line of the output is one JSON object with a result per rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from daemon.emulator.scenario import DEFAULT_CREDENTIALS, generate_scenario
from tests.benchmarks.sweep import EmulatorProcess

SOURCE_REGION = "cn-north-4"
DESTINATION_REGION = "cn-south-1"
CLI = str(Path(sys.executable).parent / "cbr-replicator")
BACKUPS_PER_VAULT = 100
QUICK_REPLICATION = {"wait_seconds": 1.0, "replicate_seconds": 5.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.throttle")
    parser.add_argument("--eligible", type=int, default=1000, help="backups to replicate")
    parser.add_argument("--limit", type=float, default=20.0, help="gateway requests per second")
    parser.add_argument("--window", type=float, default=60.0, help="throttling window, seconds")
    parser.add_argument("--retry-after", action="store_true", help="the gateway sends one")
    parser.add_argument("--rates", default="1000,50,20", help="requests_per_second values")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workdir", type=Path)
    return parser.parse_args(argv)


def write_scenario(path: Path, eligible: int) -> None:
    vaults = max(1, -(-eligible // BACKUPS_PER_VAULT))
    scenario = generate_scenario(
        vaults,
        BACKUPS_PER_VAULT,
        eligible / (vaults * BACKUPS_PER_VAULT),
        replicated_fraction=0.0,
        source_region=SOURCE_REGION,
        destination_region=DESTINATION_REGION,
    )
    scenario["settings"] = dict(QUICK_REPLICATION)
    path.write_text(json.dumps(scenario), encoding="utf-8")


def write_config(path: Path, url: str, rate: float, args: argparse.Namespace) -> None:
    vaults = max(1, -(-args.eligible // BACKUPS_PER_VAULT))
    document: dict[str, Any] = {
        "ledger": {"url": f"sqlite:///{path.parent / 'ledger.db'}"},
        "cloud": {
            "provider": "huaweicloud",
            "credentials": dict(DEFAULT_CREDENTIALS),
            "endpoints": {"iam": url, "cbr": {SOURCE_REGION: url, DESTINATION_REGION: url}},
            "requests_per_second": rate,
            "concurrency": args.concurrency,
        },
        "log": {"level": "warning"},
        "policies": [
            {
                "name": "catch-up",
                "source": {
                    "region": SOURCE_REGION,
                    "vaults": [f"vault-{index:04d}" for index in range(vaults)],
                },
                "destination": {"region": DESTINATION_REGION, "vault": "dr-vault"},
                "schedule": {"interval": "1h"},
                "max_in_flight": args.eligible + 10,
            }
        ],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)


def start_emulator(scenario: Path, args: argparse.Namespace, log: Path) -> EmulatorProcess:
    """The emulator in its own process, with the gateway's throttling."""
    options = [
        "--throttle-limit",
        str(round(args.limit * args.window)),
        "--throttle-window",
        str(args.window),
    ]
    if args.retry_after:
        options.append("--retry-after")
    return EmulatorProcess(scenario, args.latency_ms, log, options)


def replicated_once(state: dict[str, Any]) -> tuple[int, int]:
    """(source backups with exactly one record to the destination, those with more)."""
    once = more = 0
    for backup in state["backups"].values():
        if backup["image_type"] != "backup":
            continue
        records = [
            record
            for record in backup["replication_records"]
            if record["destination_region"] == DESTINATION_REGION
        ]
        once += len(records) == 1
        more += len(records) > 1
    return once, more


def job_states(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as connection:
        return dict(connection.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))


def measure(rate: float, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One fresh emulator and ledger, one ``--run-once --wait``."""
    run_dir = workdir / f"rate-{rate:g}"
    run_dir.mkdir(parents=True, exist_ok=True)
    scenario = run_dir / "scenario.json"
    write_scenario(scenario, args.eligible)
    emulator = start_emulator(scenario, args, run_dir / "emulator.log")
    try:
        config = run_dir / "config.yaml"
        write_config(config, emulator.url, rate, args)
        command = [CLI, "-c", str(config), "--run-once", "--wait", "--wait-timeout", "1h"]
        environment = {k: v for k, v in os.environ.items() if k != "CBR_REPLICATOR_CONFIG"}
        with (run_dir / "run.log").open("w") as log:
            started = time.perf_counter()
            finished = subprocess.run(command, stdout=log, stderr=log, env=environment, check=False)
            wall = time.perf_counter() - started
        requests = emulator.admin("GET", "requests")["requests"]
        once, more = replicated_once(emulator.admin("GET", "state"))
        duplicates = emulator.admin("GET", "duplicates")["duplicates"]
    finally:
        emulator.stop()
    statuses = Counter(entry["status"] for entry in requests)
    calls = len(requests)
    answered = calls - statuses.get(429, 0)
    bound = answered / args.limit
    return {
        "requests_per_second": rate,
        "exit_code": finished.returncode,
        "replicated_once": once,
        "replicated_more_than_once": more,
        "duplicates": len(duplicates),
        "jobs": job_states(run_dir / "ledger.db"),
        "calls": calls,
        "calls_answered": answered,
        "throttled_429": statuses.get(429, 0),
        "throttled_share": round(statuses.get(429, 0) / calls, 4) if calls else 0.0,
        "calls_by_operation": dict(Counter(entry["operation"] for entry in requests)),
        "wall_s": round(wall, 1),
        "bound_s": round(bound, 1),
        "ratio": round(wall / bound, 2) if bound else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cbr-throttle-"))
    results = [measure(float(rate), args, workdir) for rate in args.rates.split(",")]
    print(
        f"{'rps':>6} {'exit':>4} {'once':>5} {'dup':>4} {'calls':>6} {'429':>5} "
        f"{'429 %':>6} {'wall s':>7} {'bound s':>8} {'ratio':>6}"
    )
    for result in results:
        print(
            f"{result['requests_per_second']:>6g} {result['exit_code']:>4} "
            f"{result['replicated_once']:>5} {result['duplicates']:>4} {result['calls']:>6} "
            f"{result['throttled_429']:>5} {100 * result['throttled_share']:>5.1f}% "
            f"{result['wall_s']:>7} {result['bound_s']:>8} {result['ratio']:>6}"
        )
    summary = {
        "eligible": args.eligible,
        "limit_per_second": args.limit,
        "window_s": args.window,
        "retry_after": args.retry_after,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        "results": results,
    }
    print(json.dumps(summary))
    ok = all(
        r["exit_code"] == 0 and r["replicated_once"] == args.eligible and not r["duplicates"]
        for r in results
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
