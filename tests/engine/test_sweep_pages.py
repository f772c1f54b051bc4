"""A sweep reads only the ids of the backups whose jobs are settled (issue 7): through the real
adapter against the emulator, on both ledgers, a steady sweep builds no ``Backup`` for them,
yet counts each with the reason its job's state gives (and tells the live progress how many it
scanned); a sweep with a decision sink (which shows every backup) still builds and decides
every one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from daemon.adapters.ledger import SqlLedger
from daemon.core.model import Backup, BackupPage, Decision, JobState, Reason, Vault
from daemon.core.policy import Policy
from daemon.emulator import Emulator
from daemon.engine.sweep import sweep_policy
from tests.engine.harness import one_vault_scenario, policy, server_backup
from tests.engine.test_failover import clock_of
from tests.engine.test_submit_protocol import DEST, SOURCE, setup

WEB = Policy.model_validate(policy("web", ["web-prod"], DEST, "web-dr"))
REPLICATED = ("web-1", "web-2", "web-3")


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    backups = [server_backup(name) for name in REPLICATED]
    backups.append(server_backup("web-volume", resource_type="OS::Cinder::Volume"))
    with Emulator(one_vault_scenario(SOURCE, DEST, backups), clock="manual") as running:
        yield running


class CountingBuilds:
    """The real adapter; every page it lists records which of its backups were built."""

    def __init__(self, cloud: Any) -> None:
        self._cloud = cloud
        self.built: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cloud, name)

    def list_backup_pages(self, *args: Any) -> Iterator[BackupPage]:
        for page in self._cloud.list_backup_pages(*args):
            yield BackupPage(page.ids, list(range(len(page))), self._builder(page))

    def _builder(self, page: BackupPage) -> Any:
        def build(index: int) -> Backup:
            backup = page[index]
            self.built.append(backup.name)
            return backup

        return build


def test_a_steady_sweep_builds_no_backup_whose_job_is_settled(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    engine, _ = setup(emulator, ledger, max_in_flight=5)
    first, _ = sweep_policy(engine, WEB)
    assert first.submitted == len(REPLICATED)
    emulator.advance(3600)
    clock_of(engine).now += timedelta(hours=1)
    sweep_policy(engine, WEB)  # follows the replications to their success
    jobs = [ledger.get_job(emulator.backup_id(name), DEST) for name in REPLICATED]
    assert [job.state if job else None for job in jobs] == [JobState.SUCCEEDED] * 3
    counting = CountingBuilds(engine.cloud)
    engine = replace(engine, cloud=counting)

    scanned: list[tuple[str, int]] = []

    steady, _ = sweep_policy(
        engine, WEB, on_scanned=lambda policy, count: scanned.append((policy.name, count))
    )

    assert steady.error is None, steady.error
    assert counting.built == ["web-volume"]  # the one backup without a job: decided anew
    # the live progress is told the counts, and builds nothing either
    assert sum(count for _, count in scanned) == 4
    assert {name for name, _ in scanned} == {"web"}
    assert steady.backups_seen == 4
    assert dict(steady.reasons) == {
        Reason.ALREADY_REPLICATED: len(REPLICATED),
        Reason.NOT_SERVER_BACKUP: 1,
    }
    assert steady.submitted == 0


def test_a_sweep_with_a_decision_sink_still_decides_every_settled_backup(
    emulator: Emulator, ledger: SqlLedger
) -> None:
    engine, _ = setup(emulator, ledger, max_in_flight=5)
    sweep_policy(engine, WEB)
    emulator.advance(3600)
    clock_of(engine).now += timedelta(hours=1)
    sweep_policy(engine, WEB)
    seen: list[tuple[str, Decision]] = []

    def sink(_policy: Policy, _vault: Vault, backup: Backup, decision: Decision) -> None:
        seen.append((backup.name, decision))

    report, _ = sweep_policy(engine, WEB, dry_run=True, sink=sink)

    assert report.backups_seen == 4
    assert sorted((name, decision.reason) for name, decision in seen) == [
        ("web-1", Reason.ALREADY_REPLICATED),
        ("web-2", Reason.ALREADY_REPLICATED),
        ("web-3", Reason.ALREADY_REPLICATED),
        ("web-volume", Reason.NOT_SERVER_BACKUP),
    ]
    assert all(decision.backup_id for _, decision in seen)
