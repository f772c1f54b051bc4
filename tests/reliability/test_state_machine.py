"""T2 (docs/design.md §13): a hypothesis state machine over the real ledger and replicate code.

The ledger is the real ``SqlLedger`` on a SQLite file (and, with fewer examples, on a
PostgreSQL database); a crash drops the engine without a clean exit (its leases stay behind
until they expire) and reopens the ledger. The services are
the real ``sweep_policy`` (the idempotent scan), ``submit_due`` (claim, reconcile, intent,
POST) and ``track_jobs``. Time is a fake clock. The cloud is ``ScriptedCloud``: the *cloud's*
side of the ``ports.Cloud`` protocol, kept in memory, which answers each replicate call with a
scripted outcome (ok, 429, 5xx before, 5xx after apply, reset after apply, garbage after apply,
a business refusal, or a crash of our process before or after the cloud applied it) and counts
the replicas it made, so a duplicate is visible. It runs *permissive* by default (no 1009
guard, like the T1 emulator) so that a client bug shows up as a duplicate, not a refusal.

Invariants after every step: no backup has two live replication records to one region; every
``succeeded`` job names a successful record and a replica that exist; one job per (backup,
region); every replicate POST found its intent (``submitting``) committed in the ledger
first; a succeeded job stays succeeded. At the end of every example the faults are switched
off and the queue must drain: every pair ends ``succeeded`` (or ``given_up`` after business
refusals only), with exactly one replica each.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import random
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import structlog
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from sqlalchemy import text
from sqlmodel import SQLModel

from daemon.adapters.ledger import SqlLedger, open_ledger
from daemon.core.errors import (
    AlreadyReplicatedError,
    AmbiguousError,
    CloudError,
    MalformedAnswerError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from daemon.core.model import (
    ECS_RESOURCE_TYPE,
    Backup,
    BackupPage,
    Destination,
    JobState,
    ReplicaSpec,
    ReplicationAccepted,
    ReplicationRecord,
    Vault,
    VaultReplicationAccepted,
)
from daemon.core.policy import Policy
from daemon.engine import submit, track
from daemon.engine.context import Engine, Target
from daemon.engine.resolve import resolve_policy
from daemon.engine.sweep import sweep_policy
from tests.postgres_support import ThrowawayDatabase
from tests.reliability.reliability_support import scratch_directory

SOURCE = "cn-north-4"
REGIONS = ("cn-south-1", "ap-southeast-1")
VAULT = "web-prod"
LEASE = timedelta(minutes=2)
REPLICATE_SECONDS = 60  # how long the fake cloud takes to finish a replication
MAX_BACKUPS = 5
PAGE = 3  # small pages, so the scan's per-page reads and writes are exercised
REFUSAL_CODE = "BackupService.6129"
RECORD_FAIL_CODE = "BackupService.6666"  # what a replication record that ends in fail says
MAX_ATTEMPTS = 3
START = datetime(2026, 11, 20, tzinfo=UTC)

POST_OUTCOMES = (
    "ok",
    "ok_then_fail",  # accepted; the record ends in ``fail`` later
    "429",  # throttled at the gateway: not applied
    "5xx_before",  # 500 that the server answered before applying (the client cannot know)
    "5xx_after",  # applied, then 500
    "reset_after",  # applied, then the connection was reset
    "garbage_after",  # applied, then a malformed 2xx body
    "refused",  # a business 4xx: not applied, counts toward max_attempts
    "crash_before",  # our process died after the intent, before the request left
    "crash_after",  # our process died after the cloud applied it, before the answer
)
READ_OUTCOMES = ("ok", "transient", "malformed", "crash")
LIVE = frozenset({"waiting_replicate", "replicating", "success"})
DRAINED = frozenset({JobState.SUCCEEDED, JobState.GIVEN_UP})


class JobRow(NamedTuple):
    """The columns of a ledger job the invariants look at."""

    source_backup_id: str
    destination_region: str
    state: str
    attempts: int
    replication_record_id: str | None
    replica_backup_id: str | None
    last_error_code: str | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.source_backup_id, self.destination_region)


class Crash(Exception):
    """Our process died here (like kill -9). An ``Exception``, so that it crosses the
    engine's worker threads as any failure would; once raised, every call of the dead
    process to the cloud or the ledger raises it again, so nothing after it takes effect."""


@dataclass
class Process:
    """Whether the process under test is alive; shared by its cloud and ledger edges."""

    dead: bool = False

    def check(self) -> None:
        if self.dead:
            raise Crash

    def die(self) -> Crash:
        self.dead = True
        return Crash()


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeRecord:
    id: str
    backup_id: str
    region: str
    project_id: str
    vault_id: str
    created_at: datetime
    done_at: datetime
    ends: str  # "success" or "fail"
    status: str = "replicating"
    destination_backup_id: str | None = None


@dataclass
class ScriptedCloud:
    """The cloud's side: backups, replication records and replicas, with scripted answers."""

    clock: FakeClock
    raw_ledger: Callable[[], SqlLedger]  # to check that each POST found its intent
    process: Process
    guard: bool = False  # True: BackupService.1009 for a backup with a live record
    backups: dict[str, str] = field(default_factory=dict)  # id -> name
    records: list[FakeRecord] = field(default_factory=list)
    replicas: dict[str, str] = field(default_factory=dict)  # replica id -> record id
    posts: list[tuple[str, str]] = field(default_factory=list)  # (backup, region) per POST
    post_script: deque[str] = field(default_factory=deque)
    read_script: deque[str] = field(default_factory=deque)
    violations: list[str] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=itertools.count)

    # -- the world ---------------------------------------------------------------------------
    def add_backup(self) -> str:
        backup_id = f"b{len(self.backups)}"
        self.backups[backup_id] = f"web-{len(self.backups)}"
        return backup_id

    def tick(self) -> None:
        now = self.clock()
        for record in self.records:
            if record.status == "replicating" and record.done_at <= now:
                record.status = record.ends
                if record.ends == "success":
                    replica = f"replica-{next(self.ids)}"
                    record.destination_backup_id = replica
                    self.replicas[replica] = record.id

    def live_records(self, backup_id: str, region: str) -> list[FakeRecord]:
        return [
            r
            for r in self.records
            if r.backup_id == backup_id and r.region == region and r.status in LIVE
        ]

    def record(self, record_id: str | None) -> FakeRecord | None:
        return next((r for r in self.records if r.id == record_id), None)

    def _backup(self, backup_id: str) -> Backup:
        self.tick()
        records = tuple(
            ReplicationRecord(
                id=r.id,
                status=r.status,
                destination_region=r.region,
                destination_project_id=r.project_id,
                destination_vault_id=r.vault_id,
                destination_backup_id=r.destination_backup_id,
                created_at=r.created_at,
                fail_code=RECORD_FAIL_CODE if r.status == "fail" else None,
            )
            for r in self.records
            if r.backup_id == backup_id
        )
        return Backup(
            id=backup_id,
            name=self.backups[backup_id],
            vault_id=VAULT,
            resource_type=ECS_RESOURCE_TYPE,
            image_type="backup",
            status="available",
            resource_size_gb=1,
            contain_system_disk=True,
            created_at=START,
            replication_records=records,
        )

    def _alive(self) -> None:
        self.process.check()

    def _read_fault(self, what: str) -> None:
        self._alive()
        outcome = self.read_script.popleft() if self.read_script else "ok"
        if outcome == "transient":
            raise TransientError(f"{what}: HTTP 503", code="BackupService.9910", status=503)
        if outcome == "malformed":
            raise MalformedAnswerError(f"{what}: answer is not JSON (JSONDecodeError)")
        if outcome == "crash":
            raise self.process.die()

    # -- ports.Cloud -------------------------------------------------------------------------
    def resolve_project(self, region: str, project: str | None = None) -> str:
        self._alive()
        return f"project-{region}"

    def replication_destinations(self, region: str, project_id: str) -> frozenset[str]:
        self._alive()
        return frozenset(REGIONS)

    def find_vault(self, region: str, project_id: str, name_or_id: str) -> Vault:
        self._alive()
        protect = "backup" if name_or_id == VAULT else "replication"
        return Vault(name_or_id, name_or_id, region, project_id, protect)

    def list_backup_pages(
        self, region: str, project_id: str, vault_id: str
    ) -> Iterator[BackupPage]:
        ids = sorted(self.backups)
        for start in range(0, len(ids), PAGE):
            self._read_fault("ListBackups")
            yield BackupPage.of(self._backup(backup_id) for backup_id in ids[start : start + PAGE])

    def show_backup(self, region: str, project_id: str, backup_id: str) -> Backup:
        self._read_fault("ShowBackup")
        if backup_id not in self.backups:
            raise NotFoundError("HTTP 404 BackupService.6200", code="BackupService.6200")
        return self._backup(backup_id)

    def replicate_backup(
        self,
        region: str,
        project_id: str,
        backup_id: str,
        destination: Destination,
        replica: ReplicaSpec,
    ) -> ReplicationAccepted:
        self._alive()
        self._check_intent(backup_id, destination.region)
        self.tick()
        outcome = self.post_script.popleft() if self.post_script else "ok"
        if outcome == "crash_before":
            raise self.process.die()
        if outcome == "429":
            raise TransientError(
                "HTTP 429 APIGW.0308: throttled", code="APIGW.0308", status=429, retry_after=1.0
            )
        if outcome == "5xx_before":
            raise AmbiguousError("HTTP 500 BackupService.9910", code="BackupService.9910")
        if outcome == "refused":
            raise PermanentError(f"HTTP 400 {REFUSAL_CODE}: vault full", code=REFUSAL_CODE)
        if self.guard and self.live_records(backup_id, destination.region):
            raise AlreadyReplicatedError("HTTP 400 BackupService.1009", code="BackupService.1009")
        now = self.clock()
        record = FakeRecord(
            id=f"rec-{next(self.ids)}",
            backup_id=backup_id,
            region=destination.region,
            project_id=destination.project_id,
            vault_id=destination.vault_id,
            created_at=now,
            done_at=now + timedelta(seconds=REPLICATE_SECONDS),
            ends="fail" if outcome == "ok_then_fail" else "success",
        )
        self.records.append(record)
        self.posts.append((backup_id, destination.region))
        if outcome == "5xx_after":
            raise AmbiguousError("HTTP 500 BackupService.9910", code="BackupService.9910")
        if outcome == "reset_after":
            raise AmbiguousError("ConnectionError: reset by peer", code="ConnectionError")
        if outcome == "garbage_after":
            raise AmbiguousError("malformed answer to replicate: CopyBackup: not JSON")
        if outcome == "crash_after":
            raise self.process.die()
        return ReplicationAccepted(replication_record_id=record.id, request_id=f"req-{record.id}")

    def _check_intent(self, backup_id: str, region: str) -> None:
        with self.raw_ledger().engine.connect() as connection:
            state = connection.execute(
                text(
                    "SELECT state FROM jobs WHERE source_backup_id = :b AND destination_region = :r"
                ),
                {"b": backup_id, "r": region},
            ).scalar()
        if state != JobState.SUBMITTING:
            self.violations.append(f"POST of {backup_id}->{region} without an intent ({state})")

    def replicate_vault(
        self,
        region: str,
        project_id: str,
        vault_id: str,
        destination: Destination,
        enable_acceleration: bool,
    ) -> VaultReplicationAccepted:
        raise AssertionError("policies never use the vault replication API")


class CrashingLedger:
    """The real ledger, with a kill switch that fires after the N-th committed write."""

    WRITES = frozenset(
        {
            "save_jobs",
            "write_intents",
            "claim_jobs",
            "claim_job",
            "release_jobs",
            "add_binding",
            "mark_binding_bound",
            "acquire_lease",
            "release_lease",
            "start_sweep",
            "finish_sweep",
            "record_alerts",
            "heartbeat",
        }
    )

    def __init__(self, ledger: SqlLedger, process: Process) -> None:
        self.ledger = ledger
        self.process = process
        self.crash_after: int | None = None

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.ledger, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self.process.check()
            result = method(*args, **kwargs)
            if name in self.WRITES and self.crash_after is not None:
                self.crash_after -= 1
                if self.crash_after <= 0:
                    raise self.process.die()  # the write was committed; then the process died
            return result

        return call


def make_policy(region: str, max_in_flight: int) -> Policy:
    return Policy.model_validate(
        {
            "name": f"to-{region}",
            "source": {"region": SOURCE, "vaults": [VAULT]},
            "destination": {"region": region, "vault": f"dr-{region}"},
            "schedule": {"interval": "1h"},
            "retry": {"max_attempts": MAX_ATTEMPTS, "initial_backoff": "1m", "max_backoff": "10m"},
            "max_in_flight": max_in_flight,
        }
    )


# One policy whose in-flight limit binds, one whose limit never does.
POLICIES = (make_policy(REGIONS[0], 2), make_policy(REGIONS[1], MAX_BACKUPS))
step_posts = st.lists(st.sampled_from(POST_OUTCOMES), max_size=3)
step_reads = st.lists(st.sampled_from(READ_OUTCOMES), max_size=2)
policy_index = st.integers(0, len(POLICIES) - 1)


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """The machine runs the services some 10,000 times; their log lines (rendered, then
    thrown away by the capture) would cost a good part of the run. Errors still show."""
    previous = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        yield
    finally:
        structlog.configure(**previous)


class SharedLedgerFile:
    """One SQLite ledger file for every example, emptied between examples.

    Opening a ledger per example would spend most of the run compiling the same SQL again
    (SQLAlchemy caches compiled statements per engine); emptying the tables is cheaper.
    """

    directory: Path | None = None
    ledger: SqlLedger | None = None

    @classmethod
    def _open(cls) -> SqlLedger:
        cls.directory = Path(tempfile.mkdtemp(prefix="cbr-t2-", dir=scratch_directory()))
        return open_ledger(f"sqlite:///{cls.directory / 'ledger.db'}")

    @classmethod
    def fresh(cls) -> SqlLedger:
        if cls.ledger is None:
            cls.ledger = cls._open()
            atexit.register(cls.remove)
        ledger = SqlLedger(cls.ledger.engine)
        with ledger.engine.begin() as connection:
            for table in reversed(SQLModel.metadata.sorted_tables):  # children first
                if table.name != "schema_version":
                    connection.execute(table.delete())
        return ledger

    @classmethod
    def remove(cls) -> None:
        if cls.ledger is not None:
            cls.ledger.close()
        if cls.directory is not None:
            shutil.rmtree(cls.directory, ignore_errors=True)


class SharedPostgresLedger(SharedLedgerFile):
    """The same on PostgreSQL: a database of its own in the local server, dropped at exit.
    (A ``crash`` closes every connection, as a killed process's would be.)"""

    database: ThrowawayDatabase | None = None
    ledger: SqlLedger | None = None

    @classmethod
    def _open(cls) -> SqlLedger:
        cls.database = ThrowawayDatabase("cbr_t2")
        return open_ledger(cls.database.url)

    @classmethod
    def remove(cls) -> None:
        if cls.ledger is not None:
            cls.ledger.close()
        if cls.database is not None:
            cls.database.drop()


class ReplicationMachine(RuleBasedStateMachine):
    shared: type[SharedLedgerFile] = SharedLedgerFile

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.generation = 0
        self.raw = self.shared.fresh()
        self.process = Process()
        self.ledger = CrashingLedger(self.raw, self.process)
        self.cloud = ScriptedCloud(self.clock, lambda: self.raw, self.process)
        self.engine = self._engine()
        self.targets: list[Target] = []
        self.succeeded: set[tuple[str, str]] = set()

    def _engine(self) -> Engine:
        self.generation += 1
        return Engine(
            cloud=self.cloud,
            ledger=self.ledger,  # type: ignore[arg-type]
            clock=self.clock,
            owner=f"host:{self.generation}",
            lease=LEASE,
            rng=random.Random(self.generation),
            concurrency=1,  # one worker: the same example always runs the same way
            recheck=timedelta(seconds=30),  # the machine's steps are sized for 30 s
        )

    def _restart(self) -> None:
        """kill -9 and start again: nothing is released, every connection to the file is
        closed and the ledger is opened again. (The SQLAlchemy engine object survives only to
        keep its statement cache warm; it holds no state of its own once disposed.)"""
        self.raw.engine.dispose()
        self.raw = SqlLedger(self.raw.engine)
        self.process = Process()
        self.ledger = CrashingLedger(self.raw, self.process)
        self.cloud.process = self.process
        self.cloud.post_script.clear()
        self.cloud.read_script.clear()
        self.engine = self._engine()

    def _run(self, action: Callable[[], object]) -> None:
        try:
            action()
        except Crash:
            self._restart()
        except CloudError:
            pass  # what the daemon's loop does with a failed round: log it, try later

    # -- rules -------------------------------------------------------------------------------
    @initialize(backups=st.integers(1, 3), guard=st.booleans())
    def setup(self, backups: int, guard: bool) -> None:
        self.cloud.guard = guard
        for _ in range(backups):
            self.cloud.add_backup()
        self.targets = [resolve_policy(self.engine, p).target for p in POLICIES]

    @rule()
    def new_backup(self) -> None:
        if len(self.cloud.backups) < MAX_BACKUPS:
            self.cloud.add_backup()

    @rule(index=policy_index, reads=step_reads)
    def scan(self, index: int, reads: list[str]) -> None:
        self.cloud.read_script.extend(reads)
        self._run(lambda: sweep_policy(self.engine, POLICIES[index], submit=False))
        self.cloud.read_script.clear()

    @rule(index=policy_index, posts=step_posts, reads=step_reads)
    def submit(self, index: int, posts: list[str], reads: list[str]) -> None:
        self.cloud.post_script.extend(posts)
        self.cloud.read_script.extend(reads)
        self._run(lambda: submit.submit_due(self.engine, self.targets[index]))
        self.cloud.post_script.clear()
        self.cloud.read_script.clear()

    @rule(index=policy_index, reads=step_reads)
    def track(self, index: int, reads: list[str]) -> None:
        self.cloud.read_script.extend(reads)
        self._run(lambda: self._track(index))
        self.cloud.read_script.clear()

    def _track(self, index: int) -> None:
        target = self.targets[index]
        jobs = self.engine.ledger.jobs_in_states(
            {JobState.REPLICATING}, limit=1000, policy=target.policy
        )
        track.track_jobs(self.engine, jobs, target.retry)

    @rule(writes=st.integers(1, 6))
    def arm_crash(self, writes: int) -> None:
        """The process dies right after its next ``writes`` committed ledger writes."""
        self.ledger.crash_after = writes

    @rule()
    def crash_now(self) -> None:
        self._restart()

    @rule(seconds=st.sampled_from([1, 31, 61, 121, 600, 3600]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # -- invariants --------------------------------------------------------------------------
    def _jobs(self) -> list[JobRow]:
        """Every job, read with one plain query (this runs after every step)."""
        with self.raw.engine.connect() as connection:
            rows = connection.execute(text(f"SELECT {', '.join(JobRow._fields)} FROM jobs"))
            return [JobRow(*row) for row in rows]

    @invariant()
    def safe(self) -> None:
        self.check(self._jobs())

    def check(self, jobs: list[JobRow]) -> None:
        assert self.cloud.violations == [], "a POST went out without its intent"
        self.cloud.tick()
        for backup_id in self.cloud.backups:
            for region in REGIONS:
                live = self.cloud.live_records(backup_id, region)
                assert len(live) <= 1, f"duplicate replication of {backup_id} to {region}: {live}"
        keys = [job.key for job in jobs]
        assert len(keys) == len(set(keys)), f"more than one job per (backup, region): {keys}"
        posts = {pair: self.cloud.posts.count(pair) for pair in set(self.cloud.posts)}
        for job in jobs:
            assert job.source_backup_id in self.cloud.backups
            assert job.destination_region in REGIONS
            # Attempts are counted with the intent, before the POST.
            assert job.attempts >= posts.get(job.key, 0), job
            if job.state == JobState.SUCCEEDED:
                record = self.cloud.record(job.replication_record_id)
                assert record is not None, f"succeeded job without its record: {job}"
                assert record.status == "success", (job, record)
                assert record.region == job.destination_region
                assert job.replica_backup_id == record.destination_backup_id
                assert job.replica_backup_id in self.cloud.replicas, job
                self.succeeded.add(job.key)
            elif job.state == JobState.REPLICATING:
                record = self.cloud.record(job.replication_record_id)
                assert record is not None, f"replicating job without a record: {job}"
                assert record.backup_id == job.source_backup_id
            assert job.key not in self.succeeded or job.state == JobState.SUCCEEDED, job

    # -- the end: faults off, the queue drains -----------------------------------------------
    def drain(self) -> None:
        if self.process.dead:
            self._restart()
        self.ledger.crash_after = None
        self.cloud.post_script.clear()
        self.cloud.read_script.clear()
        for _ in range(10):
            # Past any lease of a crashed owner, any record's run time and any backoff.
            self.clock.advance(11 * 60)
            jobs = self._jobs()
            known = {job.key for job in jobs}
            busy = {job.destination_region for job in jobs if job.state not in DRAINED}
            idle = True
            for index, policy in enumerate(POLICIES):
                region = self.targets[index].destination.region
                if any((backup, region) not in known for backup in self.cloud.backups):
                    sweep_policy(self.engine, policy)  # scan the new backups, submit
                elif region in busy:
                    self._track(index)
                    submit.submit_due(self.engine, self.targets[index])
                else:
                    continue
                idle = False
            if idle:
                break
        jobs = self._jobs()
        self.check(jobs)
        by_key = {job.key: job for job in jobs}
        for backup_id in self.cloud.backups:
            for region in REGIONS:
                job = by_key.get((backup_id, region))
                assert job is not None, f"{backup_id}->{region} was never enqueued"
                live = self.cloud.live_records(backup_id, region)
                if job.state == JobState.GIVEN_UP:
                    # Given up only after max_attempts refusals or failed replications (both
                    # count; a found hunt once gave one up after refused, refused, failed
                    # record), and nothing was made for it.
                    assert job.last_error_code in (REFUSAL_CODE, RECORD_FAIL_CODE), job
                    assert job.attempts == MAX_ATTEMPTS, job
                    assert live == [], job
                else:
                    assert job.state == JobState.SUCCEEDED, f"not drained: {job}"
                    assert len(live) == 1, (job, live)

    def teardown(self) -> None:
        try:
            if self.targets:
                self.drain()
        finally:
            self.raw.engine.dispose()


# T2_EXAMPLES raises the count for a longer hunt (e.g. T2_EXAMPLES=3000).
ReplicationMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("T2_EXAMPLES", "300")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestReplicationMachine = ReplicationMachine.TestCase


class PostgresReplicationMachine(ReplicationMachine):
    """The machine on PostgreSQL (issue 8: the reliability tests run on both ledgers); fewer
    examples, each step costs a few round trips to the server."""

    shared = SharedPostgresLedger


PostgresReplicationMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("T2_POSTGRES_EXAMPLES", "60")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestReplicationMachineOnPostgres = pytest.mark.postgres(PostgresReplicationMachine.TestCase)


def test_the_machine_catches_a_blind_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: with reconcile switched off (a job left ``submitting`` is simply
    posted again), the invariants fail on the shortest story that shows it, proving that
    they can: a POST applied but answered 500, then the next pass."""
    monkeypatch.setattr(submit, "reconcile", lambda engine, job: None)
    machine = ReplicationMachine()
    try:
        machine.setup(backups=1, guard=False)
        machine.scan(index=0, reads=[])
        machine.submit(index=0, posts=["5xx_after"], reads=[])
        machine.safe()
        machine.advance(seconds=31)
        machine.submit(index=0, posts=[], reads=[])
        with pytest.raises(AssertionError, match="duplicate replication"):
            machine.safe()
    finally:
        machine.targets = []  # no drain: the point was made
        machine.teardown()
