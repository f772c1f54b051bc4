"""Stopping a command the way people do: Ctrl-C (and TERM, HUP) during the long-running
commands and during the imports, a reader that closes stdout early (``| head``), a --wait
that runs out. Each run is the installed entry point against the emulator as a process."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.surface.surface_support import (
    CLI,
    DEADLINE,
    StandaloneEmulator,
    StderrWatch,
    environment,
    make_workspace,
    no_traceback,
    standalone,
    until,
)

POLICIES = ("web-to-south", "db-to-south-ops")  # the stand-alone config's


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CLI, "-c", str(config), "--log-format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "-c", str(config), "--log-format", "json", *args],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=DEADLINE,
        check=False,
    )


def finish(process: subprocess.Popen[str], watch: StderrWatch) -> tuple[str, str]:
    """Its stdout and stderr once it exits (stderr as the watch read it)."""
    assert process.stdout is not None
    stdout = process.stdout.read()
    process.wait(timeout=DEADLINE)
    return stdout, watch.text()


def in_the_wait(emulator: StandaloneEmulator, watch: StderrWatch) -> None:
    """Until both sweeps finished and the wait made its first tracking read."""
    until(lambda: len(watch.events("sweep_finished")) == len(POLICIES), "both sweeps")
    reads = len(emulator.requests("show_backup"))
    until(lambda: len(emulator.requests("show_backup")) > reads, "a tracking read")


def test_ctrl_c_while_waiting_prints_the_summary_exits_130_and_loses_nothing(
    tmp_path: Path,
) -> None:
    # A manual clock: no replication finishes until the test moves it, so the wait goes on.
    with standalone(make_workspace(tmp_path), "--clock", "manual") as (emulator, config):
        process = start(config, "--run-once", "--wait")
        watch = StderrWatch(process.stderr)
        in_the_wait(emulator, watch)
        process.send_signal(signal.SIGINT)
        stdout, stderr = finish(process, watch)
        assert process.returncode == 130, stderr
        assert no_traceback(stderr), stderr
        assert "stopped by SIGINT while waiting; nothing is lost" in stderr
        for name in POLICIES:
            assert f"policy {name}: ok;" in stdout
        assert "when stopped: 0 failed, 0 given up, 9 unfinished" in stdout
        posts = len(emulator.requests("replicate_backup"))
        assert posts == 8  # the eligible backups of both policies, once each

        # Nothing lost: the next run follows the same jobs to the end, posting nothing again.
        emulator.admin("POST", "clock/advance", {"seconds": 3600})
        again = run(config, "--run-once", "--wait")
        assert again.returncode == 0, again.stderr
        assert "after waiting: 0 failed, 0 given up, 0 unfinished" in again.stdout
        assert len(emulator.requests("replicate_backup")) == posts
        assert emulator.admin("GET", "duplicates")["duplicates"] == []


def test_a_wait_that_runs_out_with_work_unfinished_exits_4(tmp_path: Path) -> None:
    with standalone(make_workspace(tmp_path), "--clock", "manual") as (_, config):
        result = run(config, "--run-once", "--wait", "--wait-timeout", "1s")
    assert result.returncode == 4, result.stderr
    assert "after waiting: 0 failed, 0 given up, 9 unfinished" in result.stdout
    assert no_traceback(result.stderr)


def test_ctrl_c_while_replicate_backup_waits_exits_130_with_the_job_state(
    tmp_path: Path,
) -> None:
    with standalone(make_workspace(tmp_path), "--clock", "manual") as (emulator, config):
        backup = emulator.backup_id("db-prod-2026-11-01")
        process = start(
            config,
            "replicate-backup",
            backup,
            "--to-region",
            "ap-southeast-1",
            "--to-vault",
            "apac-dr",
            "--wait",
        )
        watch = StderrWatch(process.stderr)
        # replicate-backup reads the backup before its POST; the wait reads it after.
        until(lambda: emulator.requests("replicate_backup"), "the POST")
        reads = len(emulator.requests("show_backup"))
        until(lambda: len(emulator.requests("show_backup")) > reads, "a tracking read")
        process.send_signal(signal.SIGINT)
        stdout, stderr = finish(process, watch)
    assert process.returncode == 130, stderr
    assert no_traceback(stderr), stderr
    assert f"{backup} -> ap-southeast-1: replicating" in stdout
    assert "stopped waiting (SIGINT)" in stderr


def test_ctrl_c_during_a_dry_run_sweep_exits_130(tmp_path: Path) -> None:
    # Each API answer takes 0.3 s: the signal comes while the sweep waits on the cloud.
    with standalone(make_workspace(tmp_path), "--latency-ms", "300") as (emulator, config):
        process = start(config, "--run-once", "--dry-run")
        watch = StderrWatch(process.stderr)
        until(emulator.requests, "the first API request")
        process.send_signal(signal.SIGINT)
        _, stderr = finish(process, watch)
    assert process.returncode == 130, stderr
    assert no_traceback(stderr), stderr
    assert "stopped by SIGINT before sweeping" in stderr


def _started_importing(pid: int) -> bool:
    """Has the process mapped pydantic's compiled core? The CLI imports it only inside
    main(), after the stop handlers are in place, and well before it is done."""
    try:
        return "pydantic_core" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize(
    ("command", "signum", "code"),
    [
        ("status", signal.SIGINT, 130),
        ("status", signal.SIGTERM, 143),
        ("status", signal.SIGHUP, 129),
        ("history", signal.SIGINT, 130),
    ],
)
def test_a_signal_during_the_imports_is_a_clean_exit(
    tmp_path: Path, command: str, signum: signal.Signals, code: int
) -> None:
    workspace = make_workspace(tmp_path)
    process = start(workspace / "config" / "demo.yaml", command)
    until(lambda: _started_importing(process.pid), "the imports")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == code, stderr
    assert no_traceback(stderr), stderr
    assert f"stopped by {signum.name}" in stderr


def test_the_emulator_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    with standalone(make_workspace(tmp_path)) as (emulator, _):
        code, stderr = emulator.stop(signal.SIGINT)
    assert code == 0, stderr
    assert no_traceback(stderr), stderr


def _closed_stdout(command: list[str], cwd: Path) -> subprocess.Popen[str]:
    """``command | head -0``: nobody ever reads what it writes."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    assert process.stdout is not None
    process.stdout.close()
    return process


def test_a_closed_stdout_ends_each_command_quietly_with_141(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path)
    with standalone(workspace, "--time-scale", "30") as (_, config):
        base = [CLI, "-c", str(config), "--log-format", "json"]
        waited = _closed_stdout([*base, "--run-once", "--wait"], workspace)
        _, stderr = waited.communicate(timeout=DEADLINE)
        assert (waited.returncode, no_traceback(stderr)) == (141, True), stderr
        # The run itself was complete: the ledger has its replications.
        history = run(config, "history", "--json")
        assert history.returncode == 0
        # history lists each attempt and each tracked outcome: 8 backups submitted, each once.
        entries = json.loads(history.stdout)
        posted = [entry["source_backup_id"] for entry in entries if entry["outcome"] == "accepted"]
        assert len(posted) == len(set(posted)) == 8

        readers = {
            "status": _closed_stdout([*base, "status"], workspace),
            "history": _closed_stdout([*base, "history"], workspace),
            "--dry-run": _closed_stdout([*base, "--run-once", "--dry-run"], workspace),
            "schema": _closed_stdout([CLI, "schema"], workspace),
            "emulator": _closed_stdout(
                [CLI, "emulator", "--scenario", "config/demo-cloud.yaml"], workspace
            ),
        }
        for name, process in readers.items():
            _, stderr = process.communicate(timeout=DEADLINE)
            assert process.returncode == 141, (name, stderr)
            assert stderr.strip() == "" or no_traceback(stderr), (name, stderr)
            assert "BrokenPipeError" not in stderr, (name, stderr)
