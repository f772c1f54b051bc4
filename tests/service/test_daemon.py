"""The daemon as systemd runs it: READY, scheduled sweeps, reload by SIGHUP, stop by SIGTERM,
and the single-instance guard of a SQLite ledger."""

from __future__ import annotations

import signal
import sqlite3
from contextlib import closing
from pathlib import Path

from daemon.core import exitcodes
from tests.service.support import Service, web_south

ELIGIBLE_WEB_BACKUPS = 4  # web-ok-1, web-ok-child, the oddly named one, web-failed (retry)
# The sweep also adopts what the cloud already has: web-done (succeeded), web-inflight.
ADOPTED_SUCCEEDED, ADOPTED_REPLICATING = 1, 1


def test_ready_comes_after_start_with_a_status_line_then_the_watchdog(service: Service) -> None:
    service.write_config([web_south("1h")])
    notify = service.notify_socket()
    daemon = service.start(notify=notify, env={"WATCHDOG_USEC": "400000"})
    ready = notify.wait_for("READY", "1")
    assert ready["STATUS"].startswith("idle; 0 queued, 0 in flight")
    assert daemon.wait_event("daemon_started")["policies"] == ["web-south"]
    notify.wait_for("WATCHDOG", "1", timeout=5)
    notify.wait_for("WATCHDOG", "1", timeout=5)  # and again: it comes from the main loop


def test_one_second_interval_policy_sweeps_replicates_and_tracks(service: Service) -> None:
    service.write_config([web_south("1s")])
    daemon, notify = service.start_ready()
    first = daemon.wait_event("sweep_finished", policy="web-south")
    assert first["submitted"] == ELIGIBLE_WEB_BACKUPS
    again = daemon.wait_event("sweep_finished", policy="web-south")
    assert again["submitted"] == 0
    assert len(service.emulator.requests("replicate_backup")) == ELIGIBLE_WEB_BACKUPS
    assert service.job_states() == {
        "replicating": ELIGIBLE_WEB_BACKUPS + ADOPTED_REPLICATING,
        "succeeded": ADOPTED_SUCCEEDED,
    }

    notify.drain()
    service.emulator.advance(3600)  # the emulated replications finish
    notify.wait_for("STATUS", "idle; 0 queued, 0 in flight")
    assert service.job_states() == {
        "succeeded": ELIGIBLE_WEB_BACKUPS + ADOPTED_REPLICATING + ADOPTED_SUCCEEDED
    }
    daemon.wait_event("sweep_finished", policy="web-south")
    assert len(service.emulator.requests("replicate_backup")) == ELIGIBLE_WEB_BACKUPS
    assert service.emulator.duplicates() == []


def test_sighup_with_a_broken_config_keeps_the_old_one_running_and_says_why(
    service: Service,
) -> None:
    service.write_config([web_south("1s")])
    daemon, notify = service.start_ready()
    daemon.wait_event("sweep_finished", policy="web-south")

    service.write_config([web_south("soon")])
    daemon.signal(signal.SIGHUP)
    notify.wait_for("RELOADING", "1")
    ready = notify.wait_for("READY", "1")
    assert "reload failed, running the previous config" in ready["STATUS"]
    problem = daemon.wait_event("reload_config_problem")
    assert "config.yaml" in problem["problem"]
    assert "interval" in problem["problem"]
    assert "soon" in problem["problem"]
    rejected = daemon.wait_event("reload_rejected")
    assert rejected["detail"] == "keeping the running configuration"
    # The old schedule keeps sweeping.
    daemon.wait_event("sweep_finished", policy="web-south")
    assert daemon.process.poll() is None


def test_sighup_with_a_changed_config_reschedules_the_policy(service: Service) -> None:
    yearly = {**web_south(), "schedule": {"cron": "0 0 1 1 *"}}  # (an interval sweeps at start)
    service.write_config([yearly])
    daemon, notify = service.start_ready()
    assert service.emulator.requests("list_backups") == []

    service.write_config([web_south("1s")])
    daemon.signal(signal.SIGHUP)
    notify.wait_for("RELOADING", "1")
    notify.wait_for("READY", "1")
    finished = daemon.wait_event("reload_finished")
    assert finished["rescheduled"] == ["web-south"]
    assert finished["removed"] == []
    sweep = daemon.wait_event("sweep_finished", policy="web-south", timeout=5)
    assert sweep["submitted"] == ELIGIBLE_WEB_BACKUPS


def test_sigterm_between_sweeps_stops_at_once_with_exit_code_zero(service: Service) -> None:
    service.write_config([web_south("1s")])
    daemon, notify = service.start_ready()
    daemon.wait_event("sweep_finished", policy="web-south")

    daemon.signal(signal.SIGTERM)
    notify.wait_for("STOPPING", "1")
    assert daemon.wait() == exitcodes.OK
    assert daemon.events("daemon_stopped")
    # Idle between sweeps: nothing in flight to wait out (how fast is a benchmark's business).
    assert not daemon.events("stop_timeout")


def test_a_second_daemon_on_the_same_sqlite_ledger_refuses_to_start(service: Service) -> None:
    service.write_config([web_south("1h")])
    first, _ = service.start_ready()

    second = service.start()
    assert second.wait() == exitcodes.CONFIG
    assert "in use by another cbr-replicator daemon" in second.output
    assert f"pid {first.pid}" in second.output
    assert first.process.poll() is None

    # --run-once is no daemon: it runs beside one, relying on the ledger's leases.
    once = service.start("--run-once")
    assert once.wait() == exitcodes.OK
    assert len(service.emulator.requests("replicate_backup")) == ELIGIBLE_WEB_BACKUPS


def _locks_held(pid: int, path: Path) -> int:
    """POSIX and flock locks that ``pid`` holds on ``path`` (``/proc/locks``, by inode)."""
    inode = path.stat().st_ino
    held = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        owner = fields[4] if fields[1] != "->" else fields[5]
        device_inode = fields[5] if fields[1] != "->" else fields[6]
        if owner == str(pid) and device_inode.rsplit(":", 1)[-1] == str(inode):
            held += 1
    return held


def test_reload_keeps_the_ledger_open_so_a_reader_beside_it_loses_nothing(
    service: Service,
) -> None:
    service.write_config([web_south("1s")])
    daemon, notify = service.start_ready()
    daemon.wait_event("sweep_finished", policy="web-south")
    locks_before = _locks_held(daemon.pid, service.ledger)
    assert locks_before > 0

    service.write_config([web_south("1s")], defaults={"max_in_flight": 9})
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("reload_finished")
    # The daemon still holds SQLite's locks on its ledger: nothing opened and closed the file.
    assert _locks_held(daemon.pid, service.ledger) == locks_before
    # Another process (status, a --run-once) opens and closes the ledger. Had the daemon lost
    # its locks, this close would checkpoint and delete the WAL the daemon still writes to.
    with closing(sqlite3.connect(service.ledger)) as reader:
        reader.execute("SELECT COUNT(*) FROM sweeps").fetchone()

    swept_after_reload = []
    for _ in range(3):
        swept_after_reload.append(daemon.wait_event("sweep_finished", policy="web-south"))
        notify.drain()  # systemd reads its socket; an unread one would fill up
    with closing(sqlite3.connect(f"file:{service.ledger}?mode=ro", uri=True)) as connection:
        instances = connection.execute("SELECT owner FROM instances").fetchall()
    # One instance row for the one daemon process, however often it reloads.
    assert len(instances) == 1
    assert f":{daemon.pid}:" in instances[0][0]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == exitcodes.OK
    with closing(sqlite3.connect(f"file:{service.ledger}?mode=ro", uri=True)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (recorded,) = connection.execute(
            "SELECT COUNT(*) FROM sweeps WHERE finished_at IS NOT NULL"
        ).fetchone()
    # Every sweep the daemon logged, the three after the reload among them, is in the ledger.
    assert recorded == len(daemon.events("sweep_finished")) >= len(swept_after_reload) + 1
