"""Several daemon instances on one PostgreSQL ledger, one killed with SIGKILL (issue 8).

    python -m tests.reliability.ha_failover --profile ci|full [--fault-scale 1] [--seed N]
        [--postgres-url ADMIN_URL] [--workdir DIR] [--keep]

A database of its own is created in the PostgreSQL server (``--postgres-url``, default
``$CBR_TEST_POSTGRES_URL`` or the local ``test`` database) and dropped at the end. The CBR
emulator runs in its own process, *permissive* (no 1009 guard: a job posted twice makes two
replicas), with the fault rates of docs/design.md §13. Three real daemons (``cbr-replicator``
with no command, a fake ``NOTIFY_SOCKET`` each) share the ledger and sweep the same six
policies; each believes it runs on a host of its own (``ha-1``, ``ha-2``...; the host name is
part of the instance id), so none can tell that another died: a dead instance's leases must be
waited out, as between real hosts. New backups keep appearing in the source vaults.

Once an instance holds a sweep lease and jobs in flight (a claimed job whose intent is
written, its POST under way), it is killed with SIGKILL. The others keep going; the script
measures when each policy the dead instance was sweeping is swept again by another instance
(``takeover_s``: never before the dead lease expired, and within 2x the lease), and when each
job it held was taken on. The full profile kills three times, starting a replacement instance
(a new host) after each takeover. Then new backups stop and the survivors finish the work
(full: with the faults still on; ci: without, so that the suite's run stays short). The
oracle: no duplicate replica, a replica for every eligible (backup, region) pair, every job
terminal, one vault binding per (vault, region), every takeover after the dead lease expired
and within 2x the lease, every job the dead instance held taken on, ``status`` listing every
instance, no traceback, the survivors stop cleanly (exit 0 on SIGTERM).

Prints a table, then as its last line one JSON object (``instances``, ``kills``, ``jobs``,
``duplicates``, ``missing``, ``takeover_s`` and more). Exit 0 when the oracle holds, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tests.postgres_support import POSTGRES_ADMIN, ThrowawayDatabase
from tests.reliability.crash_faults import (
    DESTINATIONS,
    SOURCE_REGION,
    EmulatorProcess,
    backup_item,
    fault_config,
    is_eligible,
    pick_kind,
    replicated_pairs,
    scenario,
)

ROOT = Path(__file__).resolve().parents[2]
SOURCE_VAULTS = ("vault-a", "vault-b", "vault-c", "vault-d", "vault-e", "vault-f")
# policy -> (source vaults, destination region): every vault goes to both regions, through
# six policies, so three instances have several policies each to sweep.
POLICIES = {
    "south-ab": (("vault-a", "vault-b"), "cn-south-1"),
    "south-c": (("vault-c",), "cn-south-1"),
    "south-def": (("vault-d", "vault-e", "vault-f"), "cn-south-1"),
    "apac-ace": (("vault-a", "vault-c", "vault-e"), "ap-southeast-1"),
    "apac-bd": (("vault-b", "vault-d"), "ap-southeast-1"),
    "apac-f": (("vault-f",), "ap-southeast-1"),
}
CONNECT_TIMEOUT = 1  # seconds
READ_TIMEOUT = 1
SLOW_SECONDS = 2.0  # a slow answer comes after the client's read timeout: an ambiguous POST
TRACEBACK = "Traceback (most recent call last)"
TERMINAL = ("succeeded", "given_up")
# The daemon, made to believe it runs on the host named in CBR_HA_HOST: the host name is the
# first part of its instance id, and a lease holder of another host is never "gone".
HOST_SHIM = (
    "import os, runpy, socket, sys; "
    "socket.gethostname = lambda: os.environ['CBR_HA_HOST']; "
    "sys.argv[0] = 'cbr-replicator'; "
    "runpy.run_module('daemon', run_name='__main__', alter_sys=True)"
)


@dataclass(frozen=True)
class Profile:
    kills: int  # instances killed, one after the other
    initial_per_vault: int  # backups in each source vault at the start
    lease_s: int  # cloud.lease: job claims and sweep leases
    interval: str  # every policy's schedule
    warmup_s: float  # run this long before looking for a moment to kill
    after_takeover_s: float  # then this long before the next kill (with a replacement)
    feed_every_s: float  # a new backup in a random source vault this often
    settle_s: float  # at most this long for the survivors to finish the work
    latency_ms: int  # added to every API request: sweeps and POSTs take a while
    settle_faults: bool  # faults stay on while the survivors finish the work


PROFILES = {
    "ci": Profile(
        kills=1,
        initial_per_vault=5,
        lease_s=6,
        interval="4s",
        warmup_s=1.0,
        after_takeover_s=0.0,
        feed_every_s=0.25,
        settle_s=60.0,
        latency_ms=20,
        settle_faults=False,
    ),
    "full": Profile(
        kills=3,
        initial_per_vault=15,
        lease_s=8,
        interval="5s",
        warmup_s=5.0,
        after_takeover_s=8.0,
        feed_every_s=0.1,
        settle_s=420.0,
        latency_ms=30,
        settle_faults=True,
    ),
}


def utc_now() -> datetime:
    return datetime.now(UTC)


# -- PostgreSQL --------------------------------------------------------------------------------


@dataclass
class Holding:
    """What one instance holds at a moment: live sweep leases and leased jobs by state."""

    leases: dict[str, datetime] = field(default_factory=dict)
    jobs: Counter[str] = field(default_factory=Counter)


class Probe:
    """Reads the shared ledger as an operator would (plain SQL, its own connections)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(url, pool_size=2, max_overflow=2)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params).all())

    def holdings(self, now: datetime) -> dict[str, Holding]:
        held: dict[str, Holding] = {}
        for name, owner, expires in self.rows(
            "SELECT name, owner, expires_at FROM leases WHERE expires_at > :now", now=now
        ):
            held.setdefault(owner, Holding()).leases[name] = expires
        for owner, state, count in self.rows(
            "SELECT lease_owner, state, count(*) FROM jobs WHERE lease_expires_at > :now "
            "GROUP BY lease_owner, state",
            now=now,
        ):
            held.setdefault(owner, Holding()).jobs[state] += int(count)
        return held

    def leases_of(self, owner: str) -> dict[str, datetime]:
        rows = self.rows("SELECT name, expires_at FROM leases WHERE owner = :o", o=owner)
        return {str(name): expires for name, expires in rows}

    def jobs_of(self, owner: str, after: datetime) -> dict[tuple[str, str], str]:
        rows = self.rows(
            "SELECT source_backup_id, destination_region, state FROM jobs "
            "WHERE lease_owner = :o AND lease_expires_at > :after",
            o=owner,
            after=after,
        )
        return {(backup, region): state for backup, region, state in rows}

    def first_sweep_after(self, policy: str, moment: datetime) -> datetime | None:
        rows = self.rows(
            "SELECT min(started_at) FROM sweeps WHERE policy = :p AND started_at > :m",
            p=policy,
            m=moment,
        )
        return rows[0][0] if rows else None

    def job_owners(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
        """(lease owner or "", state) of these jobs."""
        found: dict[tuple[str, str], tuple[str, str]] = {}
        for backup, region in keys:
            for owner, state in self.rows(
                "SELECT lease_owner, state FROM jobs "
                "WHERE source_backup_id = :b AND destination_region = :r",
                b=backup,
                r=region,
            ):
                found[(backup, region)] = (owner or "", state)
        return found

    def job_states(self) -> Counter[str]:
        return Counter(
            {
                state: int(count)
                for state, count in self.rows("SELECT state, count(*) FROM jobs GROUP BY state")
            }
        )

    def binding_rows(self) -> list[tuple[str, str, str, str]]:
        return [
            (vault, region, destination, origin)
            for vault, region, destination, origin in self.rows(
                "SELECT source_vault_id, destination_region, destination_vault_id, origin "
                "FROM vault_bindings"
            )
        ]

    def close(self) -> None:
        self.engine.dispose()


# -- the emulator and the config ---------------------------------------------------------------


def write_config(
    path: Path, profile: Profile, url: str, ledger_url: str, credentials: dict[str, str]
) -> None:
    document = {
        "ledger": {"url": ledger_url},
        "cloud": {
            "provider": "huaweicloud",
            "credentials": dict(credentials),
            "endpoints": {"iam": url, "cbr": dict.fromkeys([SOURCE_REGION, *DESTINATIONS], url)},
            "connect_timeout": f"{CONNECT_TIMEOUT}s",
            "timeout": f"{READ_TIMEOUT}s",
            "lease": f"{profile.lease_s}s",
            "requests_per_second": 200,
            "concurrency": 4,
        },
        "log": {"level": "info", "format": "json"},
        "defaults": {
            "retry": {"max_attempts": 50, "initial_backoff": "1s", "max_backoff": "4s"},
            "max_in_flight": 25,
        },
        "policies": [
            {
                "name": name,
                "source": {"region": SOURCE_REGION, "vaults": list(vaults)},
                "destination": {"region": region, "vault": DESTINATIONS[region]},
                "schedule": {"interval": profile.interval},
            }
            for name, (vaults, region) in POLICIES.items()
        ],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)


def source_vault_ids(state: dict[str, Any]) -> dict[str, str]:
    regions = {pid: project["region"] for pid, project in state["projects"].items()}
    return {
        vault["name"]: vault_id
        for vault_id, vault in state["vaults"].items()
        if regions[vault["project_id"]] == SOURCE_REGION
    }


def eligible_pairs(state: dict[str, Any]) -> set[tuple[str, str]]:
    ids = source_vault_ids(state)
    pairs: set[tuple[str, str]] = set()
    for vaults, region in POLICIES.values():
        wanted = {ids[name] for name in vaults}
        pairs.update(
            (backup_id, region)
            for backup_id, backup in state["backups"].items()
            if backup["vault_id"] in wanted and is_eligible(backup)
        )
    return pairs


# -- the instances -----------------------------------------------------------------------------


class NotifySocket:
    """A stand-in for systemd's notify socket, read all the time (as systemd does: a daemon
    whose datagrams nobody reads would block in sd_notify once the socket's queue is full)."""

    def __init__(self) -> None:
        self.name = f"@cbr-replicator-ha-{uuid.uuid4().hex}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(b"\0" + self.name[1:].encode())
        self._socket.settimeout(0.2)
        self.ready = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                text = self._socket.recv(65536).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            if "READY=1" in text.splitlines():
                self.ready.set()

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._thread.join()
            self._socket.close()


@dataclass
class Instance:
    host: str
    process: subprocess.Popen[bytes]
    notify: NotifySocket
    log: Path
    started: float
    killed_at: datetime | None = None
    exit_code: int | None = None

    @property
    def prefix(self) -> str:
        return f"{self.host}:{self.process.pid}:"

    def owner(self, owners: Any) -> str | None:
        return next((owner for owner in owners if owner.startswith(self.prefix)), None)


class Fleet:
    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.instances: list[Instance] = []
        (workdir / "logs").mkdir(exist_ok=True)

    def start(self) -> Instance:
        host = f"ha-{len(self.instances) + 1}"
        notify = NotifySocket()
        environment = {
            key: value
            for key, value in os.environ.items()
            if key not in {"CBR_REPLICATOR_CONFIG", "WATCHDOG_USEC", "CBR_REPLICATOR_TEST_CRASH_AT"}
        }
        environment.update(
            NOTIFY_SOCKET=notify.name,
            CBR_HA_HOST=host,
            HOME=str(self.workdir / "home"),  # the SDK writes $HOME/.huaweicloud
            PYTHONPATH=str(ROOT),
        )
        log = self.workdir / "logs" / f"{host}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-c", HOST_SHIM, "-c", str(self.config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=self.workdir,
            )
        instance = Instance(host, process, notify, log, time.monotonic())
        self.instances.append(instance)
        return instance

    def wait_ready(self, instance: Instance, timeout: float = 30.0) -> None:
        if not instance.notify.ready.wait(timeout):
            raise SystemExit(
                f"{instance.host} did not become ready:\n{instance.log.read_text()[-3000:]}"
            ) from None

    def alive(self) -> list[Instance]:
        return [i for i in self.instances if i.killed_at is None and i.process.poll() is None]

    def kill(self, instance: Instance) -> datetime:
        instance.process.send_signal(signal.SIGKILL)
        instance.killed_at = utc_now()
        instance.process.wait()
        instance.exit_code = instance.process.returncode
        return instance.killed_at

    def stop_all(self, timeout: float = 120.0) -> None:
        for instance in self.alive():
            instance.process.send_signal(signal.SIGTERM)
        for instance in self.instances:
            if instance.exit_code is not None:
                continue
            try:
                instance.exit_code = instance.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                instance.process.kill()
                instance.exit_code = instance.process.wait()
        for instance in self.instances:
            instance.notify.close()


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Kill:
    host: str
    owner: str
    at: datetime
    leases: dict[str, datetime]  # sweep lease -> its expiry, as the dead instance left it
    jobs: dict[tuple[str, str], str]  # leased jobs -> state
    takeover: dict[str, float] = field(default_factory=dict)  # lease -> seconds after the kill
    early: list[str] = field(default_factory=list)  # taken before the dead lease expired
    not_taken: list[str] = field(default_factory=list)
    jobs_resumed: dict[tuple[str, str], float] = field(default_factory=dict)


class Feeder:
    """A new backup in a random source vault every ``every`` seconds, until stopped."""

    def __init__(self, emulator: EmulatorProcess, rng: random.Random, every: float) -> None:
        self._emulator = emulator
        self._rng = rng
        self._every = every
        self._stop = threading.Event()
        self.added: Counter[str] = Counter()
        self._vaults = source_vault_ids(emulator.state())
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        number = 0
        while not self._stop.wait(self._every):
            number += 1
            vault = self._rng.choice(SOURCE_VAULTS)
            kind = pick_kind(self._rng)
            self.added[kind] += 1
            self._emulator.add_backup(
                self._vaults[vault], backup_item(f"{vault}-new-{number:05d}", kind)
            )


def find_moment(
    fleet: Fleet, probe: Probe, rng: random.Random, timeout: float
) -> tuple[Instance, str]:
    """Wait until an instance holds a sweep lease and a job in flight (``submitting``: the
    intent is written, the POST under way); then it is the one to kill. After half the time,
    any leased job will do."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        held = probe.holdings(utc_now())
        relaxed = time.monotonic() - began > timeout / 2
        candidates: list[tuple[Instance, str]] = []
        for instance in fleet.alive():
            owner = instance.owner(held)
            if owner is None:
                continue
            holding = held[owner]
            sweeping = any(name.startswith("sweep:") for name in holding.leases)
            in_flight = holding.jobs["submitting"] > 0 or (relaxed and sum(holding.jobs.values()))
            if sweeping and in_flight:
                candidates.append((instance, owner))
        if candidates:
            return rng.choice(candidates)
        time.sleep(0.01)
    raise SystemExit(f"no instance held a sweep lease and a job in flight within {timeout}s")


def kill_one(fleet: Fleet, probe: Probe, rng: random.Random) -> Kill:
    victim, owner = find_moment(fleet, probe, rng, timeout=30.0)
    at = fleet.kill(victim)
    # What it left behind, read once it is dead (nothing renews or releases them now).
    leases = {name: expires for name, expires in probe.leases_of(owner).items() if expires > at}
    return Kill(victim.host, owner, at, leases, probe.jobs_of(owner, at))


def watch_takeover(probe: Probe, kill: Kill, profile: Profile) -> None:
    """For every sweep lease the dead instance held: the first sweep of that policy started
    after the kill (only another instance can have started it)."""
    deadline = time.monotonic() + 4 * profile.lease_s
    waiting = {name.removeprefix("sweep:"): name for name in kill.leases}
    while waiting and time.monotonic() < deadline:
        for policy, name in list(waiting.items()):
            started = probe.first_sweep_after(policy, kill.at)
            if started is None:
                continue
            kill.takeover[name] = (started - kill.at).total_seconds()
            if started < kill.leases[name]:
                kill.early.append(name)
            del waiting[policy]
        time.sleep(0.05)
    kill.not_taken = sorted(waiting.values())


def note_resumed_jobs(probe: Probe, kills: list[Kill]) -> None:
    """When each job a dead instance held was taken on by another (claimed, or finished)."""
    for kill in kills:
        pending = [key for key in kill.jobs if key not in kill.jobs_resumed]
        if not pending:
            continue
        now = utc_now()
        for key, (owner, state) in probe.job_owners(pending).items():
            if owner != kill.owner or state in TERMINAL:
                kill.jobs_resumed[key] = (now - kill.at).total_seconds()


def settle(
    emulator: EmulatorProcess, probe: Probe, kills: list[Kill], timeout: float
) -> tuple[float, dict[str, int]]:
    """Until every eligible pair has its replica and every job is terminal; returns how long
    it took and what was left (all zero once settled)."""
    began = time.monotonic()
    left: dict[str, int] = {}
    while time.monotonic() - began < timeout:
        note_resumed_jobs(probe, kills)
        state = emulator.state()
        states = probe.job_states()
        left = {
            "missing": len(eligible_pairs(state) - replicated_pairs(state)),
            "open_jobs": sum(count for name, count in states.items() if name not in TERMINAL),
            "cloud_pending": len(state["pending"]),
        }
        if not any(left.values()):
            note_resumed_jobs(probe, kills)
            break
        time.sleep(0.5)
    return time.monotonic() - began, left


def status_instances(config: Path, workdir: Path) -> list[dict[str, Any]]:
    """``cbr-replicator status --json``: the instances as an operator sees them."""
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "-c", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(workdir / "home"), "PYTHONPATH": str(ROOT)},
        cwd=workdir,
        timeout=60,
        check=False,
    )
    try:
        instances: list[dict[str, Any]] = json.loads(result.stdout)["instances"]
    except (ValueError, KeyError):
        return []
    return instances


# -- report ------------------------------------------------------------------------------------


def summarize(
    args: argparse.Namespace,
    profile: Profile,
    *,
    fleet: Fleet,
    kills: list[Kill],
    feeder: Feeder,
    emulator: EmulatorProcess,
    probe: Probe,
    settled: tuple[float, dict[str, int]],
    listed: list[dict[str, Any]],
    wall: float,
) -> dict[str, Any]:
    state = emulator.state()
    pairs = eligible_pairs(state)
    made = replicated_pairs(state)
    duplicates = emulator.duplicates()
    states = probe.job_states()
    bindings = probe.binding_rows()
    per_key = Counter((vault, region) for vault, region, _, _ in bindings)
    ids = source_vault_ids(state)
    wanted_bindings = {(ids[v], region) for vaults, region in POLICIES.values() for v in vaults}
    lease = profile.lease_s
    takeovers = [seconds for kill in kills for seconds in kill.takeover.values()]
    resumed = [seconds for kill in kills for seconds in kill.jobs_resumed.values()]
    tracebacks = sum(1 for i in fleet.instances if TRACEBACK in i.log.read_text(errors="replace"))
    survivors = [i for i in fleet.instances if i.killed_at is None]
    summary: dict[str, Any] = {
        "profile": args.profile,
        "ledger": "postgresql",
        "fault_scale": args.fault_scale,
        "fault_rates": {
            k: v for k, v in fault_config(args.fault_scale).items() if k.endswith("_rate")
        },
        "instances": 3,
        "instance_starts": len(fleet.instances),
        "kills": len(kills),
        "lease_s": lease,
        "takeover_s": round(max(takeovers), 2) if takeovers else None,
        "takeover_bound_s": 2 * lease,
        "takeovers": [
            {
                "host": kill.host,
                "leases": sorted(kill.leases),
                "lease_left_s": {
                    name: round((expires - kill.at).total_seconds(), 2)
                    for name, expires in sorted(kill.leases.items())
                },
                "takeover_s": {name: round(s, 2) for name, s in sorted(kill.takeover.items())},
                "jobs_held": dict(Counter(kill.jobs.values())),
            }
            for kill in kills
        ],
        "leases_held_at_kill": sum(len(kill.leases) for kill in kills),
        "early_takeovers": sum(len(kill.early) for kill in kills),
        "not_taken_over": sum(len(kill.not_taken) for kill in kills),
        "jobs_held_at_kill": sum(len(kill.jobs) for kill in kills),
        "jobs_in_flight_at_kill": sum(
            1 for kill in kills for state_ in kill.jobs.values() if state_ == "submitting"
        ),
        "jobs_not_resumed": sum(len(kill.jobs) - len(kill.jobs_resumed) for kill in kills),
        "jobs_resumed_s": round(max(resumed), 2) if resumed else None,
        "backups_added": dict(sorted(feeder.added.items())),
        "eligible_pairs": len(pairs),
        "replicas": len(made),
        "replicate_posts": emulator.replicate_posts(),
        "jobs": sum(states.values()),
        "job_states": dict(sorted(states.items())),
        "non_terminal": sum(count for name, count in states.items() if name not in TERMINAL),
        "duplicates": len(duplicates),
        "missing": len(pairs - made),
        "bindings": len(bindings),
        "binding_duplicates": sum(count - 1 for count in per_key.values() if count > 1),
        "bindings_wrong": len(set(per_key) ^ wanted_bindings),
        "status_instances": len(listed),
        "status_dead_listed": sum(
            1 for row in listed if any(row["owner"] == kill.owner for kill in kills)
        ),
        "tracebacks": tracebacks,
        "survivor_exits": dict(Counter(str(i.exit_code) for i in survivors)),
        "settled": not any(settled[1].values()),
        "settle_left": settled[1],
        "settle_faults": profile.settle_faults,
        "settle_s": round(settled[0], 1),
        "duplicate_examples": duplicates[:3],
        "wall_s": round(wall, 1),
    }
    summary["ok"] = passed(summary)
    return summary


def passed(summary: dict[str, Any]) -> bool:
    takeover = summary["takeover_s"]
    return bool(
        summary["kills"] > 0
        and summary["leases_held_at_kill"] >= summary["kills"]
        and summary["jobs_held_at_kill"] >= summary["kills"]
        and takeover is not None
        and takeover <= summary["takeover_bound_s"]
        and summary["early_takeovers"] == 0
        and summary["not_taken_over"] == 0
        and summary["jobs_not_resumed"] == 0
        and summary["duplicates"] == 0
        and summary["missing"] == 0
        and summary["non_terminal"] == 0
        and summary["jobs"] > 0
        and summary["binding_duplicates"] == 0
        and summary["bindings_wrong"] == 0
        and summary["tracebacks"] == 0
        and summary["survivor_exits"] == {"0": summary["instance_starts"] - summary["kills"]}
        and summary["settled"]
    )


def print_table(summary: dict[str, Any]) -> None:
    def line(label: str, value: object, detail: str = "") -> None:
        print(f"  {label:<24} {value!s:<8} {detail}".rstrip())

    def pairs(values: dict[str, Any]) -> str:
        return ", ".join(f"{key} {value}" for key, value in values.items())

    print(
        f"HA failover: profile {summary['profile']}, PostgreSQL ledger, "
        f"{summary['instances']} instances, fault scale {summary['fault_scale']:g}, "
        f"lease {summary['lease_s']} s"
    )
    line("instance starts", summary["instance_starts"])
    line("kills (SIGKILL)", summary["kills"])
    for number, kill in enumerate(summary["takeovers"], 1):
        held = "; ".join(
            f"{name}: {kill['lease_left_s'][name]} s left, swept by another after "
            f"{kill['takeover_s'].get(name, 'never')} s"
            for name in kill["leases"]
        )
        line(f"  kill {number}", kill["host"], f"{held}; jobs {pairs(kill['jobs_held'])}")
    line(
        "takeover (max)",
        f"{summary['takeover_s']} s",
        f"bound 2x lease = {summary['takeover_bound_s']} s",
    )
    line("early takeovers", summary["early_takeovers"], "(before the dead lease expired)")
    line("not taken over", summary["not_taken_over"])
    line(
        "dead's jobs resumed",
        f"{summary['jobs_resumed_s']} s",
        f"({summary['jobs_held_at_kill']} held, {summary['jobs_in_flight_at_kill']} in flight)",
    )
    line("jobs", summary["jobs"], pairs(summary["job_states"]))
    line("eligible pairs", summary["eligible_pairs"])
    line("replicate POSTs", summary["replicate_posts"])
    line("replicas", summary["replicas"])
    line("duplicates", summary["duplicates"])
    line("missing", summary["missing"])
    line("non-terminal jobs", summary["non_terminal"])
    line("vault bindings", summary["bindings"], f"duplicates {summary['binding_duplicates']}")
    line("status: instances", summary["status_instances"])
    line("tracebacks", summary["tracebacks"])
    line("survivor exits", pairs(summary["survivor_exits"]))
    line("settle", f"{summary['settle_s']} s", "faults on" if summary["settle_faults"] else "")
    line("wall", f"{summary['wall_s']} s")
    line("result", "PASS" if summary["ok"] else "FAIL")


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.ha_failover", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    parser.add_argument("--fault-scale", type=float, default=1.0, help="multiply the rates")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--postgres-url", default=POSTGRES_ADMIN, help="a database of the server to use"
    )
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and database")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ha-failover-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "home").mkdir(exist_ok=True)
    credentials = {
        "access_key": f"AK{rng.randrange(10**12):012d}",
        "secret_key": f"SK-canary-{rng.randrange(10**12):012d}",
        "domain_id": "ha-failover-domain",
    }
    scenario_file = workdir / "scenario.yaml"
    world = scenario(profile.initial_per_vault, rng, credentials, SOURCE_VAULTS)
    scenario_file.write_text(yaml.safe_dump(world))
    began = time.monotonic()
    database = ThrowawayDatabase("cbr_ha", args.postgres_url)
    emulator = EmulatorProcess(scenario_file, seed, workdir / "emulator.log")
    fleet: Fleet | None = None
    probe = Probe(database.url)
    try:
        emulator.set_faults({**fault_config(args.fault_scale), "latency_ms": profile.latency_ms})
        config = workdir / "config.yaml"
        write_config(config, profile, emulator.url, database.url, credentials)
        fleet = Fleet(config, workdir)
        starting = [fleet.start() for _ in range(3)]  # at once: one empty database
        for instance in starting:
            fleet.wait_ready(instance)
        phases = {"ready": time.monotonic() - began}
        feeder = Feeder(emulator, rng, profile.feed_every_s)
        feeder.start()
        kills: list[Kill] = []
        try:
            time.sleep(profile.warmup_s)
            for _ in range(profile.kills - 1):
                kills.append(kill_one(fleet, probe, rng))
                phases.setdefault("first_kill", time.monotonic() - began)
                watch_takeover(probe, kills[-1], profile)
                fleet.wait_ready(fleet.start())  # a replacement, on a new host
                time.sleep(profile.after_takeover_s)
            # The last one: its takeover is watched while the survivors finish the work.
            kills.append(kill_one(fleet, probe, rng))
            phases.setdefault("first_kill", time.monotonic() - began)
        finally:
            feeder.stop()
        watcher = threading.Thread(target=watch_takeover, args=(probe, kills[-1], profile))
        watcher.start()
        if not profile.settle_faults:
            emulator.set_faults({})
        phases["settle_from"] = time.monotonic() - began
        settled = settle(emulator, probe, kills, profile.settle_s)
        watcher.join()
        listed = status_instances(config, workdir)
        phases["stop_from"] = time.monotonic() - began
        fleet.stop_all()
        summary = summarize(
            args,
            profile,
            fleet=fleet,
            kills=kills,
            feeder=feeder,
            emulator=emulator,
            probe=probe,
            settled=settled,
            listed=listed,
            wall=time.monotonic() - began,
        )
    finally:
        if fleet is not None:
            fleet.stop_all(timeout=30)
        emulator.stop()
        probe.close()
        if not args.keep:
            database.drop()
    summary["seed"] = seed
    summary["phases_s"] = {name: round(value, 1) for name, value in phases.items()}
    print_table(summary)
    if summary["ok"] and not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        summary["workdir"] = str(workdir)
    if args.keep:
        summary["database"] = database.name
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
