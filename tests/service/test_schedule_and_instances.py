"""The daemon's first sweep and its identity: an interval policy sweeps at the start (and
``status`` says when next), a reload keeps the process's one instance row, and a clean stop
removes it."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import datetime
from typing import Any

from daemon.core import exitcodes
from tests.engine.harness import CLI
from tests.service.support import Service, web_south


def status(service: Service) -> dict[str, Any]:
    result = subprocess.run(
        [CLI, "-c", str(service.config), "status", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_an_interval_policy_sweeps_at_start_and_status_says_when_next(service: Service) -> None:
    service.write_config([web_south("1h")])
    daemon, _ = service.start_ready()
    started = daemon.wait_event("daemon_started")
    assert set(started["next_sweeps"]) == {"web-south"}
    daemon.wait_event("sweep_finished", policy="web-south")  # not an hour later
    row = status(service)["policies"][0]
    ahead = moment(row["next_sweep"]) - moment(row["last_sweep"])
    assert 0 < ahead.total_seconds() <= 3600


def test_reloads_keep_one_instance_row_and_a_clean_stop_removes_it(service: Service) -> None:
    service.write_config([web_south("1h")])
    daemon, notify = service.start_ready()
    daemon.wait_event("sweep_finished", policy="web-south")
    for interval in ("2h", "3h"):  # a changed interval sweeps at once, and so is seen
        service.write_config([web_south(interval)])
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reload_finished")
        daemon.wait_event("sweep_finished", policy="web-south")
    instances = status(service)["instances"]
    assert [row["owner"].split(":")[1] for row in instances] == [str(daemon.pid)]
    assert instances[0]["gone"] is False
    daemon.signal(signal.SIGTERM)
    notify.wait_for("STOPPING", "1")
    assert daemon.wait() == exitcodes.OK
    assert status(service)["instances"] == []
