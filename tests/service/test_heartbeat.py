"""The daemon's own heartbeat (issue 8: ``status`` says when each instance was last seen). It
runs on a scheduler thread of its own, every half lease at most, so neither a long sweep (the
tracker skips its rounds meanwhile) nor a slow schedule makes a live instance look gone."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing

from tests.service.support import DEADLINE, Service, web_south


def last_seen(service: Service) -> dict[str, str]:
    uri = f"file:{service.ledger}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as connection:
        try:
            rows = connection.execute("SELECT owner, last_seen_at FROM instances").fetchall()
        except sqlite3.OperationalError:  # no table yet
            return {}
    return dict(rows)


def test_the_daemon_heartbeats_between_sweeps_every_half_lease(service: Service) -> None:
    # Nothing sweeps during the test (yearly; an interval would sweep at the start), and the
    # tracker's first round is a minute away.
    yearly = {**web_south(), "schedule": {"cron": "0 0 1 1 *"}}
    service.write_config([yearly], cloud={"lease": "3s", "connect_timeout": "1s", "timeout": "1s"})
    daemon, _ = service.start_ready()
    seen: set[str] = set()
    deadline = time.monotonic() + DEADLINE
    while len(seen) < 2 and time.monotonic() < deadline:
        seen.update(
            moment for owner, moment in last_seen(service).items() if f":{daemon.pid}:" in owner
        )
        time.sleep(0.2)
    assert len(seen) >= 2, f"instances: {last_seen(service)}"
    assert service.emulator.requests("list_backups") == []
