"""Alert states and their notifications, in-process: the real ledger, the real SDK adapter
against the emulator, a local webhook receiver over HTTP, and an explicit clock, so hours
pass without waiting. Every change is sent once, whatever the number of sweeps or restarts.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.adapters.webhook import DELIVERY_HEADER, WebhookClient
from daemon.app import App, build_app
from daemon.config.load import load_settings
from daemon.core.model import GIB, JobState, SweepReport
from daemon.core.policy import DestinationSettings, Policy
from daemon.engine import manual
from daemon.engine.outbox import DeliveryReport, Outbox
from daemon.engine.run import run_policies
from tests.engine.harness import Deployment, policy, server_backup
from tests.engine.webhooks import Receiver, receiving

SECRET = "hook-secret-4f1d9c"  # a test value
T0 = datetime(2026, 11, 20, tzinfo=UTC)  # when the scenario's backups were made
SOUTH = "cn-south-1"


def scenario(backups: int = 1, **settings: Any) -> dict[str, Any]:
    made = [
        server_backup(f"web-{n}", created_at=T0.isoformat(), resource_size=40)
        for n in range(backups)
    ]
    return {
        "settings": {"wait_seconds": 10, "replicate_seconds": 60, **settings},
        "regions": {
            "cn-north-4": {
                "replication_destinations": [SOUTH],
                "vaults": [{"name": "web-prod", "backups": made}],
            },
            SOUTH: {"vaults": [{"name": "web-dr", "protect_type": "replication"}]},
        },
    }


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Alerting:
    """One deployment driven in-process: sweep at a given time, then deliver."""

    deployment: Deployment
    receiver: Receiver
    clock: Clock
    app: App
    sleeps: list[float] = field(default_factory=list)

    def sweep(self, at: datetime, policies: list[Policy] | None = None) -> SweepReport:
        self.clock.now = at
        run = run_policies(self.app.engine, policies or self.app.policies())
        self.deliver()
        return run.sweeps[0]

    def deliver(self) -> DeliveryReport:
        return self.outbox().deliver_pending()

    def outbox(self) -> Outbox:
        client = WebhookClient(sleep=self.sleeps.append, clock=lambda: self.clock().timestamp())
        return Outbox(
            self.app.ledger,
            self.app.settings,
            client,
            owner=self.app.engine.owner,
            clock=self.clock,
        )

    def restart(self) -> None:
        """A new process on the same ledger and config."""
        self.app.close()
        self.app = open_app(self.deployment, self.clock)

    def names(self) -> list[str]:
        return self.receiver.event_names()


def open_app(deployment: Deployment, clock: Clock) -> App:
    app = build_app(load_settings(deployment.config), open_cloud=False)
    app.engine = dataclasses.replace(app.engine, clock=clock)
    return app


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


@pytest.fixture
def alerting(
    deploy: Callable[..., Deployment], receiver: Receiver
) -> Iterator[Callable[..., Alerting]]:
    made: list[Alerting] = []

    def make(policies: list[dict[str, Any]], world: dict[str, Any], **notify: Any) -> Alerting:
        hook = {"url": f"{receiver.url}/hook", "secret": SECRET, "timeout": "2s"}
        deployment = deploy(policies, world, notify={"webhook": hook, **notify})
        clock = Clock()
        setup = Alerting(deployment, receiver, clock, open_app(deployment, clock))
        made.append(setup)
        return setup

    yield make
    for setup in made:
        setup.app.close()


WEB = policy("web", ["web-prod"], SOUTH, "web-dr")  # hourly: the RPO is 2h, at risk after 1h
# The ledger's part is the same whatever the backend: the first test runs on both, the others
# (and the ledger tests of tests/ledger) on SQLite only, to keep the suite quick.
SQLITE_ONLY = pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)


def test_rpo_at_risk_then_breached_then_recovered_each_sent_once_across_restarts(
    alerting: Callable[..., Alerting],
) -> None:
    setup = alerting([WEB], scenario())
    with capture_logs() as logs:
        assert setup.sweep(T0 + timedelta(minutes=30)).submitted == 1  # waited 30m: ok
        assert setup.names() == []
        setup.sweep(T0 + timedelta(minutes=70))  # the replication runs on: 70m > 1h
        setup.sweep(T0 + timedelta(minutes=80))
        assert setup.names() == ["rpo_at_risk"]
        setup.sweep(T0 + timedelta(minutes=130))  # 130m > 2h
        setup.restart()
        setup.sweep(T0 + timedelta(minutes=140))
        assert setup.names() == ["rpo_at_risk", "rpo_breached"]
        setup.deployment.emulator.advance(3600)  # the replica is made
        setup.sweep(T0 + timedelta(minutes=150))
        setup.sweep(T0 + timedelta(minutes=160))
    assert setup.names() == ["rpo_at_risk", "rpo_breached", "rpo_recovered"]

    _at_risk, breached, recovered = setup.receiver.events()
    assert breached["previous"] == "at_risk"
    assert breached["state"] == "breached"
    assert breached["policy"] == "web"
    assert breached["destination_region"] == SOUTH
    assert breached["detail"]["rpo_seconds"] == 7200
    assert breached["detail"]["oldest_waiting_age_seconds"] == 130 * 60
    assert recovered["detail"]["newest_replicated_age_seconds"] == 150 * 60
    assert all(post.signed_with(SECRET) for post in setup.receiver.posts())
    assert len({post.header(DELIVERY_HEADER) for post in setup.receiver.posts()}) == 3

    sweeps = [entry for entry in logs if entry["event"] == "sweep_finished"]
    assert [entry["rpo_state"] for entry in sweeps] == [
        *["ok", "at_risk", "at_risk", "breached", "breached"],
        *["ok", "ok"],
    ]
    assert [entry["event"] for entry in logs if entry["event"].startswith("rpo_")] == [
        "rpo_at_risk",
        "rpo_breached",
        "rpo_recovered",
    ]
    assert SECRET not in repr(logs)


@SQLITE_ONLY
def test_a_replication_without_progress_is_stuck_once_then_unstuck(
    alerting: Callable[..., Alerting],
) -> None:
    slow = {**WEB, "stuck_after": "1h", "rpo": "30d"}
    setup = alerting([slow], scenario())
    setup.sweep(T0 + timedelta(minutes=30))  # submitted: the record appears
    setup.sweep(T0 + timedelta(minutes=80))  # 50 minutes without a change
    assert setup.names() == []
    setup.sweep(T0 + timedelta(minutes=95))
    setup.sweep(T0 + timedelta(minutes=120))
    assert setup.names() == ["replication_stuck"]
    stuck = setup.receiver.events()[0]
    assert stuck["detail"]["backup_name"] == "web-0"
    # status (the installed CLI, on today's clock) lists it too.
    code, status = setup.deployment.cli_json("status")
    assert code == 0
    assert [item["backup_name"] for item in status["policies"][0]["stuck"]] == ["web-0"]
    assert status["recent_alerts"][0]["event"] == "replication_stuck"
    assert status["recent_alerts"][0]["delivery"] == "delivered"

    setup.deployment.emulator.advance(3600)
    setup.sweep(T0 + timedelta(minutes=130))
    assert setup.names() == ["replication_stuck", "replication_unstuck"]


@SQLITE_ONLY
def test_given_up_and_retried_and_a_failing_policy_and_its_recovery(
    alerting: Callable[..., Alerting],
) -> None:
    once = {**WEB, "retry": {"max_attempts": 1}, "rpo": "30d"}
    setup = alerting([once], scenario(fail_rate=1.0))
    setup.sweep(T0 + timedelta(minutes=1))
    setup.deployment.emulator.advance(3600)  # the cloud fails the replication
    setup.sweep(T0 + timedelta(minutes=2))
    setup.sweep(T0 + timedelta(minutes=3))
    assert setup.names() == ["replication_given_up"]
    assert setup.receiver.events()[0]["detail"]["error_code"]

    backup = setup.deployment.emulator.backup_id("web-0")
    manual.retry_job(setup.app.engine, backup, SOUTH)
    setup.sweep(T0 + timedelta(minutes=4))
    assert setup.names() == ["replication_given_up", "replication_retried"]

    [configured] = setup.app.policies()
    broken = configured.model_copy(
        update={"destination": DestinationSettings(region=SOUTH, vault="no-such-vault")}
    )
    assert setup.sweep(T0 + timedelta(minutes=5), [broken]).error_reason == "vault_not_found"
    setup.sweep(T0 + timedelta(minutes=6), [broken])
    setup.sweep(T0 + timedelta(minutes=7), [configured])
    assert setup.names()[2:] == ["policy_failing", "policy_recovered"]
    assert setup.receiver.events()[2]["detail"]["reason"] == "vault_not_found"


@SQLITE_ONLY
def test_traffic_budget_exhausted_then_reset_at_midnight_in_the_policy_timezone(
    alerting: Callable[..., Alerting],
) -> None:
    budget = {
        **WEB,
        "schedule": {"interval": "1h", "timezone": "Asia/Shanghai"},  # UTC+8
        "traffic_budget_per_day": "80GiB",  # two of the three 40 GiB backups a day
        "rpo": "30d",
    }
    setup = alerting([budget], scenario(backups=3))
    evening = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai
    local_midnight = datetime(2026, 11, 25, 16, 0, tzinfo=UTC)
    assert setup.sweep(evening).submitted == 2
    setup.sweep(evening + timedelta(minutes=30))
    assert setup.names() == ["traffic_budget_exhausted"]
    assert setup.receiver.events()[0]["detail"] == {
        "until": local_midnight.isoformat(),
        "budget_bytes": 80 * GIB,
    }
    assert len(setup.deployment.replicate_calls()) == 2

    assert setup.sweep(local_midnight + timedelta(minutes=5)).submitted == 1
    setup.sweep(local_midnight + timedelta(minutes=10))
    assert setup.names() == ["traffic_budget_exhausted", "traffic_budget_reset"]
    assert len(setup.deployment.replicate_calls()) == 3


@SQLITE_ONLY
def test_a_failing_webhook_is_retried_in_later_rounds_and_never_blocks_replication(
    alerting: Callable[..., Alerting], receiver: Receiver
) -> None:
    broken = {**WEB, "destination": {"region": SOUTH, "vault": "no-such-vault"}}
    receiver.statuses = [500, 502, 503, 503, 200]
    setup = alerting([broken], scenario())
    setup.sweep(T0)
    assert [post.header(DELIVERY_HEADER) for post in receiver.posts()] == [
        receiver.posts()[0].header(DELIVERY_HEADER)
    ] * 3
    assert setup.sleeps == [1.0, 2.0]  # backoff between the tries of one round
    assert setup.deliver().delivered == 0  # not due yet: the next round is a minute later
    setup.clock.now = T0 + timedelta(minutes=1)
    assert setup.deliver().delivered == 1
    assert len(receiver.posts()) == 5
    assert len(set(receiver.event_names())) == 1

    receiver.statuses = [400]  # refused: dropped at once, never retried
    setup.sweep(T0 + timedelta(minutes=2), [_fixed(setup)])
    setup.clock.now = T0 + timedelta(hours=3)
    setup.deliver()
    assert receiver.event_names()[-1] == "policy_recovered"
    assert len(receiver.posts()) == 6
    assert setup.app.ledger.recent_notifications()[0].status == "dropped"


def _fixed(setup: Alerting) -> Policy:
    [configured] = setup.app.policies()
    return configured.model_copy(
        update={"destination": DestinationSettings(region=SOUTH, vault="web-dr")}
    )


@SQLITE_ONLY
def test_a_dead_webhook_costs_a_logged_failure_and_nothing_else(
    deploy: Callable[..., Deployment],
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}/hook"
    deployment = deploy([WEB], scenario(backups=2), notify={"webhook": {"url": dead}})
    clock = Clock(T0 + timedelta(hours=5))  # waited 5h: the RPO is breached
    app = open_app(deployment, clock)
    try:
        run = run_policies(app.engine, app.policies())
        assert run.sweeps[0].submitted == 2
        sleeps: list[float] = []
        client = WebhookClient(sleep=sleeps.append)
        with capture_logs() as logs:
            report = Outbox(
                app.ledger, app.settings, client, owner="test", clock=clock
            ).deliver_pending()
        assert (report.delivered, report.failed) == (0, 1)
        failed = [entry for entry in logs if entry["event"] == "notification_failed"]
        assert failed[0]["event_name"] == "rpo_breached"
        assert "/hook" not in repr(logs)  # hosts only: a URL's path may be a token
        assert app.ledger.count_jobs({JobState.REPLICATING}) == 2
    finally:
        app.close()
