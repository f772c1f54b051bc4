"""Command-line input that would make a request mean something else, and a run that finds
its policy being swept by another process."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from daemon.adapters.ledger import open_ledger
from tests.engine.harness import Deployment, policy

WEB = policy("web", ["web-prod"], "cn-south-1", "web-dr")
SQLITE_ONLY = pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
@pytest.mark.parametrize("backup_id", ["", ".", "..", "../vaults", "a/b", "b-1?x=1", "b 1", "b\n1"])
@pytest.mark.parametrize(
    "command",
    [
        ["replicate-backup", "{id}", "--to-region", "cn-south-1", "--to-vault", "web-dr"],
        ["retry", "{id}", "--to-region", "cn-south-1"],
        ["history", "--backup", "{id}"],
    ],
)
def test_a_backup_id_that_is_no_id_is_a_usage_error_before_any_call(
    deploy: Callable[..., Deployment], command: list[str], backup_id: str
) -> None:
    deployment = deploy([WEB])
    done = deployment.cli(*[backup_id if part == "{id}" else part for part in command])
    assert done.returncode == 2, done.stderr
    assert "is not a backup id" in done.stderr
    assert deployment.emulator.requests() == []


@SQLITE_ONLY
def test_a_policy_held_by_another_process_is_skipped_with_exit_0(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB])
    assert deployment.ledger_url is not None
    ledger = open_ledger(deployment.ledger_url)
    now = datetime.now(UTC)
    try:
        assert ledger.acquire_lease(
            "sweep:web", owner="other-host:4242:1", now=now, until=now + timedelta(hours=1)
        )
    finally:
        ledger.close()
    done = deployment.cli("--run-once")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "policy web: skipped: held by other-host:4242:1" in done.stdout
    assert deployment.replicate_calls() == []
    code, document = deployment.cli_json("--run-once")
    assert code == 0
    assert document["policies"][0]["error_reason"] == "leased"
