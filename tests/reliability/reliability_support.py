"""Helpers shared by the reliability tests T2-T5 (not the crash test's)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import inspect, text

from daemon.adapters.cloud.client import HuaweiCloud
from daemon.adapters.cloud.options import CloudOptions, Credentials
from daemon.adapters.ledger import SqlLedger
from daemon.emulator import Emulator
from daemon.emulator.faults import Decision
from daemon.engine.context import Engine


def scratch_directory() -> str | None:
    """A RAM-backed directory for temporary files when the system has one (POSIX shared
    memory), else None (the default temporary directory).

    The state machine commits thousands of ledger transactions and the config fuzzer writes
    thousands of small files; on a busy CI disk the fsyncs and directory updates alone take
    minutes. These tests check logic, not durability across a power cut (the crash test kills
    real processes on a real file), so the disk may as well be memory.
    """
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class SleepClock:
    """A monotonic clock that only the injected sleep moves: waits cost nothing."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def cloud_on(emulator: Emulator, clock: SleepClock | None = None, **options: Any) -> HuaweiCloud:
    """The real adapter (official SDK, over HTTP) on an in-process emulator; read retries
    and throttling pauses do not wait."""
    clock = clock or SleepClock()
    return HuaweiCloud(
        Credentials(
            access_key=SecretStr(emulator.access_key),
            secret_key=SecretStr(emulator.secret_key),
            domain_id=emulator.domain_id,
        ),
        CloudOptions(
            cbr_endpoints={},
            all_regions_endpoint=emulator.url,
            requests_per_second=10_000,
            read_attempts=3,
            read_timeout=timedelta(seconds=5),
            **options,
        ),
        sleep=clock.sleep,
        clock=clock,
    )


class ManualClock:
    """The engine's clock: moves only when told (and can move the emulator's with it)."""

    def __init__(self, emulator: Emulator | None = None) -> None:
        self.now = datetime(2026, 11, 20, tzinfo=UTC)
        self.emulator = emulator

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        if self.emulator is not None:
            self.emulator.advance(seconds)


def engine_on(emulator: Emulator, ledger: SqlLedger, clock: ManualClock) -> Engine:
    return Engine(
        cloud=cloud_on(emulator),
        ledger=ledger,
        clock=clock,
        owner="reliability-test",
        lease=timedelta(minutes=2),
    )


def ledger_snapshot(ledger: SqlLedger, *, skip: tuple[str, ...] = ("sweeps",)) -> dict[str, Any]:
    """Every row of every ledger table (but ``skip``), in a stable order: two snapshots are
    equal exactly when the durable state is."""
    tables: dict[str, Any] = {}
    with ledger.engine.connect() as connection:
        for name in sorted(inspect(connection).get_table_names()):
            if name in skip:
                continue
            rows = connection.execute(text(f'SELECT * FROM "{name}"')).all()
            tables[name] = sorted((tuple(row) for row in rows), key=repr)
    return tables


def meet_at_the_emulator(emulator: Emulator, operation: str, parties: int) -> list[bool]:
    """Make each request of ``operation`` wait at the emulator until ``parties`` of them are
    there together (a barrier, 10 s at most). The list returned gets one entry per request:
    True if it met the others, False if it waited alone and the barrier broke. Requests sent
    one after the other never meet, so this shows calls made at once without timing them.
    For an emulator of the test's own: it stays so until it stops."""
    together = threading.Barrier(parties, timeout=10)
    met: list[bool] = []
    decide = emulator.faults.decide

    def meet_the_others(name: str, method: str, is_iam: bool) -> Decision:
        if name == operation:
            try:
                together.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                met.append(False)
        return decide(name, method, is_iam)

    emulator.faults.decide = meet_the_others  # type: ignore[method-assign]
    return met
