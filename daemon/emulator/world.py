"""World state of the emulated cloud: the CBR/IAM operations and the replication clock.

One re-entrant lock guards everything; the server holds it while it handles a call *and*
serializes the answer, so that no answer ever sees a half-applied change. Replication records
progress lazily: every call first catches the world up with the clock (`tick`).
"""

from __future__ import annotations

import copy
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from daemon.emulator.scenario import (
    SERVER_TYPE,
    State,
    format_time,
    make_backup,
    make_record,
    normalize_time,
)

Query = dict[str, list[str]]
Payload = dict[str, Any]
LIVE_STATUSES = ("waiting_replicate", "replicating")
MAX_LIMIT = 1000
NAME_PATTERN = re.compile(r"^[\u4E00-\u9FA5\uf900-\ufa2da-zA-Z0-9_\-]{1,64}$")
REGION_PATTERN = re.compile(r"^[a-zA-Z0-9._\-]{1,255}$")

# Codes from the API facts (docs/design.md §16). Three refusals have no documented code; the
# emulator's choice is marked [INF] so the daemon must not depend on it beyond "400 = refused".
NOT_FOUND = "BackupService.6200"
REPLICA_AS_SOURCE = "BackupService.1002"
NOT_SERVER = "BackupService.1003"
REGION_UNSUPPORTED = "BackupService.1005"
ALREADY_REPLICATED = "BackupService.1009"
PROJECT_UNSUPPORTED = "BackupService.1011"
VAULT_NOT_FOUND = "BackupService.6105"
VAULT_TYPE_REFUSED = "BackupService.6128"
VAULT_BEING_REPLICATED = "BackupService.6130"  # "the vault is being replicated, try later"
# No code is documented for "this vault was replicated to that region once already": the
# generic parameter check failure is the emulator's choice [INF].
VAULT_ALREADY_REPLICATED = "BackupService.9900"
DEST_NOT_REPLICATION = "BackupService.6119"
DEST_NOT_FOUND = "BackupService.6120"
NO_SYSTEM_DISK = "BackupService.6122"  # [INF] "resource type does not support replication"
INVALID = "BackupService.9900"  # also used [INF] for a backup that is not available


# The HTTP status of some codes differs by edition (docs/design.md §16): Open Telekom Cloud
# answers 1005, 1006 and 9998 with 500 and 6105 with 404 where Huawei answers 400.
EDITION_STATUS: dict[str, dict[str, int]] = {
    "huawei": {},  # the statuses the operations raise
    "otc": {
        "BackupService.1005": 500,
        "BackupService.1006": 500,
        "BackupService.9998": 500,
        "BackupService.6105": 404,
    },
}


def edition_status(edition: str, code: str, status: int) -> int:
    return EDITION_STATUS.get(edition, {}).get(code, status)


class ApiError(Exception):
    """A refusal answered with the CBR error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Clock:
    """Emulator time in epoch seconds: real time (scaled) or stepped by hand."""

    def __init__(self, mode: str = "real", time_scale: float = 1.0, start: float | None = None):
        if mode not in ("real", "manual"):
            raise ValueError(f"clock must be 'real' or 'manual', not {mode!r}")
        self.mode = mode
        self.time_scale = time_scale
        self._base = time.time() if start is None else start
        self._monotonic_start = time.monotonic()
        self._offset = 0.0

    def now(self) -> float:
        if self.mode == "manual":
            return self._base + self._offset
        elapsed = (time.monotonic() - self._monotonic_start) * self.time_scale
        return self._base + elapsed + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds

    def catch_up(self, moment: float) -> None:
        """Never run behind a time already recorded in a loaded state file."""
        if moment > self.now():
            self._offset += moment - self.now()


class World:
    """All regions, projects, vaults and backups; the rules the real cloud enforces."""

    def __init__(
        self,
        state: State,
        *,
        clock: Clock,
        permissive: bool = False,
        seed: int = 0,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.state = state
        self.clock = clock
        self.permissive = permissive
        self.rng = random.Random(seed)
        self.on_change = on_change
        self._members: dict[str, list[str]] = {}
        self._sorted: dict[str, list[str]] = {}
        self._next_due = 0.0  # emulator time of the next record transition
        for backup in state["backups"].values():
            self._members.setdefault(backup["vault_id"], []).append(backup["id"])
        if state.get("clock_now"):
            clock.catch_up(float(state["clock_now"]))
        self._schedule_loaded_records()

    # ----- clock -------------------------------------------------------------------------

    def tick(self) -> None:
        """Move every pending replication forward to the current emulator time."""
        with self.lock:
            now = self.clock.now()
            if now < self._next_due:
                return  # nothing is due: keeps every call cheap with many jobs in flight
            changed = False
            next_due = math.inf
            for record_id, job in list(self.state["pending"].items()):
                changed |= self._progress(record_id, job, now)
                if record_id in self.state["pending"]:
                    next_due = min(
                        next_due, job["start_at"] if now < job["start_at"] else job["done_at"]
                    )
            self._next_due = next_due
            if changed:
                self.changed()

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.clock.advance(seconds)
            self.tick()

    def changed(self) -> None:
        self.state["clock_now"] = self.clock.now()
        if self.on_change is not None:
            self.on_change(self.state)

    def _schedule_loaded_records(self) -> None:
        # Scenario records still in flight progress from the moment the world starts.
        for backup in self.state["backups"].values():
            for record in backup["replication_records"]:
                if record["status"] in LIVE_STATUSES and record["id"] not in self.state["pending"]:
                    self.schedule(backup, record, name=None, description=None)

    def schedule(
        self, backup: Payload, record: Payload, name: str | None, description: str | None
    ) -> None:
        settings = self.state["settings"]
        start = self.clock.now() + float(settings["wait_seconds"])
        self._next_due = min(self._next_due, start)
        self.state["pending"][record["id"]] = {
            "backup_id": backup["id"],
            "start_at": start,
            "done_at": start + float(settings["replicate_seconds"]),
            "fail": self.rng.random() < float(settings["fail_rate"]),
            "name": name,
            "description": description,
        }

    def _progress(self, record_id: str, job: Payload, now: float) -> bool:
        backup = self.state["backups"].get(job["backup_id"])
        record = _find_record(backup, record_id) if backup else None
        if backup is None or record is None:
            del self.state["pending"][record_id]
            return True
        if now >= job["done_at"]:
            del self.state["pending"][record_id]
            self._finish(backup, record, job)
            return True
        if now >= job["start_at"] and record["status"] != "replicating":
            record["status"] = "replicating"
            return True
        return False

    def _finish(self, backup: Payload, record: Payload, job: Payload) -> None:
        if job["fail"]:
            record["status"] = "fail"
            record["extra_info"]["fail_code"] = "BackupService.1006"
            record["extra_info"]["fail_reason"] = "Failed to import the backup replica."
            return
        replica = self._make_replica(backup, record, job)
        self._insert_backup(replica)
        record["status"] = "success"
        record["destination_backup_id"] = replica["id"]
        record["destination_checkpoint_id"] = replica["checkpoint_id"]
        record["extra_info"]["progress"] = 100
        self.state["replica_log"].append(
            {
                "source_backup_id": backup["id"],
                "destination_region": record["destination_region"],
                "replica_id": replica["id"],
                "record_id": record["id"],
            }
        )

    def _make_replica(self, source: Payload, record: Payload, job: Payload) -> Payload:
        vault = self.state["vaults"][record["destination_vault_id"]]
        created = format_time(job["done_at"])
        item = {
            "name": job["name"] or source["name"],
            "description": job["description"] or source["description"],
            "resource_type": source["resource_type"],
            "resource_id": source["resource_id"],
            "resource_name": source["resource_name"],
            "resource_size": source["resource_size"],
            "image_type": "replication",
            "created_at": created,
            "extend_info": copy.deepcopy(source["extend_info"]),
            "children": [
                {"name": child["name"], "extend_info": copy.deepcopy(child["extend_info"])}
                for child in source["children"]
            ],
        }
        return make_backup(str(uuid.uuid4()), str(item["name"]), vault, item)

    # ----- indexes -----------------------------------------------------------------------

    def _insert_backup(self, backup: Payload) -> None:
        self.state["backups"][backup["id"]] = backup
        self._members.setdefault(backup["vault_id"], []).append(backup["id"])
        self._invalidate(backup)

    def _invalidate(self, backup: Payload) -> None:
        self._sorted.pop(backup["vault_id"], None)
        self._sorted.pop("project:" + backup["project_id"], None)

    def sorted_ids(self, project_id: str, vault_id: str | None) -> list[str]:
        """Backup ids newest first (created_at desc, then id desc), cached until a change."""
        key = vault_id if vault_id else "project:" + project_id
        cached = self._sorted.get(key)
        if cached is None:
            backups = self.state["backups"]
            if vault_id:
                ids = list(self._members.get(vault_id, []))
            else:
                ids = [b["id"] for b in backups.values() if b["project_id"] == project_id]
            ids.sort(key=lambda i: (backups[i]["created_at"], i), reverse=True)
            self._sorted[key] = cached = ids
        return cached

    # ----- lookups -----------------------------------------------------------------------

    def region_of(self, project_id: str) -> str:
        project = self.state["projects"].get(project_id)
        if project is None:
            raise ApiError(400, INVALID, f"The project {project_id} does not exist.")
        return str(project["region"])

    def vault_in(self, project_id: str, vault_id: str) -> Payload | None:
        vault: Payload | None = self.state["vaults"].get(vault_id)
        return vault if vault is not None and vault["project_id"] == project_id else None

    def backup_in(self, project_id: str, backup_id: str) -> Payload:
        backup: Payload | None = self.state["backups"].get(backup_id)
        if backup is None or backup["project_id"] != project_id:
            raise ApiError(404, NOT_FOUND, "The backup does not exist.")
        return backup

    def setting(self, name: str) -> Any:
        return self.state["settings"].get(name)

    @property
    def edition(self) -> str:
        return str(self.setting("edition") or "huawei")

    def destinations(self, region: str) -> list[str]:
        return list(self.state["regions"].get(region, {}).get("replication_destinations", []))

    def live_record(self, backup: Payload, region: str) -> Payload | None:
        """A record that blocks re-replication: in flight, or success with its replica alive."""
        records: list[Payload] = backup["replication_records"]
        for record in records:
            if record["destination_region"] != region:
                continue
            if record["status"] in LIVE_STATUSES:
                return record
            if (
                record["status"] == "success"
                and record["destination_backup_id"] in (self.state["backups"])
            ):
                return record
        return None

    # ----- admin -------------------------------------------------------------------------

    def delete_backup(self, backup_id: str) -> bool:
        with self.lock:
            backup = self.state["backups"].pop(backup_id, None)
            if backup is None:
                return False
            members = self._members.get(backup["vault_id"], [])
            if backup_id in members:
                members.remove(backup_id)
            self._invalidate(backup)
            self.changed()
            return True

    def add_backup(self, item: Payload) -> Payload:
        """Add one backup (admin); `vault_id` or a unique `vault` name says where."""
        with self.lock:
            vault = self._vault_by_reference(str(item.get("vault_id") or item.get("vault") or ""))
            backup_id = str(item.get("id") or uuid.uuid4())
            default_time = format_time(self.clock.now())
            created = normalize_time(item.get("created_at"), default_time)
            backup = make_backup(
                backup_id, str(item["name"]), vault, {**item, "created_at": created}
            )
            self._insert_backup(backup)
            self.changed()
            return backup

    def _vault_by_reference(self, reference: str) -> Payload:
        vaults = self.state["vaults"]
        if reference in vaults:
            return dict(vaults[reference])
        matches = [v for v in vaults.values() if v["name"] == reference]
        if len(matches) != 1:
            raise ApiError(400, INVALID, f"vault {reference!r} not found or not unique")
        return dict(matches[0])

    def duplicates(self) -> list[Payload]:
        """(source backup, region) pairs with more than one replica made or in flight."""
        with self.lock:
            self.tick()
            counts: dict[tuple[str, str], list[str]] = {}
            for entry in self.state["replica_log"]:
                key = (entry["source_backup_id"], entry["destination_region"])
                counts.setdefault(key, []).append(entry["replica_id"])
            for record_id, job in self.state["pending"].items():
                record = _find_record(self.state["backups"].get(job["backup_id"]), record_id)
                if record is not None:
                    key = (job["backup_id"], record["destination_region"])
                    counts.setdefault(key, []).append("in-flight:" + record_id)
            return [
                {"source_backup_id": b, "destination_region": r, "replicas": ids}
                for (b, r), ids in sorted(counts.items())
                if len(ids) > 1
            ]


def _find_record(backup: Payload | None, record_id: str) -> Payload | None:
    if backup is None:
        return None
    records: list[Payload] = backup["replication_records"]
    for record in records:
        if record["id"] == record_id:
            return record
    return None


def has_system_disk(backup: Payload) -> bool:
    """CBR-API §3: contain_system_disk, or when absent, a bootable child."""
    contains = backup["extend_info"].get("contain_system_disk")
    if contains is not None:
        return contains is True
    return any(child["extend_info"].get("bootable") is True for child in backup["children"])


def is_eligible_source(backup: Payload) -> bool:
    return (
        backup["image_type"] == "backup"
        and backup["resource_type"] == SERVER_TYPE
        and backup["status"] == "available"
        and has_system_disk(backup)
    )


def new_record(
    world: World, backup: Payload, region: str, project_id: str, vault_id: str
) -> Payload:
    """Create a waiting_replicate record on a source backup (caller holds the lock)."""
    record = make_record(backup, world.state, region, project_id, vault_id)
    record["id"] = str(uuid.uuid4())
    record["created_at"] = format_time(world.clock.now())
    backup["replication_records"].append(record)
    return record
