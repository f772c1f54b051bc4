"""The engine meets the real API's answers (docs/design.md §16): the manual commands on a 404
that is not CBR's, a vault "being replicated", the recheck after an ambiguous POST, and a
sweep throttled past its budget. The real adapter and SDK, against the emulator."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.adapters.ledger import SqlLedger, open_ledger
from daemon.core.errors import (
    EndpointError,
    NotFoundError,
    PermanentError,
    RefusedError,
    TransientError,
)
from daemon.core.model import JobState
from daemon.core.policy import Policy
from daemon.emulator import Emulator
from daemon.engine import manual, submit
from daemon.engine.context import Engine, ambiguous_recheck
from daemon.engine.resolve import resolve_policy
from daemon.engine.run import run_policies
from daemon.engine.sweep import sweep_policy
from tests.engine.harness import policy, rules_scenario
from tests.reliability.reliability_support import (
    ManualClock,
    SleepClock,
    cloud_on,
    engine_on,
)

SOURCE = "cn-north-4"
SOUTH = "cn-south-1"
APAC = "ap-southeast-1"
WEB_SOUTH = Policy.model_validate(policy("web-south", ["web-prod"], SOUTH, "web-dr"))


@dataclass
class World:
    emulator: Emulator
    ledger: SqlLedger
    engine: Engine
    clock: ManualClock

    def posts(self) -> list[dict[str, Any]]:
        return [call for call in self.emulator.requests() if call["method"] != "GET"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    emulator = Emulator(rules_scenario(), clock="manual")
    emulator.start()
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    clock = ManualClock(emulator)
    yield World(emulator, ledger, engine_on(emulator, ledger, clock), clock)
    ledger.close()
    emulator.stop()


# -- 2. a 404 is not evidence that a replica is gone ---------------------------------------


@pytest.mark.parametrize(
    ("answer", "error"), [("gateway", EndpointError), ("proxy", PermanentError)]
)
def test_a_404_that_is_not_cbrs_never_replicates_again(
    world: World, answer: str, error: type[Exception]
) -> None:
    """``web-done`` has a live replica in cn-south-1; the look-up of that replica gets a 404
    of the gateway (wrong endpoint) or of a proxy: nothing is posted."""
    world.emulator.set_gateway(
        {"unpublished": [f"show_backup@{SOUTH}"], "unpublished_answer": answer}
    )
    request = manual.ManualRequest(SOURCE, SOUTH, "web-dr")
    with pytest.raises(error) as raised:
        manual.replicate_backup(world.engine, request, world.emulator.backup_id("web-done"))
    assert not isinstance(raised.value, NotFoundError)
    assert world.posts() == []


def test_a_replica_that_cbr_says_is_gone_may_be_replicated_again(world: World) -> None:
    world.emulator.delete_backup(world.emulator.backup_id("web-done-copy"))
    request = manual.ManualRequest(SOURCE, SOUTH, "web-dr")
    manual.replicate_backup(world.engine, request, world.emulator.backup_id("web-done"))
    assert len(world.posts()) == 1


# -- 4. 6130: the vault is being replicated, try again later -------------------------------


def test_a_vault_being_replicated_is_retried_later_not_refused_for_good(world: World) -> None:
    """Someone else (the console) replicates ``db-prod`` to cn-south-1; ours to APAC is
    answered 6130 meanwhile: retry later, and the ledger keeps no binding for it."""
    cloud = world.engine.cloud
    project = cloud.resolve_project(SOURCE)
    south = resolve_policy(world.engine, WEB_SOUTH).target.destination
    cloud.replicate_vault(SOURCE, project, world.emulator.vault_id(SOURCE, "db-prod"), south, False)
    request = manual.ManualRequest(SOURCE, APAC, "apac-dr")
    with pytest.raises(TransientError) as busy:
        manual.replicate_vault(world.engine, request, "db-prod")
    assert "try again later" in str(busy.value)
    assert world.ledger.list_bindings() == []
    world.clock.advance(3600)  # the console's replication is over
    result = manual.replicate_vault(world.engine, request, "db-prod")
    assert len(result.jobs) == 2
    (binding,) = world.ledger.list_bindings()
    assert (binding.destination_region, binding.state) == (APAC, "bound")
    with pytest.raises(RefusedError):  # our binding is the once-only authority
        manual.replicate_vault(world.engine, request, "db-prod")


# -- 9. the recheck after an ambiguous POST ------------------------------------------------


def test_an_ambiguous_post_is_rechecked_after_the_request_timeouts(world: World) -> None:
    """With a 1 s connect and 2 s read timeout, a POST answered 500 after it was applied is
    reconciled 8 s later (1 + 2 + the 5 s margin), not after a fixed 30 s."""
    engine = dataclasses.replace(
        world.engine, recheck=ambiguous_recheck(timedelta(seconds=1), timedelta(seconds=2))
    )
    assert engine.recheck == timedelta(seconds=8)
    world.emulator.set_faults({"operations": {"replicate_backup": {"error_after_rate": 1.0}}})
    sweep_policy(engine, WEB_SOUTH)
    world.emulator.set_faults({})
    left = world.ledger.jobs_in_states({JobState.SUBMITTING}, limit=100)
    assert left, "the POSTs' answers were lost"
    assert {job.next_attempt_at for job in left} == {engine.now() + timedelta(seconds=8)}
    posts = len(world.posts())
    world.clock.advance(9)
    submit.submit_due(engine, resolve_policy(engine, WEB_SOUTH).target)
    assert world.ledger.jobs_in_states({JobState.SUBMITTING}, limit=100) == []
    assert len(world.posts()) == posts, "they had landed: reconciled, not posted again"


# -- 5. a sweep throttled past its budget --------------------------------------------------


def test_a_sweep_throttled_past_its_budget_is_unavailable_and_loses_nothing(
    world: World,
) -> None:
    """The gateway's window lets the resolution and listing through, then refuses every
    POST: the run ends as unavailable (exit 75), every job kept; lifted, the next run
    replicates each exactly once."""
    # 20 s of throttling without a success, then give up (a POST may wait 40 s)
    gate_clock = SleepClock()
    cloud = cloud_on(world.emulator, gate_clock, throttle_budget=timedelta(seconds=20))
    engine = dataclasses.replace(world.engine, cloud=cloud)
    run_policies(engine, [WEB_SOUTH], dry_run=True)  # the look-ups now cached
    world.emulator.clear_requests()
    run_policies(engine, [WEB_SOUTH], dry_run=True)
    reads = len(world.emulator.requests())  # what a sweep reads before its first POST
    world.emulator.clear_requests()
    world.emulator.set_gateway({"throttle_limit": reads + 1, "throttle_window_seconds": 86400})
    run = run_policies(engine, [WEB_SOUTH])
    assert run.cloud_unreachable, "exit 75"
    assert run.sweeps[0].error_reason == "APIGW.0308"
    assert "throttle_budget" in str(run.sweeps[0].error)
    jobs = world.ledger.jobs_in_states(set(JobState), limit=100)
    assert jobs
    assert all(job.state != JobState.GIVEN_UP for job in jobs)
    world.emulator.set_gateway({})
    world.clock.advance(3600)
    gate_clock.sleep(3600)  # the adapter's clock too: its longest pause is over
    run_policies(engine, [WEB_SOUTH])
    assert world.emulator.duplicates() == []
    posted = [call["path"] for call in world.posts() if call["status"] == 200]
    assert len(posted) == len(set(posted)), "each backup posted once"
    assert world.ledger.jobs_in_states({JobState.SUBMITTING, JobState.QUEUED}, limit=100) == []
