"""The daemon tells operators: each alert change posted once to a local webhook receiver
however many sweeps see it, a heartbeat ping after each healthy sweep, and the RPO and stuck
figures on the metrics endpoint."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from daemon.core import exitcodes
from tests.engine.harness import policy
from tests.engine.webhooks import Receiver, receiving
from tests.service.support import Service, web_south
from tests.service.test_metrics import scrape, value

SECRET = "daemon-hook-secret-77c1"  # a test value
SOUTH = {"policy": "web-south", "destination_region": "cn-south-1"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


def test_the_daemon_sends_each_change_once_and_pings_after_healthy_sweeps(
    service: Service, receiver: Receiver
) -> None:
    broken = policy(
        "broken", ["db-prod"], "cn-south-1", "no-such-vault", schedule={"interval": "1s"}
    )
    service.write_config(
        [web_south("1s"), broken],
        notify={
            "webhook": {"url": f"{receiver.url}/hook", "secret": SECRET},
            "heartbeat": {"url": f"{receiver.url}/ping/daemon-token"},
        },
        metrics={"listen": "127.0.0.1:0"},
    )
    daemon = service.start()  # no NOTIFY_SOCKET: nobody would read its datagrams here
    address = daemon.wait_event("daemon_started")["metrics"]
    # web-south's backups were made days ago: its RPO is breached from the first sweep on.
    # Both policies sweep at the start, in either order.
    for event, name in (("rpo_breached", "web-south"), ("policy_failing", "broken")):
        if not [record for record in daemon.events(event) if record.get("policy") == name]:
            daemon.wait_event(event, policy=name)
    for _ in range(3):
        daemon.wait_event("sweep_finished", policy="web-south")
    receiver.wait_for(lambda r: len(r.pings("/ping/daemon-token")) >= 3)
    receiver.wait_for(lambda r: len(r.posts()) >= 2)
    assert sorted(receiver.event_names()) == ["policy_failing", "rpo_breached"]
    assert all(post.signed_with(SECRET) for post in receiver.posts())

    samples = scrape(address)
    assert value(samples, "cbr_replicator_rpo_state", **SOUTH, state="breached") == 1
    assert value(samples, "cbr_replicator_rpo_state", **SOUTH, state="ok") == 0
    assert value(samples, "cbr_replicator_rpo_seconds", **SOUTH) == 2  # twice the 1s period
    assert value(samples, "cbr_replicator_oldest_waiting_backup_age_seconds", **SOUTH) > 3600
    assert value(samples, "cbr_replicator_stuck_replications", **SOUTH) == 0
    delivered = {"kind": "webhook", "outcome": "delivered"}
    assert value(samples, "cbr_replicator_notifications_total", **delivered) == 2
    pinged = {"kind": "heartbeat", "outcome": "delivered"}
    assert value(samples, "cbr_replicator_notifications_total", **pinged) >= 3

    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == exitcodes.OK
    assert len(receiver.posts()) == 2  # nothing was sent twice
    assert SECRET not in daemon.output
    assert "daemon-token" not in daemon.output
