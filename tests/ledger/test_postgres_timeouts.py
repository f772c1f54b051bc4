"""A PostgreSQL ledger never waits forever: a table locked by another session fails
``--run-once`` and ``status`` with a clear error and exit 75 (transient: retried) once
``ledger.lock_timeout`` has passed; a server that stops answering (a TCP proxy between us that
stops forwarding, while still acknowledging) fails the waiting call once
``statement_timeout + connect_timeout`` has passed."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from daemon.adapters.ledger import DatabaseTimeouts, open_ledger
from daemon.core import exitcodes
from daemon.core.errors import LedgerUnavailableError
from daemon.emulator import Emulator
from tests.engine.harness import policy, rules_scenario, write_config
from tests.postgres_support import ThrowawayDatabase, dsn

ROOT = Path(__file__).resolve().parents[2]
NEVER = 90.0  # seconds: a call still waiting then would wait forever (a pass takes a few)
SHORT = {"lock_timeout": "1s", "statement_timeout": "2s", "connect_timeout": "2s"}


@pytest.fixture
def database() -> Iterator[ThrowawayDatabase]:
    database = ThrowawayDatabase("cbr_timeouts")
    try:
        open_ledger(database.url).close()  # the tables exist before anyone locks them
        yield database
    finally:
        database.drop()


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "-c", str(config), "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=NEVER,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize("table", ["jobs", "leases"])
def test_a_locked_table_fails_run_once_and_status_with_exit_75(
    database: ThrowawayDatabase, tmp_path: Path, table: str
) -> None:
    with Emulator(rules_scenario(), clock="manual") as emulator:
        config = write_config(
            tmp_path / "config.yaml",
            emulator,
            [policy("web", ["web-prod"], "cn-south-1", "web-dr")],
            ledger_url=database.url,
            ledger={"url": database.url, **SHORT},
        )
        with psycopg.connect(dsn(database.url)) as holder:
            holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            once = run_cli(config, "--run-once")
            status = run_cli(config, "status")
            holder.rollback()
        assert once.returncode == exitcodes.UNAVAILABLE, once.stderr
        assert "lock timeout" in once.stderr
        assert "Traceback" not in once.stderr
        if table == "jobs":  # status reads the jobs; the leases only for the sweeps' holders
            assert status.returncode == exitcodes.UNAVAILABLE, status.stderr
            assert "lock timeout" in status.stderr
        assert run_cli(config, "--run-once").returncode == exitcodes.OK  # the lock is gone


class StallingProxy:
    """A TCP proxy to PostgreSQL that can stop forwarding: its side of every connection stays
    open and keeps acknowledging (the kernel does), but nothing gets through any more."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.stalled = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not self.stalled.is_set():  # stalled: read (so it is acknowledged), drop
                sink.sendall(data)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def within(seconds: float, work: Callable[[], Any]) -> BaseException | None:
    """The exception ``work()`` ended with (None if it returned); fails if still running."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            work()
            outcome.append(None)
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds}s: the call would never end"
    return outcome[0]


def test_a_stalled_database_fails_the_call_instead_of_hanging(
    database: ThrowawayDatabase,
) -> None:
    url = make_url(database.url)
    proxy = StallingProxy((url.host or "127.0.0.1", url.port or 5432))
    through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    timeouts = DatabaseTimeouts(
        connect=timedelta(seconds=2),
        statement=timedelta(seconds=1),
        lock=timedelta(seconds=1),
        keepalive=timedelta(seconds=30),
    )
    ledger = open_ledger(through_proxy, timeouts)
    try:
        assert ledger.job_counts() == {}
        proxy.stalled.set()
        error = within(NEVER, ledger.job_counts)
        assert isinstance(error, LedgerUnavailableError), repr(error)
        assert "no answer" in str(error) or "timeout expired" in str(error)
    finally:
        proxy.close()
        ledger.close()
