"""Scenario loading: turn a scenario YAML (or dict) into the emulator's normalized state.

The scenario is written for humans (names, nesting, optional ids); the state is flat and keyed
by id so that the world can answer every API call by lookup. Ids that the scenario omits are
derived with uuid5 from names, so a scenario always yields the same ids.
"""

from __future__ import annotations

import copy
import json
import random
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

# A fixed namespace keeps generated ids stable across runs and machines.
NAMESPACE = uuid.UUID("6f1c1b8e-3f0a-5d7e-9a52-2f4c8e1d0b7a")
ECS_PROVIDER_ID = "0daac4c5-6707-4851-97ba-169e36266b66"
EVS_PROVIDER_ID = "d1603440-187d-4516-af25-121250c7cc97"
SERVER_TYPE = "OS::Nova::Server"
VOLUME_TYPE = "OS::Cinder::Volume"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
DEFAULT_CREDENTIALS = {
    "access_key": "demo-access-key",
    "secret_key": "demo-secret-key",
    "domain_id": "demo-domain",
}
DEFAULT_SETTINGS = {"wait_seconds": 10.0, "replicate_seconds": 60.0, "fail_rate": 0.0}

State = dict[str, Any]
_CANONICAL_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")


class ScenarioError(ValueError):
    """The scenario is inconsistent (unknown vault, duplicate name, ...)."""


def make_id(kind: str, *parts: str, hex_only: bool = False) -> str:
    """Derive a stable id from names; projects use 32 hex digits like Huawei's."""
    value = uuid.uuid5(NAMESPACE, ":".join((kind, *parts)))
    return value.hex if hex_only else str(value)


def format_time(epoch: float) -> str:
    """Format emulator time like the CBR docs do (UTC, no zone suffix)."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime(TIME_FORMAT)


def normalize_time(value: Any, default: str) -> str:
    """Accept ISO strings or datetimes from YAML and rewrite them in one sortable format."""
    if value is None:
        return default
    if isinstance(value, str) and _CANONICAL_TIME.match(value):
        return value  # already canonical: the fast path for large generated scenarios
    if isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def load_scenario(source: dict[str, Any] | str | Path) -> dict[str, Any]:
    """Read a scenario from a dict, a YAML file path, or YAML text. A ``.json`` file is read
    as JSON (a subset of YAML), which loads large generated scenarios in seconds."""
    if isinstance(source, dict):
        return copy.deepcopy(source)
    path = Path(source)
    text = path.read_text(encoding="utf-8") if path.exists() else str(source)
    data = json.loads(text) if path.suffix == ".json" and path.exists() else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ScenarioError("a scenario must be a YAML mapping")
    return data


def build_state(scenario: dict[str, Any]) -> State:
    """Normalize a scenario into the flat, id-keyed state the world serves."""
    builder = _StateBuilder(scenario)
    return builder.build()


class _StateBuilder:
    """Walks the scenario once, resolving names to ids."""

    def __init__(self, scenario: dict[str, Any]) -> None:
        self.scenario = scenario
        self.credentials = {**DEFAULT_CREDENTIALS, **(scenario.get("credentials") or {})}
        self.state: State = {
            "credentials": self.credentials,
            "settings": {**DEFAULT_SETTINGS, **(scenario.get("settings") or {})},
            "regions": {},
            "projects": {},
            "vaults": {},
            "backups": {},
            "vault_bindings": [],
            "replica_log": [],
            "pending": {},
            "clock_now": None,
        }
        self.vault_by_name: dict[tuple[str, str], str] = {}
        self.backup_by_name: dict[str, str] = {}
        self.deferred_records: list[tuple[str, dict[str, Any]]] = []

    def build(self) -> State:
        regions = self.scenario.get("regions") or {}
        if isinstance(regions, list):
            regions = {item["name"]: item for item in regions}
        for region, spec in regions.items():
            self._add_region(str(region), spec or {})
        for region, spec in regions.items():
            for vault in (spec or {}).get("vaults") or []:
                self._add_vault(str(region), vault)
        for backup in self.scenario.get("backups") or []:
            self._add_backup(self._vault_for(backup), backup)
        for backup_id, record in self.deferred_records:
            self._add_record(backup_id, record)
        return self.state

    def _add_region(self, region: str, spec: dict[str, Any]) -> None:
        destinations = [str(item) for item in spec.get("replication_destinations") or []]
        self.state["regions"][region] = {"replication_destinations": destinations}
        if spec.get("capability_name"):
            # The name its capability entry carries, when not the region id (Huawei's example).
            self.state["regions"][region]["capability_name"] = str(spec["capability_name"])
        projects = spec.get("projects") or [{"name": region}]
        names = {str(item["name"]) for item in projects}
        if region not in names:
            projects = [{"name": region}, *projects]
        default_id = ""
        for item in projects:
            project = self._make_project(region, item)
            if project["name"] == region:
                default_id = project["id"]
        for project in self.state["projects"].values():
            if project["region"] == region and project["name"] != region:
                project["parent_id"] = default_id

    def _make_project(self, region: str, item: dict[str, Any]) -> dict[str, Any]:
        name = str(item["name"])
        if name != region and not name.startswith(f"{region}_"):
            raise ScenarioError(f"project {name!r} must be named {region!r} or {region}_<suffix>")
        project_id = str(item.get("id") or make_id("project", name, hex_only=True))
        domain_id = self.credentials["domain_id"]
        project = {
            "id": project_id,
            "name": name,
            "region": region,
            "domain_id": domain_id,
            "parent_id": domain_id,
            "enabled": True,
            "is_domain": False,
            "description": str(item.get("description", "")),
        }
        self.state["projects"][project_id] = project
        return project

    def _project_id(self, region: str, name: str | None) -> str:
        wanted = name or region
        for project in self.state["projects"].values():
            if project["region"] == region and wanted in (project["name"], project["id"]):
                return str(project["id"])
        raise ScenarioError(f"unknown project {wanted!r} in region {region!r}")

    def _add_vault(self, region: str, item: dict[str, Any]) -> None:
        name = str(item["name"])
        if (region, name) in self.vault_by_name:
            raise ScenarioError(f"duplicate vault {name!r} in {region!r}")
        project_id = self._project_id(region, item.get("project"))
        vault_id = str(item.get("id") or make_id("vault", region, name))
        self.state["vaults"][vault_id] = make_vault(vault_id, name, project_id, item)
        self.vault_by_name[(region, name)] = vault_id
        for backup in item.get("backups") or []:
            self._add_backup(vault_id, backup)

    def _vault_for(self, backup: dict[str, Any]) -> str:
        wanted = str(backup.get("vault", ""))
        matches = [vid for (_, name), vid in self.vault_by_name.items() if wanted in (name, vid)]
        if len(matches) != 1:
            raise ScenarioError(f"backup {backup.get('name')!r}: vault {wanted!r} not unique")
        return matches[0]

    def _add_backup(self, vault_id: str, item: dict[str, Any]) -> None:
        vault = self.state["vaults"][vault_id]
        name = str(item["name"])
        backup_id = str(item.get("id") or make_id("backup", vault_id, name))
        backup = make_backup(backup_id, name, vault, item)
        self.state["backups"][backup_id] = backup
        self.backup_by_name.setdefault(name, backup_id)
        for record in item.get("replication_records") or []:
            self.deferred_records.append((backup_id, record))

    def _add_record(self, backup_id: str, item: dict[str, Any]) -> None:
        source = self.state["backups"][backup_id]
        region = str(item["destination_region"])
        project_id = self._project_id(region, item.get("destination_project"))
        vault_ref = str(item.get("destination_vault_id") or item.get("destination_vault") or "")
        vault_id = self.vault_by_name.get((region, vault_ref), vault_ref)
        replica_ref = item.get("destination_backup_id") or item.get("destination_backup")
        replica_id = self.backup_by_name.get(str(replica_ref), replica_ref) if replica_ref else None
        record = make_record(source, self.state, region, project_id, vault_id)
        record["id"] = str(item.get("id") or make_id("record", backup_id, region))
        record["status"] = str(item.get("status", "success"))
        record["created_at"] = normalize_time(item.get("created_at"), source["created_at"])
        record["destination_backup_id"] = replica_id
        record["extra_info"]["fail_code"] = item.get("fail_code", "")
        record["extra_info"]["fail_reason"] = item.get("fail_reason", "")
        record["extra_info"]["progress"] = 100 if record["status"] == "success" else 0
        source["replication_records"].append(record)


def make_vault(vault_id: str, name: str, project_id: str, item: dict[str, Any]) -> dict[str, Any]:
    """Build a Vault JSON object (CBR-API §6.3) from a scenario entry."""
    protect_type = str(item.get("protect_type", "backup"))
    object_type = str(item.get("object_type", "server"))
    if protect_type == "replication":
        spec_code = "vault.replication.server.normal"
    elif object_type == "disk":
        spec_code = "vault.backup.volume.normal"
    else:
        spec_code = "vault.backup.server.normal"
    size = int(item.get("size_gb", 10240))
    return {
        "id": vault_id,
        "name": name,
        "project_id": project_id,
        "provider_id": EVS_PROVIDER_ID if object_type == "disk" else ECS_PROVIDER_ID,
        "description": str(item.get("description", "")),
        "enterprise_project_id": "0",
        "auto_bind": False,
        "auto_expand": False,
        "tags": [],
        "created_at": normalize_time(item.get("created_at"), "2026-01-01T00:00:00.000000"),
        "billing": {
            "allocated": 0,
            "size": size,
            "used": 0,
            "charging_mode": "post_paid",
            "cloud_type": "public",
            "consistent_level": "crash_consistent",
            "object_type": object_type,
            "protect_type": protect_type,
            "spec_code": spec_code,
            "status": "available",
            "storage_unit": "",
            "frozen_scene": None,
            "is_multi_az": False,
        },
        "resources": [],
    }


def make_backup(
    backup_id: str, name: str, vault: dict[str, Any], item: dict[str, Any]
) -> dict[str, Any]:
    """Build a BackupResp JSON object (CBR-API §2.3) from a scenario entry."""
    resource_type = str(item.get("resource_type", SERVER_TYPE))
    created_at = normalize_time(item.get("created_at"), "2026-11-01T00:00:00.000000")
    resource_name = str(item.get("resource_name", name.rsplit("-", 3)[0] or name))
    resource_id = str(item.get("resource_id") or make_id("resource", vault["id"], resource_name))
    backup = {
        "id": backup_id,
        "name": name,
        "description": str(item.get("description", "")),
        "checkpoint_id": str(item.get("checkpoint_id") or make_id("checkpoint", backup_id)),
        "vault_id": vault["id"],
        "project_id": vault["project_id"],
        "enterprise_project_id": "0",
        "provider_id": ECS_PROVIDER_ID if resource_type == SERVER_TYPE else EVS_PROVIDER_ID,
        "image_type": str(item.get("image_type", "backup")),
        "resource_type": resource_type,
        "resource_id": resource_id,
        "resource_name": resource_name,
        "resource_az": str(item.get("resource_az", "az1")),
        "resource_size": int(item.get("resource_size", 40)),
        "status": str(item.get("status", "available")),
        "created_at": created_at,
        "updated_at": created_at,
        "protected_at": created_at,
        "expired_at": None,
        "parent_id": None,
        "incremental": False,
        "version": 3,
        "extend_info": dict(item.get("extend_info") or {}),
        "children": [],
        "replication_records": [],
    }
    backup["children"] = [_make_child(backup, child) for child in item.get("children") or []]
    return backup


def _make_child(parent: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    name = str(item.get("name", f"{parent['name']}-disk"))
    child_id = str(item.get("id") or make_id("child", parent["id"], name))
    return {
        "id": child_id,
        "name": name,
        "parent_id": parent["id"],
        "vault_id": parent["vault_id"],
        "project_id": parent["project_id"],
        "provider_id": EVS_PROVIDER_ID,
        "resource_type": VOLUME_TYPE,
        "resource_id": str(item.get("resource_id") or make_id("volume", child_id)),
        "resource_size": int(item.get("resource_size", parent["resource_size"])),
        "image_type": parent["image_type"],
        "status": parent["status"],
        "created_at": parent["created_at"],
        "extend_info": dict(item.get("extend_info") or {}),
    }


def make_record(
    source: dict[str, Any], state: State, region: str, project_id: str, vault_id: str
) -> dict[str, Any]:
    """Build a ReplicationRecordGet (CBR-API §4.4) for a source backup, status left to caller."""
    source_region = state["projects"][source["project_id"]]["region"]
    return {
        "id": "",
        "status": "waiting_replicate",
        "source_region": source_region,
        "source_project_id": source["project_id"],
        "source_backup_id": source["id"],
        "source_checkpoint_id": source["checkpoint_id"],
        "destination_region": region,
        "destination_project_id": project_id,
        "destination_vault_id": vault_id,
        "destination_backup_id": None,
        "destination_checkpoint_id": None,
        "vault_id": source["vault_id"],
        "created_at": "",
        "extra_info": {
            "progress": 0,
            "fail_code": "",
            "fail_reason": "",
            "auto_trigger": False,
            "destination_vault_id": vault_id,
        },
    }


def generate_scenario(  # noqa: PLR0917 (positional signature is the public contract)
    vaults: int,
    backups_per_vault: int,
    eligible_fraction: float,
    replicated_fraction: float = 0.0,
    seed: int = 0,
    source_region: str = "cn-north-4",
    destination_region: str = "cn-south-1",
) -> dict[str, Any]:
    """Build a large scenario for tests and benchmarks.

    Exactly round(total * eligible_fraction) backups are eligible (available ECS backups with
    system-disk data); round(eligible * replicated_fraction) of those already have a replica in
    the destination's replication vault `dr-vault`. Explicit ids keep loading fast.
    """
    total = vaults * backups_per_vault
    rng = random.Random(seed)
    eligible_count = round(total * eligible_fraction)
    eligible = set(rng.sample(range(total), eligible_count))
    replicated = set(rng.sample(sorted(eligible), round(eligible_count * replicated_fraction)))
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    source_vaults: list[dict[str, Any]] = []
    replicas: list[dict[str, Any]] = []
    for vault_index in range(vaults):
        items: list[dict[str, Any]] = []
        for slot in range(backups_per_vault):
            index = vault_index * backups_per_vault + slot
            created = time.strftime("%Y-%m-%dT%H:%M:%S.000000", time.gmtime(start + index * 60))
            item = _generated_backup(index, created, index in eligible)
            if index in replicated:
                replicas.append(_generated_replica(item, destination_region))
            items.append(item)
        source_vaults.append({"name": f"vault-{vault_index:04d}", "backups": items})
    dr_vault = {"name": "dr-vault", "protect_type": "replication", "backups": replicas}
    return {
        "regions": {
            source_region: {
                "replication_destinations": [destination_region],
                "vaults": source_vaults,
            },
            destination_region: {"replication_destinations": [], "vaults": [dr_vault]},
        }
    }


# Ineligible kinds cycle so that every rule is represented in a generated world.
_INELIGIBLE_KINDS = ("volume", "no_system_disk", "creating", "error")


def _int_id(kind: int, index: int) -> str:
    """A uuid-shaped id from two integers; much cheaper than uuid5 for 200,000 backups."""
    digits = f"{kind:08x}{index:024x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _generated_backup(index: int, created: str, eligible: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": _int_id(1, index),
        "name": f"backup-{index:07d}",
        "resource_size": 40,
        "created_at": created,
        "resource_id": _int_id(2, index),
        "checkpoint_id": _int_id(3, index),
        "extend_info": {"contain_system_disk": True},
    }
    if eligible:
        return item
    kind = _INELIGIBLE_KINDS[index % len(_INELIGIBLE_KINDS)]
    if kind == "volume":
        item["resource_type"] = VOLUME_TYPE
        item["extend_info"] = {}
    elif kind == "no_system_disk":
        item["extend_info"] = {"contain_system_disk": False}
    else:
        item["status"] = kind
    return item


def _generated_replica(source: dict[str, Any], destination_region: str) -> dict[str, Any]:
    replica_id = source["id"].replace(_int_id(1, 0)[:8], _int_id(4, 0)[:8], 1)
    source["replication_records"] = [
        {
            "destination_region": destination_region,
            "destination_vault": "dr-vault",
            "destination_backup_id": replica_id,
            "status": "success",
        }
    ]
    return {
        "id": replica_id,
        "name": source["name"],
        "image_type": "replication",
        "resource_size": source["resource_size"],
        "created_at": source["created_at"],
        "resource_id": source["resource_id"],
        "checkpoint_id": source["checkpoint_id"].replace("00000003", "00000005", 1),
        "extend_info": dict(source["extend_info"]),
    }
