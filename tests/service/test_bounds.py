"""A policy whose listing never ends holds the daemon's work lock only until
``cloud.sweep_deadline``: its sweep stops with a clear error and the other policies are swept;
a work item that goes on calling the cloud past its deadline counts as hung (no watchdog)."""

from __future__ import annotations

from daemon.service import HANG_AFTER, is_hung
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
