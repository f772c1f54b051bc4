"""Scenario loading, id generation and the large-scenario generator."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from daemon.emulator import Emulator, generate_scenario
from daemon.emulator.scenario import ScenarioError, build_state, load_scenario
from daemon.emulator.world import has_system_disk, is_eligible_source
from tests.emulator.emulator_support import DEMO


def test_demo_scenario_covers_every_rule() -> None:
    state = build_state(load_scenario(DEMO))
    backups = {b["name"]: b for b in state["backups"].values()}
    eligible = {name for name, b in backups.items() if is_eligible_source(b)}
    assert "web-prod-2026-11-04-child-only" in eligible
    assert not has_system_disk(backups["web-prod-2026-11-05-data-only"])
    assert {backups[n]["status"] for n in backups if n.endswith(("creating", "error"))} == {
        "creating",
        "error",
    }
    statuses = Counter(
        record["status"] for b in backups.values() for record in b["replication_records"]
    )
    assert statuses == {"success": 1, "fail": 1, "replicating": 1}
    names = {p["name"] for p in state["projects"].values()}
    assert {"cn-north-4", "cn-north-4_ops", "cn-south-1_ops", "af-south-1"} <= names


def test_ids_are_stable_across_loads() -> None:
    first = build_state(load_scenario(DEMO))
    second = build_state(load_scenario(DEMO))
    assert first["backups"].keys() == second["backups"].keys()
    assert first["projects"].keys() == second["projects"].keys()


def test_sub_project_names_must_carry_the_region_prefix() -> None:
    scenario = {"regions": {"cn-north-4": {"projects": [{"name": "ops"}]}}}
    with pytest.raises(ScenarioError, match="cn-north-4_<suffix>"):
        build_state(scenario)


def test_credentials_default_and_override() -> None:
    with Emulator({"regions": {"cn-north-4": {}}}, clock="manual") as emu:
        assert (emu.access_key, emu.secret_key, emu.domain_id) == (
            "demo-access-key",
            "demo-secret-key",
            "demo-domain",
        )
    custom = {"credentials": {"access_key": "ak"}, "regions": {"cn-north-4": {}}}
    assert Emulator(custom).access_key == "ak"


def test_generator_counts() -> None:
    scenario = generate_scenario(
        vaults=4, backups_per_vault=250, eligible_fraction=0.6, replicated_fraction=0.5, seed=7
    )
    state = build_state(scenario)
    sources = [b for b in state["backups"].values() if b["image_type"] == "backup"]
    replicas = [b for b in state["backups"].values() if b["image_type"] == "replication"]
    assert len(sources) == 1000
    assert sum(is_eligible_source(b) for b in sources) == 600
    assert len(replicas) == 300
    replicated = [b for b in sources if b["replication_records"]]
    assert len(replicated) == 300
    assert all(
        r["replication_records"][0]["destination_backup_id"] in state["backups"] for r in replicated
    )
    assert generate_scenario(4, 250, 0.6, 0.5, seed=7) == scenario


def test_generator_is_fast_for_200000_backups() -> None:
    started = time.monotonic()
    state = build_state(generate_scenario(200, 1000, eligible_fraction=0.5))
    assert len(state["backups"]) == 200_000
    assert time.monotonic() - started < 15
