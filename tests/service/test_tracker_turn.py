"""The tracker's round is never lost to a busy work lock: a policy swept as often as the
tracker runs (every minute, as the demo's) fires at the same moments, so the tracker found
the lock taken at every round and manual jobs stayed ``replicating`` for good.

In-process (the daemon's work items called directly, its scheduler not started), against the
emulator of the service tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing

import pytest

from daemon.adapters.systemd import SystemdNotifier
from daemon.config.load import load_settings
from daemon.core import exitcodes
from daemon.service.daemon import Daemon
from tests.service.support import Service, web_south


@pytest.fixture
def daemon(service: Service) -> Iterator[Daemon]:
    service.write_config([web_south("1m")])
    made = Daemon(service.config, load_settings(service.config), SystemdNotifier(environ={}))
    yield made
    made._close()


def manual_job_state(service: Service, backup: str) -> str:
    with closing(sqlite3.connect(f"file:{service.ledger}?mode=ro", uri=True)) as connection:
        (state,) = connection.execute(
            "SELECT state FROM jobs WHERE source_backup_id = ?", (backup,)
        ).fetchone()
    return str(state)


def replicate_by_hand(service: Service) -> str:
    """``replicate-backup`` without ``--wait``: a manual job only the tracker follows."""
    backup = service.emulator.backup_id("db-1")
    manual = service.start(
        "replicate-backup", backup, "--to-region", "cn-south-1", "--to-vault", "web-dr"
    )
    assert manual.wait() == exitcodes.OK, manual.output
    service.emulator.advance(3600)  # the replication finishes in the cloud
    assert manual_job_state(service, backup) == "replicating"
    return backup


def test_a_round_that_found_the_work_lock_taken_runs_before_the_holder_lets_go(
    service: Service, daemon: Daemon
) -> None:
    backup = replicate_by_hand(service)
    with daemon._work_lock:  # a sweep is running when the tracker's trigger fires
        daemon._track_job()
    assert manual_job_state(service, backup) == "replicating"

    daemon._sweep_job("web-south")  # the next work item runs the round it held up

    assert manual_job_state(service, backup) == "succeeded"


def test_a_free_work_lock_lets_the_tracker_follow_manual_jobs_itself(
    service: Service, daemon: Daemon
) -> None:
    backup = replicate_by_hand(service)
    daemon._track_job()
    assert manual_job_state(service, backup) == "succeeded"
