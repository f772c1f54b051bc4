"""A reload with a config that parses but cannot run (a duration past any use, a URL that
does not parse) is refused like any broken config: the daemon keeps running the old one.
Before, the first killed the daemon (OverflowError) and the second was accepted, then raised
a traceback in every notification round."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.service.support import Service, web_south


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"policies": [web_south("99999999d")]}, "interval: is longer than the 366d allowed"),
        (
            {"policies": [web_south("1s")], "notify": {"heartbeat": {"url": "https://[zz::1]/p"}}},
            "notify.heartbeat.url: its host is not a valid name",
        ),
    ],
)
def test_a_reload_with_an_unusable_value_keeps_the_old_config(
    service: Service, change: dict[str, Any], problem: str
) -> None:
    service.write_config([web_south("1s")])
    daemon, notify = service.start_ready()
    daemon.wait_event("sweep_finished", policy="web-south")

    policies = change.pop("policies")
    service.write_config(policies, **change)
    daemon.signal(signal.SIGHUP)
    ready = notify.wait_for("READY", "1")
    assert "reload failed, running the previous config" in ready["STATUS"]
    assert problem in daemon.wait_event("reload_config_problem")["problem"]
    daemon.wait_event("reload_rejected")
    daemon.wait_event("sweep_finished", policy="web-south")  # the old schedule sweeps on
    assert daemon.process.poll() is None
    assert "Traceback" not in daemon.output
