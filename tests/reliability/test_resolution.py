"""Resolving a policy: the source's and the destination's look-ups run at once, and a policy
that breaks several rules is refused for the reason a one-by-one resolution meets first.

The real adapter (official SDK, over HTTP) on an in-process emulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.adapters.ledger import open_ledger
from daemon.core.errors import RefusedError
from daemon.core.model import Reason
from daemon.core.policy import Policy
from daemon.emulator import Emulator
from daemon.engine.context import Engine
from daemon.engine.resolve import resolve_policy
from tests.reliability.reliability_support import ManualClock, engine_on, meet_at_the_emulator

SOURCE = "cn-north-4"
DEST = "cn-south-1"
ELSEWHERE = "ap-southeast-1"  # not among the source's replication destinations
SCENARIO = {
    "regions": {
        SOURCE: {
            "replication_destinations": [DEST],
            "vaults": [{"name": "prod", "backups": []}],
        },
        DEST: {"vaults": [{"name": "dr", "protect_type": "replication"}]},
        ELSEWHERE: {"vaults": [{"name": "dr", "protect_type": "replication"}]},
    }
}


def make_policy(source_vault: str, region: str, vault: str) -> Policy:
    return Policy.model_validate(
        {
            "name": "dr",
            "source": {"region": SOURCE, "vaults": [source_vault]},
            "destination": {"region": region, "vault": vault},
            "schedule": {"interval": "1h"},
        }
    )


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(SCENARIO, clock="manual") as running:
        yield running


@pytest.fixture
def engine(emulator: Emulator, tmp_path: Path) -> Iterator[Engine]:
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield engine_on(emulator, ledger, ManualClock(emulator))
    ledger.close()


def test_the_source_and_destination_lookups_overlap(emulator: Emulator, engine: Engine) -> None:
    """Both project look-ups (the first call of each chain) must be at the emulator together:
    each waits there for the other. One after the other, the first waits alone and the
    barrier breaks."""
    met = meet_at_the_emulator(emulator, "list_projects", parties=2)

    resolved = resolve_policy(engine, make_policy("prod", DEST, "dr"))

    assert met == [True, True]
    assert resolved.target.source_project_id == emulator.project_id(SOURCE)
    assert resolved.target.destination.project_id == emulator.project_id(DEST)
    assert resolved.target.destination.vault_id == emulator.vault_id(DEST, "dr")
    assert [vault.name for vault in resolved.source_vaults] == ["prod"]


@pytest.mark.parametrize(
    "case",
    [
        # the capabilities come before both vaults
        ("missing", ELSEWHERE, "missing-dr", Reason.REGION_NOT_SUPPORTED, ELSEWHERE),
        # the source's vaults come before the destination's
        ("missing", DEST, "missing-dr", Reason.VAULT_NOT_FOUND, "'missing'"),
        ("prod", DEST, "missing-dr", Reason.VAULT_NOT_FOUND, "'missing-dr'"),
    ],
)
def test_a_policy_is_refused_for_the_first_reason_in_resolution_order(
    engine: Engine, case: tuple[str, str, str, Reason, str]
) -> None:
    source_vault, region, vault, reason, named = case
    with pytest.raises(RefusedError) as refused:
        resolve_policy(engine, make_policy(source_vault, region, vault))
    assert refused.value.reason == reason
    assert named in str(refused.value)


def test_a_destination_that_is_no_replication_vault_is_refused(tmp_path: Path) -> None:
    scenario: dict[str, Any] = {
        "regions": {
            SOURCE: {"replication_destinations": [DEST], "vaults": [{"name": "prod"}]},
            DEST: {"vaults": [{"name": "plain"}]},
        }
    }
    with Emulator(scenario, clock="manual") as other:
        ledger = open_ledger(f"sqlite:///{tmp_path / 'other.db'}")
        try:
            with pytest.raises(RefusedError) as refused:
                resolve_policy(
                    engine_on(other, ledger, ManualClock(other)), make_policy("prod", DEST, "plain")
                )
        finally:
            ledger.close()
    assert refused.value.reason == Reason.DESTINATION_NOT_REPLICATION_VAULT
    assert "plain" in str(refused.value)
