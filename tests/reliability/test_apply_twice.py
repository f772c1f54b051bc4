"""T3 (docs/design.md §13): every mutating path, run twice from the same state, gives the
same state and makes at most one mutating call to the cloud.

The paths: a policy sweep (the engine objects, and the real CLI's ``--run-once``), the vault
binding (a policy's, and ``replicate-vault``'s), reconcile (a job left ``submitting``
whether its POST landed or not), ``replicate-backup`` and ``retry``, and the config load a
reload starts with. The server's calls are counted in the emulator's request log; the state
is every row of the ledger (the ``sweeps`` table, a log of the runs, aside). The full SIGHUP
reload of a running daemon (the old config stays on error) is the service tests' business.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.adapters.ledger import SqlLedger, open_ledger
from daemon.config.load import load_settings
from daemon.core.errors import RefusedError
from daemon.core.model import JobState, Reason
from daemon.core.policy import Policy
from daemon.emulator import Emulator
from daemon.engine import manual, submit
from daemon.engine.context import Engine
from daemon.engine.resolve import resolve_policy
from daemon.engine.sweep import sweep_policy
from tests.engine.harness import Deployment, deploy, policy, rules_scenario
from tests.reliability.reliability_support import ManualClock, engine_on, ledger_snapshot

__all__ = ["deploy"]  # the CLI harness's fixture, used below

SOURCE = "cn-north-4"
SOUTH = "cn-south-1"
APAC = "ap-southeast-1"


@dataclass
class Daemon:
    emulator: Emulator
    ledger: SqlLedger
    engine: Engine
    clock: ManualClock

    def state(self) -> dict[str, Any]:
        return ledger_snapshot(self.ledger)

    def posts(self) -> list[dict[str, Any]]:
        return [call for call in self.emulator.requests() if call["method"] != "GET"]

    def calls(self) -> int:
        return len(self.emulator.requests())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    emulator = Emulator(rules_scenario(), clock="manual")
    emulator.start()
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    clock = ManualClock(emulator)
    yield Daemon(emulator, ledger, engine_on(emulator, ledger, clock), clock)
    ledger.close()
    emulator.stop()


def make_policy(name: str, vaults: list[str], region: str, vault: str) -> Policy:
    return Policy.model_validate(policy(name, vaults, region, vault))


WEB_SOUTH = make_policy("web-south", ["web-prod"], SOUTH, "web-dr")
# Tables that log each process and run (which process ran, when, under which lease), not
# replication state: a second process adds its own rows there by design.
RUN_LOGS = ("sweeps", "leases", "instances")


def posts_per_pair(calls: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter(
        (call["path"].split("/")[-2], call["body"]["replicate"]["destination_region"])
        for call in calls
        if call["operation"] == "replicate_backup"
    )


# -- the sweep -----------------------------------------------------------------------------


def test_a_sweep_run_twice_changes_nothing_the_second_time(daemon: Daemon) -> None:
    first, _ = sweep_policy(daemon.engine, WEB_SOUTH)
    assert first.error is None, first.error
    assert first.submitted == first.enqueued > 0
    state, posts = daemon.state(), daemon.posts()
    second, _ = sweep_policy(daemon.engine, WEB_SOUTH)
    assert second.error is None
    assert second.submitted == second.enqueued == second.adopted == 0
    assert daemon.state() == state
    assert daemon.posts() == posts, "the second sweep made no mutating call"
    assert max(posts_per_pair(posts).values()) == 1
    assert second.backups_seen == first.backups_seen
    assert "eligible" not in second.reasons
    assert "retry_after_failure" not in second.reasons


def test_a_dry_run_twice_writes_nothing_and_calls_no_mutation(daemon: Daemon) -> None:
    state = daemon.state()
    decisions: list[list[tuple[str, str]]] = [[], []]
    for seen in decisions:
        sweep_policy(
            daemon.engine,
            WEB_SOUTH,
            dry_run=True,
            sink=lambda p, v, backup, decision, seen=seen: seen.append(
                (backup.name, decision.reason)
            ),
        )
        seen.sort()
    assert decisions[0] == decisions[1]
    assert daemon.state() == state
    assert daemon.posts() == []


def test_a_policys_vault_binding_is_written_once(daemon: Daemon) -> None:
    sweep_policy(daemon.engine, WEB_SOUTH)
    bindings = daemon.ledger.list_bindings()
    assert [(b.destination_region, b.origin) for b in bindings] == [(SOUTH, "policy:web-south")]
    daemon.clock.advance(3600)  # even much later
    sweep_policy(daemon.engine, WEB_SOUTH)
    assert daemon.ledger.list_bindings() == bindings


def test_run_once_twice_through_the_cli(deploy: Callable[..., Deployment]) -> None:
    """The real ``cbr-replicator --run-once`` twice on one ledger: one POST per eligible
    backup in all, and the ledger as the first run left it."""
    deployment = deploy([policy("web-south", ["web-prod"], SOUTH, "web-dr")])
    first = deployment.cli("--run-once")
    assert first.returncode == 0, first.stderr
    assert deployment.ledger_url is not None
    ledger = open_ledger(deployment.ledger_url)
    try:
        state = ledger_snapshot(ledger, skip=RUN_LOGS)
        posts = deployment.mutating_calls()
        second = deployment.cli("--run-once")
        assert second.returncode == 0, second.stderr
        assert ledger_snapshot(ledger, skip=RUN_LOGS) == state
    finally:
        ledger.close()
    assert deployment.mutating_calls() == posts
    assert max(posts_per_pair(posts).values()) == 1


# -- vault replication ---------------------------------------------------------------------

REQUEST = manual.ManualRequest(
    source_region=SOURCE, destination_region=APAC, destination_vault="apac-dr"
)


def test_replicate_vault_twice_is_refused_before_any_call(daemon: Daemon) -> None:
    result = manual.replicate_vault(daemon.engine, REQUEST, "db-prod")
    assert len(result.jobs) == 2
    assert len(daemon.emulator.requests("replicate_vault")) == 1
    state, calls = daemon.state(), daemon.calls()
    with pytest.raises(RefusedError) as refused:
        manual.replicate_vault(daemon.engine, REQUEST, "db-prod")
    assert refused.value.reason == Reason.VAULT_ALREADY_REPLICATED
    assert daemon.calls() == calls, "refused from the ledger alone"
    assert daemon.state() == state


@pytest.mark.parametrize("fault", ["error_after_rate", "reset_after_rate", "error_before_rate"])
def test_replicate_vault_after_an_uncertain_answer_is_not_sent_again(
    daemon: Daemon, fault: str
) -> None:
    """The first POST's answer was lost (it may or may not have been applied): the binding
    stays an intent, and a second request is refused without another POST."""
    daemon.emulator.set_faults({"operations": {"replicate_vault": {fault: 1.0}}})
    with pytest.raises(Exception) as uncertain:  # noqa: PT011 - its class is checked below
        manual.replicate_vault(daemon.engine, REQUEST, "db-prod")
    assert uncertain.type.__name__ in ("AmbiguousError", "TransientError")
    daemon.emulator.set_faults({})
    (binding,) = daemon.ledger.list_bindings()
    assert binding.state == "intent"
    state, calls = daemon.state(), daemon.calls()
    with pytest.raises(RefusedError):
        manual.replicate_vault(daemon.engine, REQUEST, "db-prod")
    assert daemon.calls() == calls
    assert daemon.state() == state
    assert len(daemon.emulator.requests("replicate_vault")) == 1


# -- reconcile -----------------------------------------------------------------------------


def left_submitting(daemon: Daemon, fault: str) -> int:
    """Sweep with every replicate answer lost to ``fault``: the jobs it posted stay
    ``submitting``. Returns how many."""
    daemon.emulator.set_faults({"operations": {"replicate_backup": {fault: 1.0}}})
    sweep_policy(daemon.engine, WEB_SOUTH)
    daemon.emulator.set_faults({})
    daemon.clock.advance(daemon.engine.recheck.total_seconds() + 1)  # due again
    return len(submitting(daemon))


def submitting(daemon: Daemon) -> list[Any]:
    return daemon.ledger.jobs_in_states({JobState.SUBMITTING}, limit=1000)


@pytest.mark.parametrize("fault", ["error_after_rate", "reset_after_rate"])
def test_reconcile_twice_of_a_post_that_landed(daemon: Daemon, fault: str) -> None:
    assert left_submitting(daemon, fault) > 0
    posts = daemon.posts()
    left = submitting(daemon)
    first = [submit.reconcile(daemon.engine, job) for job in left]
    assert all(job is not None and job.state == JobState.REPLICATING for job in first)
    state = daemon.state()
    history = len(daemon.ledger.history(limit=1000))
    second = [submit.reconcile(daemon.engine, job) for job in left]  # the same input
    assert [job.state for job in second if job] == [job.state for job in first if job]
    # The second reconcile records the same facts again as one more attempt row ("reconciled"),
    # and nothing else.
    again = daemon.state()
    assert {k: v for k, v in again.items() if k != "attempts"} == {
        k: v for k, v in state.items() if k != "attempts"
    }
    assert len(daemon.ledger.history(limit=1000)) <= history + len(left)
    assert daemon.posts() == posts, "a reconcile never posts"


@pytest.mark.parametrize(
    "fault", ["error_after_rate", "reset_after_rate", "error_before_rate", "throttle_rate"]
)
def test_submitting_twice_posts_at_most_once_more(daemon: Daemon, fault: str) -> None:
    """Jobs left ``submitting``: the next pass reconciles (and posts only those whose first
    POST did not land); a pass right after it changes nothing and posts nothing."""
    count = left_submitting(daemon, fault)
    assert count > 0
    target = resolve_policy(daemon.engine, WEB_SOUTH).target
    before = daemon.posts()
    submit.submit_due(daemon.engine, target)
    landed = fault in ("error_after_rate", "reset_after_rate")
    assert len(daemon.posts()) == len(before) + (0 if landed else count)
    state, posts = daemon.state(), daemon.posts()
    submit.submit_due(daemon.engine, target)
    assert daemon.state() == state
    assert daemon.posts() == posts
    assert daemon.emulator.duplicates() == []
    assert submitting(daemon) == []


# -- manual commands -----------------------------------------------------------------------


def test_replicate_backup_twice_posts_once(daemon: Daemon) -> None:
    request = manual.ManualRequest(SOURCE, SOUTH, "web-dr")
    backup = daemon.emulator.backup_id("db-1")
    manual.replicate_backup(daemon.engine, request, backup)
    state, posts = daemon.state(), daemon.posts()
    with pytest.raises(RefusedError) as refused:
        manual.replicate_backup(daemon.engine, request, backup)
    assert refused.value.reason == Reason.REPLICATION_IN_PROGRESS
    assert daemon.posts() == posts
    assert daemon.state() == state


def test_retry_twice_requeues_once(daemon: Daemon) -> None:
    sweep_policy(daemon.engine, WEB_SOUTH, submit=False)
    backup = daemon.emulator.backup_id("web-ok-1")
    job = daemon.ledger.get_job(backup, SOUTH)
    assert job is not None
    daemon.ledger.save_jobs([job.evolve(state=JobState.GIVEN_UP, attempts=6)], daemon.clock())
    manual.retry_job(daemon.engine, backup, SOUTH)
    state = daemon.state()
    with pytest.raises(LookupError):
        manual.retry_job(daemon.engine, backup, SOUTH)  # queued now: nothing to retry
    assert daemon.state() == state
    assert daemon.posts() == []


# -- the config a reload reads -------------------------------------------------------------


def test_loading_the_same_config_twice_gives_equal_settings(tmp_path: Path) -> None:
    directory = tmp_path / "etc"
    (directory / "policies.d").mkdir(parents=True, mode=0o700)
    directory.chmod(0o700)
    secret = directory / "sk"
    secret.write_text("secret-value-for-t3\n")
    secret.chmod(0o600)
    document = {
        "ledger": {"url": "sqlite:///state/ledger.db"},
        "cloud": {
            "provider": "emulator",
            "credentials": {"access_key": "${T3_ACCESS_KEY}", "secret_key_file": "sk"},
        },
        "defaults": {"schedule": {"cron": "0 * * * *"}, "retry": {"max_attempts": 3}},
        "policies_dir": "policies.d",
        "policies": [policy("web-south", ["web-prod"], SOUTH, "web-dr")],
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    extra = directory / "policies.d" / "more.yaml"
    extra.write_text(yaml.safe_dump([policy("db-apac", ["db-prod"], APAC, "apac-dr")]))
    extra.chmod(0o600)
    environ = {**os.environ, "T3_ACCESS_KEY": "access-key-for-t3"}
    first = load_settings(path, environ)
    second = load_settings(path, environ)
    assert first.settings == second.settings
    assert first == second
    assert [p.name for p in first.settings.policies] == ["web-south", "db-apac"]
    assert "secret-value-for-t3" in first.secrets
