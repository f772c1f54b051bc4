"""Several instances on one ledger (issue 8, docs/design.md §9), in-process on both backends
with the real adapter against a *permissive* emulator (a second POST makes a second replica):

- a job whose claim ran out while it waited, and that another instance claimed and posted
  meanwhile, is never posted again by the first claimer (the intent is fenced on the claim);
- the intent restarts the job's lease, so it covers the POST however long the job waited;
- the sweep lease is renewed while a long sweep runs, and a sweep that lost it stops;
- a lease held by an instance of another host is taken only once it has expired.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from daemon.adapters.ledger import SqlLedger
from daemon.app import owner_gone
from daemon.core.model import BackupPage, JobState
from daemon.core.policy import Policy
from daemon.core.ports import Ledger
from daemon.emulator import Emulator
from daemon.engine import submit
from daemon.engine.context import Engine
from daemon.engine.sweep import sweep_policy
from tests.adapter.test_cloud_contract import make_cloud
from tests.engine.harness import one_vault_scenario, policy, server_backup
from tests.engine.test_submit_protocol import DEST, SOURCE, START, Clock, job_for, setup

OTHER = "other-host:4242:1700000000"  # an instance of another host (never "gone" from here)
WEB = Policy.model_validate(policy("web", ["web-prod"], DEST, "web-dr"))


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    backups = [server_backup("web-1"), server_backup("web-2")]
    with Emulator(
        one_vault_scenario(SOURCE, DEST, backups), clock="manual", permissive=True
    ) as running:
        yield running


def clock_of(engine: Engine) -> Clock:
    assert isinstance(engine.clock, Clock)
    return engine.clock


def posts(emulator: Emulator) -> int:
    return len(emulator.requests("replicate_backup"))


# -- job claims --------------------------------------------------------------------------------


def test_a_claim_taken_over_after_its_lease_ran_out_is_not_posted_by_the_first_claimer(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    first, target = setup(emulator, ledger, max_in_flight=5)
    second = replace(first, owner=OTHER)
    ledger.save_jobs([job_for(emulator, first, target, "web-1")], START)
    [stale] = ledger.claim_jobs(
        owner=first.owner, now=START, lease_until=START + first.lease, limit=5
    )
    # The first instance stalls (a long pause, a slow ledger) past its claim's lease...
    clock_of(first).now = START + first.lease + timedelta(seconds=1)
    [taken] = ledger.claim_jobs(
        owner=OTHER, now=clock_of(first).now, lease_until=clock_of(first).now + first.lease, limit=5
    )
    assert submit.submit_claimed(second, target, taken)[0] == "submitted"

    # ...then carries on with the job it claimed: it must not post it again.
    outcome, _ = submit.submit_claimed(first, target, stale)

    assert outcome == "deferred"
    assert posts(emulator) == 1
    assert emulator.duplicates() == []
    stored = ledger.get_job(stale.source_backup_id, DEST)
    assert stored is not None
    assert stored.state == JobState.REPLICATING


class TakenOverAfterClaim:
    """A ledger on which, right after each claim, the claim's lease runs out and another
    instance claims and posts the same jobs (``meanwhile``)."""

    def __init__(self, ledger: SqlLedger, meanwhile: Any) -> None:
        self._ledger = ledger
        self._meanwhile = meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def claim_jobs(self, **options: Any) -> Any:
        claimed = self._ledger.claim_jobs(**options)
        if claimed:
            self._meanwhile()
        return claimed


def test_a_submission_pass_whose_claims_were_taken_over_posts_none_of_them(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    first, target = setup(emulator, ledger, max_in_flight=5)
    second = replace(first, owner=OTHER)
    jobs = [job_for(emulator, first, target, name) for name in ("web-1", "web-2")]
    ledger.save_jobs(jobs, START)
    other_pass: list[submit.SubmitReport] = []

    def meanwhile() -> None:
        clock_of(first).now += first.lease + timedelta(seconds=1)
        other_pass.append(submit.submit_due(second, target))

    stalled = replace(first, ledger=cast(Ledger, TakenOverAfterClaim(ledger, meanwhile)))
    report = submit.submit_due(stalled, target)

    assert other_pass[0].submitted == 2
    assert report.claimed == 2
    assert report.submitted == 0
    assert posts(emulator) == 2
    assert emulator.duplicates() == []


def test_the_intent_restarts_the_jobs_lease(emulator: Emulator, ledger: SqlLedger) -> None:
    """A job that waited most of its claim's lease for its turn still has a whole lease for
    its POST: nobody may reclaim (and repost) it while that POST can be in flight."""
    engine, target = setup(emulator, ledger, max_in_flight=5)
    ledger.save_jobs([job_for(emulator, engine, target, "web-1")], START)
    [claimed] = ledger.claim_jobs(
        owner=engine.owner, now=START, lease_until=START + engine.lease, limit=5
    )
    clock_of(engine).now = START + engine.lease - timedelta(seconds=5)

    [intent] = submit._write_intents(engine, target, [claimed])

    assert intent.state == JobState.SUBMITTING
    assert intent.lease_owner == engine.owner
    assert intent.lease_expires_at == clock_of(engine).now + engine.lease
    later = clock_of(engine).now + engine.lease - timedelta(seconds=1)
    assert ledger.claim_jobs(owner=OTHER, now=later, lease_until=later, limit=5) == []


# -- the sweep lease ----------------------------------------------------------------------------


def utc_now() -> datetime:
    return datetime.now(UTC)


class SlowListing:
    """The real adapter, but listing a vault first waits (``before_listing``), like a slow
    page of a large vault."""

    def __init__(self, cloud: Any, before_listing: Any) -> None:
        self._cloud = cloud
        self._before_listing = before_listing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cloud, name)

    def list_backup_pages(self, *args: Any) -> Iterator[BackupPage]:
        self._before_listing()
        yield from self._cloud.list_backup_pages(*args)


def real_time_engine(emulator: Emulator, ledger: SqlLedger, cloud: Any, lease: float) -> Engine:
    engine, _ = setup(emulator, ledger, max_in_flight=5)
    return replace(engine, cloud=cloud, clock=utc_now, lease=timedelta(seconds=lease))


def test_the_sweep_lease_is_renewed_while_a_sweep_outlasts_it(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    lease = 0.8
    refused: list[bool] = []

    def another_instance_tries() -> None:
        # Three lease lengths of listing; another host keeps trying to take the policy over.
        deadline = time.monotonic() + 3 * lease
        while time.monotonic() < deadline:
            now = utc_now()
            taken = ledger.acquire_lease(
                "sweep:web", owner=OTHER, now=now, until=now + timedelta(seconds=lease)
            )
            refused.append(not taken)
            time.sleep(lease / 8)

    slow = SlowListing(make_cloud(emulator), another_instance_tries)
    engine = real_time_engine(emulator, ledger, slow, lease)

    report, _ = sweep_policy(engine, WEB)

    assert report.error is None, report.error
    assert len(refused) > 10
    assert all(refused)
    assert report.submitted == 2
    # Released at the end: the other instance gets it at once.
    now = utc_now()
    assert ledger.acquire_lease("sweep:web", owner=OTHER, now=now, until=now)


def test_a_sweep_that_lost_its_lease_stops_before_submitting(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    lease = 0.6

    def taken_over_meanwhile() -> None:
        now = utc_now()
        # Another instance took the policy over (as if this one had stalled a whole lease).
        assert ledger.acquire_lease(
            "sweep:web",
            owner=OTHER,
            now=now,
            until=now + timedelta(minutes=5),
            holder_gone=lambda _owner: True,
        )
        time.sleep(lease)  # the next renewal is refused

    engine = real_time_engine(
        emulator, ledger, SlowListing(make_cloud(emulator), taken_over_meanwhile), lease
    )

    report, _ = sweep_policy(engine, WEB)

    assert report.error_reason == "lease_lost"
    assert posts(emulator) == 0
    now = utc_now()
    assert not ledger.acquire_lease("sweep:web", owner="third:1:1", now=now, until=now)


def test_another_hosts_sweep_lease_is_taken_only_after_it_expired(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    """An instance of another host may be alive (this host cannot tell): its lease is waited
    out, whereas a dead process of this host loses it at once."""
    engine, _ = setup(emulator, ledger, max_in_flight=5)
    engine = replace(engine, owner_gone=owner_gone)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    elsewhere = f"other-{socket.gethostname()}:{dead.pid}:1700000000"
    assert ledger.acquire_lease("sweep:web", owner=elsewhere, now=START, until=START + engine.lease)

    clock_of(engine).now = START + engine.lease - timedelta(seconds=1)
    before, _ = sweep_policy(engine, WEB)
    clock_of(engine).now = START + engine.lease + timedelta(seconds=1)
    after, _ = sweep_policy(engine, WEB)

    assert before.error_reason == "leased"
    assert after.error is None, after.error
    assert after.submitted == 2

    local = f"{socket.gethostname()}:{dead.pid}:1700000000"
    now = clock_of(engine).now
    assert ledger.acquire_lease("sweep:web", owner=local, now=now, until=now + engine.lease)
    taken, _ = sweep_policy(engine, WEB)
    assert taken.error is None, taken.error


def test_several_threads_share_a_policys_sweeps_without_overlap(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    """Three engines sweep the same policy at once, over and over: never two at a time."""
    inside = threading.Semaphore(1)
    overlaps: list[str] = []

    def guarded() -> None:
        if not inside.acquire(blocking=False):
            overlaps.append("two sweeps listed at once")
            return
        time.sleep(0.05)
        inside.release()

    engines = [
        replace(
            real_time_engine(emulator, ledger, SlowListing(make_cloud(emulator), guarded), 2.0),
            owner=f"host-{number}:{number}:1",
        )
        for number in range(3)
    ]
    reports: list[str | None] = []

    def sweeps(engine: Engine) -> None:
        for _ in range(5):
            report, _ = sweep_policy(engine, WEB)
            reports.append(report.error_reason)

    threads = [threading.Thread(target=sweeps, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert overlaps == []
    assert set(reports) <= {None, "leased"}
    assert None in reports
    assert posts(emulator) == 2
    assert emulator.duplicates() == []
