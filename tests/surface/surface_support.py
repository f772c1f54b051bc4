"""The operator's surface as a user touches it: the INSTALLED ``cbr-replicator`` run as a
process, against the emulator run as a process of its own (``cbr-replicator emulator``), in a
workspace that holds a copy of the repository's ``config/``."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLI = shutil.which("cbr-replicator", path=str(BIN)) or str(BIN / "cbr-replicator")
DOCUMENTED_ADDRESS = "127.0.0.1:8440"  # the port README.md and the shipped config show
STANDALONE = "config/standalone-emulator.yaml"
DEADLINE = 60.0  # seconds any one wait in these tests may take, on a busy machine


def environment(config: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CBR_REPLICATOR_CONFIG"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if config is not None:
        env["CBR_REPLICATOR_CONFIG"] = str(config)
    return env


def make_workspace(directory: Path) -> Path:
    """A copy of ``config/`` (its ``.demo/`` state lands here, not in the repository)."""
    shutil.copytree(ROOT / "config", directory / "config")
    return directory


def until(condition: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Poll ``condition`` until it is true (and return it), or fail after ``deadline``."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # a polling interval, not a wait for an event


def no_traceback(stderr: str) -> bool:
    return "Traceback (most recent call last)" not in stderr


class StandaloneEmulator:
    """``cbr-replicator emulator ...`` as a process; its URL is its first stdout line."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        self.url = _first_line(self.process.stdout, DEADLINE).strip()
        if not self.url.startswith("http://"):
            self.process.kill()
            _, stderr = self.process.communicate()
            raise AssertionError(f"the emulator did not start: {self.url!r} {stderr}")

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    def admin(self, method: str, name: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/__emulator__/{name}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=DEADLINE) as answer:
            return json.loads(answer.read())

    def requests(self, operation: str | None = None) -> list[dict[str, Any]]:
        query = f"?operation={operation}" if operation else ""
        entries: list[dict[str, Any]] = self.admin("GET", f"requests{query}")["requests"]
        return entries

    def backup_id(self, name: str) -> str:
        state = self.admin("GET", "state")
        [found] = [i for i, b in state["backups"].items() if b["name"] == name]
        return str(found)

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            _, stderr = self.process.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return self.process.returncode, stderr


def _first_line(stream: IO[str] | None, deadline: float) -> str:
    assert stream is not None
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    ready = selector.select(timeout=deadline)
    selector.close()
    return stream.readline() if ready else ""


def point_config_at(workspace: Path, emulator: StandaloneEmulator) -> Path:
    """The shipped stand-alone config, with the documented address replaced by the
    emulator's (it listens on a free port: tests run side by side)."""
    config = workspace / STANDALONE
    text = (ROOT / STANDALONE).read_text(encoding="utf-8")
    assert DOCUMENTED_ADDRESS in text
    config.write_text(text.replace(DOCUMENTED_ADDRESS, emulator.address), encoding="utf-8")
    return config


@contextmanager
def standalone(
    workspace: Path, *options: str, scenario: str = "config/demo-cloud.yaml"
) -> Iterator[tuple[StandaloneEmulator, Path]]:
    """An emulator process for ``scenario`` and the stand-alone config pointed at it."""
    command = [CLI, "emulator", "--scenario", scenario, "--listen", "127.0.0.1:0", *options]
    emulator = StandaloneEmulator(command, workspace)
    try:
        yield emulator, point_config_at(workspace, emulator)
    finally:
        emulator.stop()


class StderrWatch:
    """Reads a process's stderr on a thread; ``events(name)`` are its JSON log lines."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self.lines.append(line)

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            lines = list(self.lines)
        found = []
        for line in lines:
            if f'"{name}"' in line:
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return [event for event in found if event.get("event") == name]

    def text(self) -> str:
        self._thread.join(timeout=DEADLINE)
        with self._lock:
            return "".join(self.lines)
