"""Bounds of the daemon: a policy whose listing never ends holds the work lock only until
``cloud.sweep_deadline`` (its sweep stops with a clear error, the other policies are swept); a
work item that goes on calling the cloud past its deadline counts as hung (no watchdog); a
ledger deleted under the daemon stops it (exit 78) instead of failing every sweep forever; a
deleted lock file never lets a second daemon run beside the first."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.adapters.instance_lock import InstanceLock
from daemon.core import exitcodes
from daemon.core.errors import LedgerError
from daemon.service.scheduling import HANG_AFTER, is_hung
from tests.engine.harness import policy
from tests.service.support import Service, web_south

HANG = HANG_AFTER.total_seconds()


def test_an_endless_listing_stops_at_the_deadline_and_the_other_policy_is_swept(
    service: Service,
) -> None:
    endless = policy("endless", ["db-prod"], "cn-south-1", "web-dr", schedule={"interval": "1s"})
    service.write_config(
        [endless, web_south("5s")],
        cloud={"sweep_deadline": "2s", "max_listing_pages": 1_000_000},
    )
    db_prod = service.emulator.vault_id("cn-north-4", "db-prod")
    service.emulator.set_faults({"listing": "endless", "listing_vaults": [db_prod]})
    daemon, _ = service.start_ready()
    stopped = daemon.wait_event("sweep_finished", policy="endless")
    assert stopped["error_reason"] == "sweep_deadline"
    assert "cloud.sweep_deadline" in stopped["error"]
    healthy = daemon.wait_event("sweep_finished", policy="web-south")
    assert healthy["error"] is None
    assert healthy["submitted"] > 0


def test_calls_past_the_deadline_are_no_progress() -> None:
    start = 1000.0
    deadline = start + 60
    # Within its deadline, a call is progress: not hung however long the item runs.
    assert not is_hung(start + 59 + HANG, progress=start + 59 + HANG - 1, deadline=float("inf"))
    # Still calling past its deadline (progress marks after it count for nothing).
    assert is_hung(deadline + HANG + 1, progress=deadline + HANG, deadline=deadline)
    assert not is_hung(deadline + HANG - 1, progress=deadline + HANG - 2, deadline=deadline)
    # No call at all for HANG_AFTER (stuck in one, or in the ledger): hung as before.
    assert is_hung(start + HANG + 1, progress=start, deadline=float("inf"))


def test_a_ledger_deleted_under_the_daemon_stops_it_with_a_clear_error(
    service: Service,
) -> None:
    service.write_config([web_south("1s")])
    daemon = service.start()  # no notify socket: nobody would read its messages here
    daemon.wait_event("sweep_finished", policy="web-south")
    service.ledger.unlink()  # what a careless cleanup does; SQLite keeps the old inode open
    gone = daemon.wait_event("ledger_gone")
    assert "deleted or replaced" in gone["error"]
    assert daemon.wait() == exitcodes.CONFIG
    assert not daemon.events("work_crashed")


def test_a_deleted_lock_file_is_made_again_and_a_second_daemon_still_refuses(
    service: Service,
) -> None:
    service.write_config([web_south("1h")])
    first, _ = service.start_ready()
    lock = service.ledger.with_name(service.ledger.name + ".lock")
    lock.unlink()
    first.wait_event("instance_lock_restored")
    second = service.start()
    assert second.wait() == exitcodes.CONFIG
    assert "in use by another cbr-replicator daemon" in second.output
    assert first.process.poll() is None


def test_a_daemon_whose_lock_another_daemon_took_stops(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = InstanceLock.acquire(url)
    assert first is not None
    first.path.unlink()
    second = InstanceLock.acquire(url)  # the deleted file no longer guards anything
    assert second is not None
    with pytest.raises(LedgerError, match="two daemons on one SQLite ledger"):
        first.check()
    second.release()
    first.release()
