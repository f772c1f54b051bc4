"""A daemon whose scheduled sweep was skipped because another instance held the policy's lease
(issue 8) looks again every quarter lease: it sweeps the round itself once that lease ran out
without a finished sweep (the holder died), and leaves it when the holder finished it. Without
this, a policy whose sweeper died waited for its next scheduled run, hours away.

In-process (the daemon's work items called directly, its scheduler not started), against the
emulator of the service tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from daemon.adapters.systemd import SystemdNotifier
from daemon.config.load import load_settings
from daemon.core.model import SweepReport
from daemon.service.daemon import Daemon
from tests.service.support import Service, web_south

HOLDER = "other-host:4242:1700000000"  # an instance of another host: waited out
LEASE = "sweep:web-south"


@pytest.fixture
def daemon(service: Service) -> Iterator[Daemon]:
    service.write_config(
        [web_south("1h")], cloud={"lease": "3s", "connect_timeout": "1s", "timeout": "1s"}
    )
    made = Daemon(service.config, load_settings(service.config), SystemdNotifier(environ={}))
    yield made
    made._close()


def hold(daemon: Daemon, seconds: float) -> datetime:
    now = datetime.now(UTC)
    until = now + timedelta(seconds=seconds)
    assert daemon.app.ledger.acquire_lease(LEASE, owner=HOLDER, now=now, until=until)
    return until


def follow_up(daemon: Daemon) -> tuple[datetime, datetime]:
    """The pending look-again job: when it runs, and the skipped run it follows."""
    job = daemon.scheduler.get_job("takeover:web-south")
    assert job is not None, "a skipped sweep must be followed"
    return job.trigger.run_date, job.args[1]


def test_a_skipped_sweep_is_taken_over_once_the_holders_lease_ran_out(
    service: Service, daemon: Daemon
) -> None:
    expires = hold(daemon, 2.0)

    daemon._sweep_job("web-south")  # the scheduled run: skipped, another instance sweeps
    run_at, skipped_at = follow_up(daemon)
    assert run_at - skipped_at < timedelta(seconds=1.5)  # a quarter lease (0.75 s), not 1h
    daemon._takeover_job("web-south", skipped_at)  # the holder's lease is still live
    assert service.emulator.requests("list_backups") == []
    follow_up(daemon)  # followed again

    # The holder stops renewing: its lease runs out (set in the past rather than slept out).
    now = datetime.now(UTC)
    assert now < expires
    assert daemon.app.ledger.acquire_lease(
        LEASE, owner=HOLDER, now=now, until=now - timedelta(seconds=1)
    )
    daemon._takeover_job("web-south", skipped_at)  # ran out, no sweep finished: take it over

    assert service.emulator.requests("list_backups") != []
    assert len(service.emulator.requests("replicate_backup")) == 4


def test_a_round_the_holder_finished_is_not_swept_again(service: Service, daemon: Daemon) -> None:
    hold(daemon, 30.0)
    daemon._sweep_job("web-south")
    _, skipped_at = follow_up(daemon)

    # The holder finishes its sweep and releases the lease.
    ledger = daemon.app.ledger
    sweep = ledger.start_sweep("web-south", skipped_at - timedelta(seconds=1))
    finished = datetime.now(UTC)
    ledger.finish_sweep(
        sweep, SweepReport(policy="web-south", started_at=skipped_at, finished_at=finished)
    )
    ledger.release_lease(LEASE, owner=HOLDER)
    daemon._takeover_job("web-south", skipped_at)

    assert service.emulator.requests("list_backups") == []
