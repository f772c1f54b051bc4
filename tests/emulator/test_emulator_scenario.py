"""Scenario loading, id generation and the large-scenario generator."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from daemon.emulator import Emulator, generate_scenario
from daemon.emulator.scenario import ScenarioError, build_state, load_scenario
from daemon.emulator.world import has_system_disk, is_eligible_source
from tests.benchmarks import scenario as scenario_benchmark
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


def test_a_large_generated_world_keeps_its_explicit_ids_and_its_counts() -> None:
    # How fast this is for 200,000 backups: python -m tests.benchmarks.scenario.
    scenario = generate_scenario(20, 1000, eligible_fraction=0.5)
    given = [b["id"] for vault in _vaults(scenario, "cn-north-4") for b in vault["backups"]]
    state = build_state(scenario)
    assert len(state["backups"]) == 20_000
    assert set(given) == set(state["backups"])  # the generator's ids, none derived or lost
    assert sum(is_eligible_source(b) for b in state["backups"].values()) == 10_000
    vaults = Counter(b["vault_id"] for b in state["backups"].values())
    assert sorted(vaults.values()) == [1000] * 20


def _vaults(scenario: dict[str, object], region: str) -> list[dict[str, Any]]:
    regions: Any = scenario["regions"]
    vaults: list[dict[str, Any]] = regions[region]["vaults"]
    return vaults


def test_the_scenario_benchmark_reports_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert scenario_benchmark.main(["--vaults", "2", "--backups-per-vault", "10"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["backups"] == 20
    assert {"generate_s", "build_state_s", "wall_s", "cpu_s"} <= set(figures)
