"""Daemon-mode harness: the real daemon as a subprocess (``python -m daemon -c CONFIG``)
against an emulator in the test process, with a fake ``NOTIFY_SOCKET`` the test reads.

Nothing sleeps to wait: the test blocks on the notify socket (select with a deadline) or on
the daemon's log lines (a queue fed by reader threads, read with a timeout).
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from daemon.emulator import Emulator
from tests.engine.harness import policy, rules_scenario, write_config

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 20.0  # seconds: generous, for slow CI machines; a pass takes far less


def web_south(interval: str = "1s", **extra: Any) -> dict[str, Any]:
    """The policy of the engine tests (4 eligible backups in web-prod) on an interval."""
    return policy(
        "web-south", ["web-prod"], "cn-south-1", "web-dr", schedule={"interval": interval}, **extra
    )


class NotifySocket:
    """A datagram socket in the abstract namespace, standing in for systemd's."""

    def __init__(self) -> None:
        self.name = f"@cbr-replicator-test-{uuid.uuid4().hex}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(b"\0" + self.name[1:].encode())
        self.messages: list[dict[str, str]] = []

    def poll(self) -> list[dict[str, str]]:
        """The messages already here, oldest first, without waiting; [] when none."""
        arrived: list[dict[str, str]] = []
        while select.select([self._socket], [], [], 0)[0]:
            text = self._socket.recv(65536).decode()
            arrived.append(dict(line.split("=", 1) for line in text.splitlines() if "=" in line))
        self.messages.extend(arrived)
        return arrived

    def wait_for(self, key: str, contains: str = "", timeout: float = DEADLINE) -> dict[str, str]:
        """The next message carrying ``key`` (``READY``, ``STATUS``...) whose value holds
        ``contains``; earlier messages are consumed."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self._socket], [], [], remaining)
            if not readable:
                break
            text = self._socket.recv(65536).decode()
            fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            self.messages.append(fields)
            if key in fields and contains in fields[key]:
                return fields
        raise AssertionError(f"no {key} with {contains!r} within {timeout}s: {self.messages}")

    def drain(self) -> None:
        """Consume the messages sent so far (without waiting for more)."""
        while select.select([self._socket], [], [], 0)[0]:
            self.messages.append({"drained": self._socket.recv(65536).decode()})

    def close(self) -> None:
        self._socket.close()


@dataclass
class DaemonProcess:
    """One daemon subprocess and its output, line by line."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _pending: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _readers: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        for stream in (self.process.stdout, self.process.stderr):
            reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._pending.put(line.rstrip("\n"))
        self._pending.put(None)

    def wait_line(self, matches: Callable[[str], bool], timeout: float = DEADLINE) -> str:
        """The next output line (stdout or stderr) that ``matches``; earlier ones are consumed."""
        deadline = time.monotonic() + timeout
        ended = 0
        while (remaining := deadline - time.monotonic()) > 0 and ended < 2:
            try:
                line = self._pending.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                ended += 1
            elif matches(line):
                return line
        raise AssertionError(f"no matching line within {timeout}s; output:\n" + self.output)

    def wait_event(
        self, event: str, timeout: float = DEADLINE, **expected: object
    ) -> dict[str, Any]:
        """The next JSON log line of ``event`` whose fields include ``expected``."""

        def matches(line: str) -> bool:
            record = _json(line)
            return record.get("event") == event and all(
                record.get(key) == value for key, value in expected.items()
            )

        return _json(self.wait_line(matches, timeout))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [record for line in self.lines if (record := _json(line)).get("event") == event]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float = DEADLINE) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=timeout)  # every line is in ``lines`` once this returns
        return code


def _json(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


@dataclass
class Service:
    """An emulator, a config pointing at it, and daemons started on that config."""

    emulator: Emulator
    workdir: Path
    daemons: list[DaemonProcess] = field(default_factory=list)
    sockets: list[NotifySocket] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.workdir / "config.yaml"

    @property
    def ledger(self) -> Path:
        return self.workdir / "ledger.db"

    def write_config(self, policies: list[dict[str, Any]], **overrides: Any) -> Path:
        return write_config(self.config, self.emulator, policies, **overrides)

    def notify_socket(self) -> NotifySocket:
        notify = NotifySocket()
        self.sockets.append(notify)
        return notify

    def start(
        self,
        *args: str,
        notify: NotifySocket | None = None,
        log_format: str = "json",
        env: dict[str, str] | None = None,
    ) -> DaemonProcess:
        environment = {
            key: value
            for key, value in os.environ.items()
            if key not in ("CBR_REPLICATOR_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC")
        }
        environment["PYTHONPATH"] = str(ROOT)
        if notify is not None:
            environment["NOTIFY_SOCKET"] = notify.name
        environment.update(env or {})
        command = [sys.executable, "-m", "daemon", "-c", str(self.config)]
        process = subprocess.Popen(
            [*command, "--log-format", log_format, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            cwd=self.workdir,
        )
        daemon = DaemonProcess(process)
        self.daemons.append(daemon)
        return daemon

    def start_ready(self, *args: str, **options: Any) -> tuple[DaemonProcess, NotifySocket]:
        notify = self.notify_socket()
        daemon = self.start(*args, notify=notify, **options)
        notify.wait_for("READY", "1")
        return daemon, notify

    def job_states(self) -> dict[str, int]:
        with closing(sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True)) as connection:
            return dict(connection.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))

    def secrets(self) -> tuple[str, str]:
        return self.emulator.access_key, self.emulator.secret_key


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    emulator = Emulator(rules_scenario(), clock="manual")
    emulator.start()
    setup = Service(emulator=emulator, workdir=tmp_path)
    try:
        yield setup
    finally:
        for daemon in setup.daemons:
            if daemon.process.poll() is None:
                daemon.process.kill()
            daemon.wait()
        for notify in setup.sockets:
            notify.close()
        emulator.stop()
    # Every daemon of every test: the keys never reach a log line.
    for daemon in setup.daemons:
        for secret in setup.secrets():
            assert secret not in daemon.output
