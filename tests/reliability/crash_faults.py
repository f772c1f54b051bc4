"""T1 of docs/design.md §13: kill -9 and injected API faults against the real process.

    python -m tests.reliability.crash_faults --profile ci|full [--fault-scale 2]
        [--ledger-url URL] [--blind-retry] [--seed N] [--lanes N] [--workdir DIR] [--keep]
    (or python tests/reliability/crash_faults.py ..., with the package installed)

The CBR emulator runs in its own process, *permissive* (no 1009 guard, so a client that posts
twice makes two replicas), with the fault rates of docs/design.md §13 (``--fault-scale``
multiplies them). Three source vaults replicate to two destination regions (two policies).
The real ``cbr-replicator --run-once`` process is started over and over, ``--lanes`` at a
time (so two processes also meet on the ledger's leases), with a 3 s lease and 1 s timeouts.
Each start is killed with SIGKILL a random 0.2-1.2 s after it began its work (counted from
when it opened the ledger or a socket, read in /proc: imports take about a second), or kills
itself at a named point of the protocol (``CBR_REPLICATOR_TEST_CRASH_AT``: after claim,
reconcile, intent, POST), or is left to finish; some also follow their work (``--wait``).
One new backup appears in a source vault before each start, so there is always work to cut
into. Then the faults are switched off and ``--run-once --wait`` runs until every job is
terminal, and the oracle checks: no duplicate replica in the emulator, a replica for every
eligible (backup, region) pair, every ledger job terminal with the replica the cloud made,
``PRAGMA integrity_check`` ok (PostgreSQL: no doubled job key), no traceback, no run ended
by an escaped error, no unexpected exit code (0, 1, 4 and 75 are a run's own verdicts: a
sweep an API fault stopped, a policy another process was sweeping, a --wait that ran out,
the cloud unreachable), no hung process.

``--blind-retry`` is the negative control: this script itself posts ``replicate`` through the
SDK adapter and, after any failed POST, posts again without reading the backup first. It must
show duplicates, proving that the oracle can fail.

Prints a table, then as its last line one JSON object. Exit 0 when the oracle holds (with
``--blind-retry``: when duplicates were found), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from daemon.emulator.faults import base_faults

SOURCE_REGION = "cn-north-4"
DESTINATIONS = {"cn-south-1": "dr-south", "ap-southeast-1": "dr-apac"}
SOURCE_VAULTS = ("vault-a", "vault-b", "vault-c")
# policy -> (source vaults, destination region)
POLICIES = {
    "to-south": (SOURCE_VAULTS, "cn-south-1"),
    "to-apac": (SOURCE_VAULTS[:2], "ap-southeast-1"),
}
NAMED_POINTS = ("after_claim", "after_reconcile", "after_intent", "after_post")
CRASH_ENV = "CBR_REPLICATOR_TEST_CRASH_AT"
CONNECT_TIMEOUT = 1  # seconds (the config takes whole seconds)
READ_TIMEOUT = 1
LEASE_SECONDS = 3  # > connect + read timeout (the config requires it)
SLOW_SECONDS = 2.0  # a slow answer arrives after the client's read timeout
TRACEBACK = "Traceback (most recent call last)"
# What the CLI prints when an error escaped the run and ended it (cli._errors_as_exit_codes);
# a sweep that an API fault stopped prints its policy line and goes on with the next policy.
ABORTED = (
    "cloud error:",
    "cloud unreachable or throttled after retries:",
    "permission denied by the cloud:",
    "ledger:",
)
# Exit codes a run may end with under faults: ok, a policy/job failed, its --wait ran out
# with work unfinished, cloud unreachable.
EXPECTED_EXITS = frozenset({0, 1, 4, 75})
TERMINAL = ("succeeded", "given_up")


@dataclass(frozen=True)
class Profile:
    starts: int  # at least this many process starts
    min_kills: int  # and at least this many kills (more starts until reached)
    max_starts: int  # but never more starts than this
    initial_per_vault: int  # backups in each source vault at the beginning
    lanes: int  # processes running at once
    random_share: float = 0.5  # starts killed at a random time
    named_share: float = 0.35  # starts killing themselves at a named point; the rest finish
    named_cap: float | None = None  # kill a named start that has not died this long after
    # Starts that also follow their submissions (``--wait``): tracking, reconciling and
    # submitting outside the sweep lease, beside the other lanes' sweeps.
    wait_share: float = 0.0


PROFILES = {
    "ci": Profile(
        starts=60,
        min_kills=30,
        max_starts=80,
        initial_per_vault=6,
        lanes=3,
        random_share=0.65,
        named_share=0.3,
        named_cap=3.0,
    ),
    "full": Profile(
        starts=400, min_kills=200, max_starts=520, initial_per_vault=10, lanes=2, wait_share=0.2
    ),
}


# -- the emulator, in its own process --------------------------------------------------------


def backup_item(name: str, kind: str) -> dict[str, Any]:
    """A server backup with system-disk data, or one of the ineligible kinds."""
    item: dict[str, Any] = {
        "name": name,
        "resource_type": "OS::Nova::Server",
        "status": "available",
        "resource_size": 40,
        "extend_info": {"contain_system_disk": True},
    }
    if kind == "volume":
        item["resource_type"] = "OS::Cinder::Volume"
        item["extend_info"] = {}
    elif kind == "no_system_disk":
        item["extend_info"] = {"contain_system_disk": False}
    elif kind == "creating":
        item["status"] = "creating"
    return item


def pick_kind(rng: random.Random) -> str:
    """Four in five new backups are eligible."""
    if rng.random() < 0.8:
        return "eligible"
    return rng.choice(("volume", "no_system_disk", "creating"))


def scenario(
    initial_per_vault: int,
    rng: random.Random,
    credentials: dict[str, str],
    source_vaults: Sequence[str] = SOURCE_VAULTS,
) -> dict[str, Any]:
    """The emulator's world: source vaults with their first backups, one replication vault
    per destination region (the failover script uses more source vaults)."""
    vaults = [
        {
            "name": vault,
            "backups": [
                backup_item(f"{vault}-init-{index:03d}", pick_kind(rng))
                for index in range(initial_per_vault)
            ],
        }
        for vault in source_vaults
    ]
    regions: dict[str, Any] = {
        SOURCE_REGION: {"replication_destinations": list(DESTINATIONS), "vaults": vaults}
    }
    for region, vault in DESTINATIONS.items():
        regions[region] = {"vaults": [{"name": vault, "protect_type": "replication"}]}
    return {
        "credentials": credentials,
        # Replications finish in about a second of real time.
        "settings": {"wait_seconds": 0.2, "replicate_seconds": 1.0, "fail_rate": 0.0},
        "regions": regions,
    }


class EmulatorProcess:
    """``python -m daemon.emulator`` as a child process, driven through its admin API."""

    def __init__(self, scenario_file: Path, seed: int, log_file: Path) -> None:
        self._log = log_file.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon.emulator",
                "--scenario",
                str(scenario_file),
                "--listen",
                "127.0.0.1:0",
                "--permissive",
                "--seed",
                str(seed),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(f"the emulator did not start (see {log_file})")
        self.url = line

    def admin(self, method: str, name: str, data: Any = None) -> Any:
        body = json.dumps(data).encode() if data is not None else None
        request = urllib.request.Request(
            f"{self.url}/__emulator__/{name}", data=body, method=method
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def set_faults(self, faults: dict[str, Any]) -> None:
        self.admin("PUT", "faults", faults)

    def add_backup(self, vault_id: str, item: dict[str, Any]) -> None:
        self.admin("POST", "backups", {**item, "vault_id": vault_id})

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.admin("GET", "state")
        return state

    def duplicates(self) -> list[dict[str, Any]]:
        duplicates: list[dict[str, Any]] = self.admin("GET", "duplicates")["duplicates"]
        return duplicates

    def replicate_posts(self) -> int:
        return len(self.admin("GET", "requests?operation=replicate_backup")["requests"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def fault_config(scale: float) -> dict[str, Any]:
    return {**base_faults(scale), "slow_seconds": SLOW_SECONDS}


def vault_ids(state: dict[str, Any]) -> dict[str, str]:
    """Source vault name -> id."""
    regions = {pid: project["region"] for pid, project in state["projects"].items()}
    return {
        vault["name"]: vault_id
        for vault_id, vault in state["vaults"].items()
        if regions[vault["project_id"]] == SOURCE_REGION
    }


# -- the oracle ------------------------------------------------------------------------------


def is_eligible(backup: dict[str, Any]) -> bool:
    contains = backup["extend_info"].get("contain_system_disk")
    system_disk = (
        contains is True
        if contains is not None
        else any(child["extend_info"].get("bootable") is True for child in backup["children"])
    )
    return (
        backup["image_type"] == "backup"
        and backup["resource_type"] == "OS::Nova::Server"
        and backup["status"] == "available"
        and system_disk
    )


def eligible_pairs(state: dict[str, Any]) -> set[tuple[str, str]]:
    """(source backup id, destination region) for every eligible backup a policy covers."""
    ids = vault_ids(state)
    pairs: set[tuple[str, str]] = set()
    for vaults, region in POLICIES.values():
        wanted = {ids[name] for name in vaults}
        pairs.update(
            (backup_id, region)
            for backup_id, backup in state["backups"].items()
            if backup["vault_id"] in wanted and is_eligible(backup)
        )
    return pairs


def replicated_pairs(state: dict[str, Any]) -> set[tuple[str, str]]:
    """Pairs with a finished replica that still exists."""
    return {
        (entry["source_backup_id"], entry["destination_region"])
        for entry in state["replica_log"]
        if entry["replica_id"] in state["backups"]
    }


@dataclass
class LedgerFacts:
    jobs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    non_terminal: int = 0
    succeeded_without_replica: int = 0
    integrity: str = "n/a"


def ledger_facts(url: str) -> tuple[LedgerFacts, dict[tuple[str, str], str | None]]:
    """Counts by state, the integrity check, and each succeeded job's replica id."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    facts = LedgerFacts()
    replicas: dict[tuple[str, str], str | None] = {}
    try:
        with engine.connect() as connection:
            query = "SELECT source_backup_id, destination_region, state, replica_backup_id"
            rows = connection.execute(text(f"{query} FROM jobs")).all()
            if engine.dialect.name == "sqlite":
                facts.integrity = str(connection.exec_driver_sql("PRAGMA integrity_check").scalar())
            else:  # the server is never killed; what a killed client could break is the keys
                doubled = connection.execute(
                    text(
                        "SELECT COUNT(*) FROM (SELECT 1 FROM jobs GROUP BY source_backup_id, "
                        "destination_region HAVING COUNT(*) > 1) AS doubled"
                    )
                ).scalar()
                facts.integrity = "ok" if doubled == 0 else f"{doubled} doubled job keys"
    finally:
        engine.dispose()
    states: Counter[str] = Counter()
    for backup_id, region, state, replica_id in rows:
        states[state] += 1
        if state == "succeeded":
            replicas[(backup_id, region)] = replica_id
            if not replica_id:
                facts.succeeded_without_replica += 1
    facts.jobs = len(rows)
    facts.states = dict(sorted(states.items()))
    facts.non_terminal = sum(count for state, count in states.items() if state not in TERMINAL)
    return facts, replicas


def ledger_is_empty(url: str) -> bool:
    from sqlalchemy import create_engine, inspect, make_url, text

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
        return True  # the daemon creates it (and its directory); sqlite3 would refuse to
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("jobs"):
                return True
            return int(connection.execute(text("SELECT count(*) FROM jobs")).scalar_one()) == 0
    finally:
        engine.dispose()


# -- one start of the real process ------------------------------------------------------------


@dataclass
class Start:
    number: int
    mode: str  # "random", a named point, or "finish"
    killed_by: str | None = None  # "random" or the named point, when it died by SIGKILL
    exit_code: int | None = None
    seconds: float = 0.0
    traceback: bool = False
    aborted: bool = False
    hung: bool = False


def cli_command() -> list[str]:
    entry = Path(sys.executable).parent / "cbr-replicator"
    return [str(entry)] if entry.exists() else [sys.executable, "-m", "daemon"]


def child_environment(workdir: Path, crash_at: str | None) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"CBR_REPLICATOR_CONFIG", CRASH_ENV}
    }
    environment["HOME"] = str(workdir / "home")  # the SDK writes $HOME/.huaweicloud
    if crash_at is not None:
        environment[CRASH_ENV] = crash_at
    return environment


def began_work(pid: int, ledger_path: str | None) -> bool:
    """Has the process finished starting up (imports, config) and opened the ledger or a
    connection? Read from /proc: the process itself says nothing until its sweep ends."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:") or (ledger_path and target == ledger_path):
            return True
    return False


class Runner:
    """Starts, watches and kills ``cbr-replicator --run-once`` processes."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        ledger_path: str | None,
        rng: random.Random,
        profile: Profile,
    ) -> None:
        self.profile = profile
        self.config = config
        self.workdir = workdir
        self.ledger_path = ledger_path
        self.rng = rng
        self.rng_lock = threading.Lock()
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)

    def choose_mode(self) -> tuple[str, float, bool]:
        with self.rng_lock:
            draw = self.rng.random()
            delay = self.rng.uniform(0.2, 1.2)
            point = self.rng.choice(NAMED_POINTS)
            follow = self.rng.random() < self.profile.wait_share
        if draw < self.profile.random_share:
            return "random", delay, follow
        if draw < self.profile.random_share + self.profile.named_share:
            return point, 0.0, follow
        return "finish", 0.0, follow

    def start(self, number: int, *, wait: bool = False, mode: str | None = None) -> Start:
        chosen, delay, follow = self.choose_mode()
        mode = mode or chosen
        crash_at = mode if mode in NAMED_POINTS else None
        arguments = [*cli_command(), "-c", str(self.config), "--log-format", "json", "--run-once"]
        if wait:
            arguments += ["--wait", "--wait-timeout", "120s"]
        elif follow:
            arguments += ["--wait", "--wait-timeout", "6s"]
        log_path = self.logs / f"{number:04d}-{mode}.log"
        began = time.monotonic()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                arguments,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment(self.workdir, crash_at),
            )
            result = Start(number=number, mode=mode)
            capped = False
            if mode == "random":
                self._kill_after_start(process, delay)
            elif crash_at is not None and self.profile.named_cap is not None:
                capped = self._kill_after_start(process, self.profile.named_cap)
            try:
                process.wait(timeout=300 if wait else 90)
            except subprocess.TimeoutExpired:
                result.hung = True
                process.kill()
                process.wait()
        result.seconds = time.monotonic() - began
        result.exit_code = process.returncode
        if process.returncode == -signal.SIGKILL and not result.hung:
            result.killed_by = "cap" if capped else mode
        output = log_path.read_text(errors="replace")
        result.traceback = TRACEBACK in output
        result.aborted = any(line.startswith(ABORTED) for line in output.splitlines())
        return result

    def _kill_after_start(self, process: subprocess.Popen[bytes], delay: float) -> bool:
        """SIGKILL ``delay`` seconds after the process began its work, unless it exited
        first; True when this sent the signal."""
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            if began_work(process.pid, self.ledger_path):
                break
            time.sleep(0.02)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            return True
        return False


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Totals:
    starts: list[Start] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    added: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def kills(self) -> int:
        return sum(1 for start in self.starts if start.killed_by)


def write_config(path: Path, url: str, ledger_url: str, credentials: dict[str, str]) -> None:
    document = {
        "ledger": {"url": ledger_url},
        "cloud": {
            "provider": "huaweicloud",
            "credentials": {
                "access_key": credentials["access_key"],
                "secret_key": credentials["secret_key"],
                "domain_id": credentials["domain_id"],
            },
            "endpoints": {
                "iam": url,
                "cbr": dict.fromkeys([SOURCE_REGION, *DESTINATIONS], url),
            },
            "connect_timeout": f"{CONNECT_TIMEOUT}s",
            "timeout": f"{READ_TIMEOUT}s",
            "lease": f"{LEASE_SECONDS}s",
            "requests_per_second": 200,
            "concurrency": 4,
        },
        "log": {"level": "warning"},
        "defaults": {
            "retry": {"max_attempts": 50, "initial_backoff": "1s", "max_backoff": "5s"},
            "max_in_flight": 20,
        },
        "policies": [
            {
                "name": name,
                "source": {"region": SOURCE_REGION, "vaults": list(vaults)},
                "destination": {"region": region, "vault": DESTINATIONS[region]},
                "schedule": {"interval": "1m"},
            }
            for name, (vaults, region) in POLICIES.items()
        ],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)


def crash_phase(
    profile: Profile,
    runner: Runner,
    *,
    emulator: EmulatorProcess,
    vaults: dict[str, str],
    rng: random.Random,
    lanes: int,
) -> Totals:
    """Lanes of starts; one new backup appears in a random source vault before each start."""
    totals = Totals()
    began = time.monotonic()
    counter = iter(range(1, 10**6))

    def next_number() -> int | None:
        with totals.lock:
            done = len(totals.starts)
            enough = done >= profile.starts and totals.kills() >= profile.min_kills
            if enough or done >= profile.max_starts:
                return None
            number = next(counter)
            if number > profile.max_starts:
                return None
            vault = rng.choice(SOURCE_VAULTS)
            kind = pick_kind(rng)
            totals.added[kind] += 1
        emulator.add_backup(vaults[vault], backup_item(f"{vault}-new-{number:04d}", kind))
        return number

    def lane() -> None:
        while (number := next_number()) is not None:
            start = runner.start(number)
            with totals.lock:
                totals.starts.append(start)

    threads = [threading.Thread(target=lane, name=f"lane-{i}") for i in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals.starts.sort(key=lambda start: start.number)
    totals.seconds = time.monotonic() - began
    return totals


def final_phase(
    runner: Runner, emulator: EmulatorProcess, ledger_url: str, first_number: int
) -> list[Start]:
    """Faults off; ``--run-once --wait`` until every job is terminal and every pair has its
    replica (killed runs' leases expire meanwhile: they are a few seconds long)."""
    emulator.set_faults({})
    runs: list[Start] = []
    for attempt in range(6):
        runs.append(runner.start(first_number + attempt, wait=True, mode="finish"))
        facts, _ = ledger_facts(ledger_url)
        state = emulator.state()
        missing = eligible_pairs(state) - replicated_pairs(state)
        if facts.non_terminal == 0 and not missing:
            break
        time.sleep(LEASE_SECONDS)
    return runs


def blind_retry(
    emulator: EmulatorProcess,
    credentials: dict[str, str],
    profile: Profile,
    rng: random.Random,
    totals: Totals,
    *,
    faults: dict[str, Any],
) -> Counter[str]:
    """The negative control: post every eligible pair, and after a failed POST post again at
    once, never reading the backup first (what the intent + reconcile protocol forbids).
    As many backups are added as the crash test adds, so the job counts are alike.
    The faults are switched on only after the setup reads (projects, vaults): the control is
    about the POSTs, and a vault listing faulted on all its five attempts (0.31^5 each, so
    about one run in 170; CI met one) would end the control before its first POST."""
    import logging

    from pydantic import SecretStr

    from daemon.adapters.cloud.client import HuaweiCloud
    from daemon.adapters.cloud.options import CloudOptions, Credentials
    from daemon.core.errors import AmbiguousError, CloudError, PermanentError, TransientError
    from daemon.core.model import Destination, ReplicaSpec

    state = emulator.state()
    vaults = vault_ids(state)
    outcomes: Counter[str] = Counter()
    for number in range(profile.starts):
        vault = rng.choice(SOURCE_VAULTS)
        kind = pick_kind(rng)
        totals.added[kind] += 1
        emulator.add_backup(vaults[vault], backup_item(f"{vault}-new-{number:04d}", kind))
    logging.disable(logging.CRITICAL)  # the SDK logs an error for each injected reset
    url = emulator.url
    cloud = HuaweiCloud(
        Credentials(
            access_key=SecretStr(credentials["access_key"]),
            secret_key=SecretStr(credentials["secret_key"]),
            domain_id=credentials["domain_id"],
        ),
        CloudOptions(
            cbr_endpoints=dict.fromkeys([SOURCE_REGION, *DESTINATIONS], url),
            iam_endpoint=url,
            connect_timeout=_seconds(CONNECT_TIMEOUT),
            read_timeout=_seconds(READ_TIMEOUT),
            requests_per_second=200,
        ),
    )
    source_project = cloud.resolve_project(SOURCE_REGION)
    targets: dict[str, Destination] = {}
    for region, vault_name in DESTINATIONS.items():
        project = cloud.resolve_project(region)
        found = cloud.find_vault(region, project, vault_name)
        targets[region] = Destination(region, project, found.id)
    emulator.set_faults(faults)
    for backup_id, region in sorted(eligible_pairs(emulator.state())):
        replica = ReplicaSpec(
            name=f"blind-{backup_id[:8]}", description="", enable_acceleration=False
        )
        for _ in range(10):
            try:
                cloud.replicate_backup(
                    SOURCE_REGION, source_project, backup_id, targets[region], replica
                )
            except (AmbiguousError, TransientError):
                outcomes["retried"] += 1
                continue  # blind: post again, no reconcile
            except PermanentError:
                outcomes["refused"] += 1
            except CloudError:
                outcomes["other_error"] += 1
            else:
                outcomes["accepted"] += 1
            break
    return outcomes


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)


def wait_for_replications(emulator: EmulatorProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and emulator.state()["pending"]:
        time.sleep(0.5)


# -- report -----------------------------------------------------------------------------------


def summarize(
    args: argparse.Namespace,
    profile: Profile,
    *,
    totals: Totals,
    finals: list[Start],
    emulator: EmulatorProcess,
    ledger_url: str | None,
    wall: float,
    blind: Counter[str] | None,
) -> dict[str, Any]:
    state = emulator.state()
    pairs = eligible_pairs(state)
    made = replicated_pairs(state)
    duplicates = emulator.duplicates()
    kills_by_point = Counter(start.killed_by for start in totals.starts if start.killed_by)
    named_missed = Counter(
        start.mode
        for start in totals.starts
        if start.mode in NAMED_POINTS and start.killed_by in (None, "cap") and not start.hung
    )
    every = [*totals.starts, *finals]
    exits = Counter(
        str(start.exit_code) for start in every if not start.killed_by and not start.hung
    )
    unexpected = sum(
        1
        for start in every
        if not start.killed_by and not start.hung and start.exit_code not in EXPECTED_EXITS
    )
    summary: dict[str, Any] = {
        "profile": args.profile,
        "mode": "blind-retry" if blind is not None else "intent+reconcile",
        "fault_scale": args.fault_scale,
        "fault_rates": {
            k: v for k, v in fault_config(args.fault_scale).items() if k.endswith("_rate")
        },
        "lanes": args.lanes or profile.lanes,
        "starts": len(totals.starts),
        "kills": sum(kills_by_point.values()),
        "kills_by_point": dict(sorted(kills_by_point.items())),
        "named_points_not_reached": dict(sorted(named_missed.items())),
        "exit_codes": dict(sorted(exits.items())),
        "unexpected_exits": unexpected,
        "tracebacks": sum(1 for start in every if start.traceback),
        "aborted_runs": sum(1 for start in every if start.aborted),
        "hung": sum(1 for start in every if start.hung),
        "final_runs": len(finals),
        "backups_added": dict(sorted(totals.added.items())),
        "eligible_pairs": len(pairs),
        "replicas": len(made),
        "replicate_posts": emulator.replicate_posts(),
        "duplicates": len(duplicates),
        "missing": len(pairs - made),
    }
    if blind is not None:
        summary.update(jobs=len(pairs), blind_outcomes=dict(blind), integrity="n/a")
    else:
        assert ledger_url is not None
        facts, replica_ids = ledger_facts(ledger_url)
        wrong_replica = sum(
            1
            for key, replica_id in replica_ids.items()
            if replica_id not in state["backups"] or key not in made
        )
        summary.update(
            jobs=facts.jobs,
            job_states=facts.states,
            non_terminal=facts.non_terminal,
            succeeded_without_replica=facts.succeeded_without_replica,
            succeeded_replica_unknown=wrong_replica,
            integrity=facts.integrity,
            ledger="sqlite" if ledger_url.startswith("sqlite") else "postgresql",
        )
    summary["seconds_by_mode"] = {
        mode: round(sum(s.seconds for s in every if s.mode == mode) / count, 2)
        for mode, count in Counter(s.mode for s in every).items()
    }
    summary["final_phase_s"] = round(sum(start.seconds for start in finals), 1)
    summary["crash_phase_s"] = round(totals.seconds, 1)
    summary["duplicate_examples"] = duplicates[:3]
    summary["wall_s"] = round(wall, 1)
    summary["ok"] = passed(summary)
    return summary


def passed(summary: dict[str, Any]) -> bool:
    if summary["mode"] == "blind-retry":
        return bool(summary["duplicates"] > 0)
    return bool(
        summary["duplicates"] == 0
        and summary["missing"] == 0
        and summary["non_terminal"] == 0
        and summary["succeeded_without_replica"] == 0
        and summary["succeeded_replica_unknown"] == 0
        and summary["integrity"] in ("ok", "n/a")
        and summary["tracebacks"] == 0
        and summary["aborted_runs"] == 0
        and summary["unexpected_exits"] == 0
        and summary["hung"] == 0
    )


def print_table(summary: dict[str, Any]) -> None:
    def line(label: str, value: object, detail: str = "") -> None:
        print(f"  {label:<22} {value!s:<8} {detail}".rstrip())

    def pairs(values: dict[str, Any]) -> str:
        return ", ".join(f"{key} {value}" for key, value in values.items())

    print(
        f"T1 crash + faults: profile {summary['profile']}, {summary['mode']}, "
        f"fault scale {summary['fault_scale']:g}, {summary['lanes']} lane(s)"
    )
    line("starts", summary["starts"], f"(+{summary['final_runs']} final fault-free)")
    line("kills", summary["kills"], pairs(summary["kills_by_point"]))
    if summary["named_points_not_reached"]:
        line("named, not reached", "", pairs(summary["named_points_not_reached"]))
    line("exits (not killed)", sum(summary["exit_codes"].values()), pairs(summary["exit_codes"]))
    line("tracebacks", summary["tracebacks"])
    line("aborted runs", summary["aborted_runs"], "(an error escaped and ended the run)")
    line("jobs", summary["jobs"], pairs(summary.get("job_states", {})))
    line("eligible pairs", summary["eligible_pairs"])
    line("replicate POSTs", summary["replicate_posts"])
    line("replicas", summary["replicas"])
    line("duplicates", summary["duplicates"])
    line("missing", summary["missing"])
    if "non_terminal" in summary:
        line("non-terminal jobs", summary["non_terminal"])
    line("integrity", summary["integrity"])
    line("wall", f"{summary['wall_s']} s")
    line("result", "PASS" if summary["ok"] else "FAIL")


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.crash_faults", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    parser.add_argument("--fault-scale", type=float, default=1.0, help="multiply the rates")
    parser.add_argument("--ledger-url", help="an empty ledger database (default: SQLite)")
    parser.add_argument("--blind-retry", action="store_true", help="the negative control")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--lanes", type=int, default=None, help="processes at once")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crash-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "home").mkdir(exist_ok=True)
    credentials = {
        "access_key": f"AK{rng.randrange(10**12):012d}",
        "secret_key": f"SK-canary-{rng.randrange(10**12):012d}",
        "domain_id": "crash-faults-domain",
    }
    scenario_file = workdir / "scenario.yaml"
    scenario_file.write_text(yaml.safe_dump(scenario(profile.initial_per_vault, rng, credentials)))
    began = time.monotonic()
    emulator = EmulatorProcess(scenario_file, seed, workdir / "emulator.log")
    try:
        if args.blind_retry:
            totals = Totals()
            faults = fault_config(args.fault_scale)
            blind = blind_retry(emulator, credentials, profile, rng, totals, faults=faults)
            wait_for_replications(emulator)
            summary = summarize(
                args,
                profile,
                totals=totals,
                finals=[],
                emulator=emulator,
                ledger_url=None,
                wall=time.monotonic() - began,
                blind=blind,
            )
        else:
            emulator.set_faults(fault_config(args.fault_scale))
            summary = run_crash_test(
                args,
                profile,
                emulator=emulator,
                workdir=workdir,
                credentials=credentials,
                rng=rng,
                began=began,
            )
    finally:
        emulator.stop()
    summary["seed"] = seed
    print_table(summary)
    if summary["ok"] and not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        summary["workdir"] = str(workdir)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0 if summary["ok"] else 1


def run_crash_test(
    args: argparse.Namespace,
    profile: Profile,
    *,
    emulator: EmulatorProcess,
    workdir: Path,
    credentials: dict[str, str],
    rng: random.Random,
    began: float,
) -> dict[str, Any]:
    ledger_url = args.ledger_url or f"sqlite:///{workdir / 'ledger.db'}"
    if args.ledger_url and not ledger_is_empty(args.ledger_url):
        raise SystemExit("--ledger-url: the ledger must be empty (the oracle counts its jobs)")
    ledger_path = str(workdir / "ledger.db") if not args.ledger_url else None
    config = workdir / "config.yaml"
    write_config(config, emulator.url, ledger_url, credentials)
    runner = Runner(config, workdir, ledger_path, rng, profile)
    vaults = vault_ids(emulator.state())
    totals = crash_phase(
        profile,
        runner,
        emulator=emulator,
        vaults=vaults,
        rng=rng,
        lanes=args.lanes or profile.lanes,
    )
    finals = final_phase(runner, emulator, ledger_url, len(totals.starts) + 1)
    return summarize(
        args,
        profile,
        totals=totals,
        finals=finals,
        emulator=emulator,
        ledger_url=ledger_url,
        wall=time.monotonic() - began,
        blind=None,
    )


if __name__ == "__main__":
    sys.exit(main())
