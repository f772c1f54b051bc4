"""The CBR v3 and IAM v3 operations: query/body in, JSON payload out (or ApiError).

Each function runs with the world lock held by the caller. Shapes follow the API facts
(docs/design.md §16) and the API definitions; refusals use the real error codes listed in `world`.
"""

from __future__ import annotations

from typing import Any

from daemon.emulator.scenario import ECS_PROVIDER_ID, SERVER_TYPE, normalize_time
from daemon.emulator.world import (
    ALREADY_REPLICATED,
    DEST_NOT_FOUND,
    DEST_NOT_REPLICATION,
    INVALID,
    LIVE_STATUSES,
    MAX_LIMIT,
    NAME_PATTERN,
    NO_SYSTEM_DISK,
    NOT_SERVER,
    PROJECT_UNSUPPORTED,
    REGION_PATTERN,
    REGION_UNSUPPORTED,
    REPLICA_AS_SOURCE,
    VAULT_ALREADY_REPLICATED,
    VAULT_BEING_REPLICATED,
    VAULT_NOT_FOUND,
    VAULT_TYPE_REFUSED,
    ApiError,
    Payload,
    Query,
    World,
    has_system_disk,
    is_eligible_source,
    new_record,
)

_TRUE = ("true", "1", "yes")


def first(query: Query, key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def paging(query: Query) -> tuple[int, int]:
    """limit in 1..1000 (default 1000) and offset >= 0, else 400 9900 like the real API."""
    try:
        limit = int(first(query, "limit") or MAX_LIMIT)
        offset = int(first(query, "offset") or 0)
    except ValueError as error:
        raise ApiError(400, INVALID, "limit and offset must be integers") from error
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise ApiError(400, INVALID, f"limit must be 1-{MAX_LIMIT}, offset >= 0")
    return limit, offset


# ----- backups -----------------------------------------------------------------------------


def render_backup(backup: Payload, show_replication: bool) -> Payload:
    rendered = dict(backup)
    if not show_replication:
        rendered.pop("replication_records")
    return rendered


def list_backups(world: World, project_id: str, query: Query) -> Payload:
    world.region_of(project_id)
    limit, offset = paging(query)
    vault_id = first(query, "vault_id")
    order = sort_order(first(query, "sort"))
    ids = world.sorted_ids(project_id, vault_id)
    backups = world.state["backups"]
    if order is not None and order not in DEFAULT_ORDERS:
        ids = sorted_by(ids, backups, order)
    if vault_id and world.vault_in(project_id, vault_id) is None:
        ids = []
    checks = _backup_filters(query)
    if checks:
        ids = [i for i in ids if all(check(backups[i]) for check in checks)]
    marker = first(query, "marker")
    if marker and marker in ids:
        ids = ids[ids.index(marker) + 1 :]
    show = (first(query, "show_replication") or "").lower() in _TRUE
    page = [render_backup(backups[i], show) for i in ids[offset : offset + limit]]
    return {"backups": page, "count": len(ids), "offset": offset, "limit": limit}


SORT_KEYS = ("created_at", "updated_at", "name", "status", "protected_at", "id")
# The order `sorted_ids` keeps cached: newest first, ties by id.
DEFAULT_ORDERS = ([("created_at", True), ("id", True)], [("created_at", True)])


def sort_order(value: str | None) -> list[tuple[str, bool]] | None:
    """`sort` as (key, descending) pairs: `<key>[:asc|desc],...`, descending by default, at
    most 255 characters, keys of SORT_KEYS; anything else is refused like the real API."""
    if value is None:
        return None
    if len(value) > 255:
        raise ApiError(400, INVALID, "sort is longer than 255 characters")
    order = []
    for part in value.split(","):
        key, _, direction = part.strip().partition(":")
        if key not in SORT_KEYS or direction not in ("", "asc", "desc"):
            raise ApiError(400, INVALID, f"invalid sort {part!r}")
        order.append((key, direction != "asc"))
    return order


def sorted_by(ids: list[str], backups: Payload, order: list[tuple[str, bool]]) -> list[str]:
    ordered = list(ids)
    for key, descending in reversed(order):  # stable sorts, the last key first
        values = {backup_id: _sort_value(backups[backup_id], key) for backup_id in ordered}
        ordered.sort(key=values.__getitem__, reverse=descending)
    return ordered


def _sort_value(backup: Payload, key: str) -> str:
    return str(backup.get(key) or "")


def _backup_filters(query: Query) -> list[Any]:
    checks: list[Any] = []
    for key in ("resource_type", "image_type", "name", "resource_id", "checkpoint_id"):
        wanted = first(query, key)
        if wanted is not None:
            checks.append(lambda b, k=key, w=wanted: b[k] == w)
    statuses = query.get("status")
    if statuses:
        checks.append(lambda b, s=set(statuses): b["status"] in s)
    start, end = first(query, "start_time"), first(query, "end_time")
    if start:
        low = normalize_time(start, "")
        checks.append(lambda b: b["created_at"] >= low)
    if end:
        high = normalize_time(end, "")
        checks.append(lambda b: b["created_at"] <= high)
    return checks


def show_backup(world: World, project_id: str, backup_id: str) -> Payload:
    world.region_of(project_id)
    return {"backup": render_backup(world.backup_in(project_id, backup_id), True)}


# ----- vaults ------------------------------------------------------------------------------


def list_vaults(world: World, project_id: str, query: Query) -> Payload:
    world.region_of(project_id)
    limit, offset = paging(query)
    vaults = [v for v in world.state["vaults"].values() if v["project_id"] == project_id]
    name = first(query, "name")
    if name is not None:
        vaults = [v for v in vaults if v["name"] == name]
    for key in ("protect_type", "object_type"):
        wanted = first(query, key)
        if wanted is not None:
            vaults = [v for v in vaults if v["billing"][key] == wanted]
    ids = query.get("id")
    if ids:
        vaults = [v for v in vaults if v["id"] in ids]
    page = vaults[offset : offset + limit]
    return {"vaults": page, "count": len(vaults), "limit": limit, "offset": offset}


def show_vault(world: World, project_id: str, vault_id: str) -> Payload:
    world.region_of(project_id)
    vault = world.vault_in(project_id, vault_id)
    if vault is None:
        raise ApiError(404, VAULT_NOT_FOUND, "Vault Not Found")
    return {"vault": vault}


def capabilities(world: World, project_id: str) -> Payload:
    """The queried region's entry, named by its ``capability_name`` when the scenario gives
    one (Huawei's example names it ``southchina``); with the scenario setting
    ``capabilities_of_every_region``, every region's entry."""
    region = world.region_of(project_id)
    listed = (
        sorted(world.state["regions"])
        if world.setting("capabilities_of_every_region")
        else [region]
    )
    return {"regions": [_capability(world, name) for name in listed]}


def _capability(world: World, region: str) -> Payload:
    spec = world.state["regions"].get(region, {})
    return {
        "name": spec.get("capability_name") or region,
        "replication_destinations": world.destinations(region),
    }


# ----- replication -------------------------------------------------------------------------


def _replicate_body(body: Any, required: tuple[str, ...]) -> Payload:
    params = body.get("replicate") if isinstance(body, dict) else None
    if not isinstance(params, dict):
        raise ApiError(400, INVALID, "The request body must hold a 'replicate' object.")
    for key in required:
        if not isinstance(params.get(key), str) or not params[key]:
            raise ApiError(400, INVALID, f"Parameter {key} is required.")
    if not REGION_PATTERN.match(params["destination_region"]):
        raise ApiError(400, INVALID, "Invalid destination_region.")
    for key in ("enable_acceleration", "auto_trigger"):
        if key in params and not isinstance(params[key], bool):
            raise ApiError(400, INVALID, f"Parameter {key} must be a boolean.")
    return params


def _check_name(params: Payload) -> None:
    name, description = params.get("name"), params.get("description")
    if name is not None and (not isinstance(name, str) or not NAME_PATTERN.match(name)):
        raise ApiError(400, INVALID, "Invalid name: 1-64 letters, digits, '_' or '-'.")
    if description is not None and (
        not isinstance(description, str)
        or len(description) > 255
        or "<" in description
        or ">" in description
    ):
        raise ApiError(400, INVALID, "Invalid description: at most 255 characters, no < >.")


def _check_destination(world: World, source_region: str, params: Payload) -> None:
    """Region in capabilities, project in that region, vault a replication vault there."""
    region = params["destination_region"]
    if region == source_region or region not in world.destinations(source_region):
        raise ApiError(
            400, REGION_UNSUPPORTED, "The destination region does not support replication."
        )
    project = world.state["projects"].get(params["destination_project_id"])
    if project is None or project["region"] != region:
        raise ApiError(
            400, PROJECT_UNSUPPORTED, "The destination project does not support replication."
        )
    vault = world.vault_in(project["id"], params["destination_vault_id"])
    if vault is None:
        raise ApiError(400, DEST_NOT_FOUND, "The destination vault does not exist.")
    if vault["billing"]["protect_type"] != "replication":
        raise ApiError(
            400, DEST_NOT_REPLICATION, "The destination vault does not support replication."
        )


def _check_source_backup(world: World, backup: Payload, region: str) -> None:
    if backup["image_type"] != "backup":
        raise ApiError(400, REPLICA_AS_SOURCE, "Replication is not allowed for this backup type.")
    if backup["resource_type"] != SERVER_TYPE:
        raise ApiError(400, NOT_SERVER, "Replication is not allowed: the backup is not of an ECS.")
    if backup["status"] != "available":
        raise ApiError(400, INVALID, f"The backup status {backup['status']} is not available.")
    if not has_system_disk(backup):
        raise ApiError(400, NO_SYSTEM_DISK, "The backup does not contain system disk data.")
    if not world.permissive and world.live_record(backup, region) is not None:
        raise ApiError(
            400,
            ALREADY_REPLICATED,
            "The backup is being replicated or has been replicated to the destination region.",
        )


def replicate_backup(world: World, project_id: str, backup_id: str, body: Any) -> Payload:
    source_region = world.region_of(project_id)
    params = _replicate_body(
        body, ("destination_project_id", "destination_region", "destination_vault_id")
    )
    _check_name(params)
    backup = world.backup_in(project_id, backup_id)
    _check_destination(world, source_region, params)
    _check_source_backup(world, backup, params["destination_region"])
    record = _start(world, backup, params, params.get("name"), params.get("description"))
    world.changed()
    return {
        "replication": {
            "backup_id": backup_id,
            "destination_project_id": params["destination_project_id"],
            "destination_region": params["destination_region"],
            "destination_vault_id": params["destination_vault_id"],
            "project_id": project_id,
            "provider_id": ECS_PROVIDER_ID,
            "replication_record_id": record["id"],
            "source_region": source_region,
        }
    }


def _start(
    world: World, backup: Payload, params: Payload, name: str | None, description: str | None
) -> Payload:
    record = new_record(
        world,
        backup,
        params["destination_region"],
        params["destination_project_id"],
        params["destination_vault_id"],
    )
    record["extra_info"]["auto_trigger"] = bool(params.get("auto_trigger", False))
    world.schedule(backup, record, name=name, description=description)
    return record


def replicate_vault(world: World, project_id: str, body: Any) -> Payload:
    source_region = world.region_of(project_id)
    params = _replicate_body(
        body, ("vault_id", "destination_project_id", "destination_region", "destination_vault_id")
    )
    vault = world.vault_in(project_id, params["vault_id"])
    if vault is None:
        raise ApiError(400, VAULT_NOT_FOUND, "Vault Not Found")
    if vault["billing"]["protect_type"] == "replication":
        raise ApiError(400, VAULT_TYPE_REFUSED, "Replication is not allowed for this vault type.")
    _check_destination(world, source_region, params)
    region = params["destination_region"]
    bindings = world.state["vault_bindings"]
    if any(b["vault_id"] == vault["id"] and b["destination_region"] == region for b in bindings):
        if _vault_replicating(world, project_id, vault["id"]):
            raise ApiError(
                400, VAULT_BEING_REPLICATED, "The vault is being replicated. Try again later."
            )
        raise ApiError(
            400, VAULT_ALREADY_REPLICATED, "The vault has already been replicated to this region."
        )
    if _vault_replicating(world, project_id, vault["id"]):
        raise ApiError(
            400, VAULT_BEING_REPLICATED, "The vault is being replicated. Try again later."
        )
    started = _start_eligible(world, project_id, vault["id"], params)
    record_ids = [item["replication_record_id"] for item in started]
    bindings.append(
        {"vault_id": vault["id"], "destination_region": region, "record_ids": record_ids}
    )
    world.changed()
    return {
        "replication": {
            "backups": started,
            "destination_project_id": params["destination_project_id"],
            "destination_region": region,
            "destination_vault_id": params["destination_vault_id"],
            "project_id": project_id,
            "provider_id": ECS_PROVIDER_ID,
            "source_region": source_region,
            "vault_id": vault["id"],
        }
    }


def _vault_replicating(world: World, project_id: str, vault_id: str) -> bool:
    """A vault replication of this vault still runs: a record it started is live."""
    started = {
        record_id
        for binding in world.state["vault_bindings"]
        if binding["vault_id"] == vault_id
        for record_id in binding.get("record_ids", ())
    }
    backups = world.state["backups"]
    return any(
        record["id"] in started and record["status"] in LIVE_STATUSES
        for backup_id in world.sorted_ids(project_id, vault_id)
        for record in backups[backup_id]["replication_records"]
    )


def _start_eligible(world: World, project_id: str, vault_id: str, params: Payload) -> list[Payload]:
    backups = world.state["backups"]
    started = []
    for backup_id in world.sorted_ids(project_id, vault_id):
        backup = backups[backup_id]
        if not is_eligible_source(backup):
            continue
        if world.live_record(backup, params["destination_region"]) is not None:
            continue
        record = _start(world, backup, params, None, None)
        started.append({"backup_id": backup_id, "replication_record_id": record["id"]})
    return started


# ----- operation logs ----------------------------------------------------------------------

_OPLOG_STATUS = {
    "waiting_replicate": "waiting",
    "replicating": "running",
    "success": "success",
    "fail": "failed",
    "skip": "skipped",
}


def list_oplogs(world: World, project_id: str, query: Query) -> Payload:
    """Replication tasks of the project, derived from the replication records."""
    world.region_of(project_id)
    limit, offset = paging(query)
    wanted_type = first(query, "operation_type")
    logs = []
    if wanted_type in (None, "replication"):
        logs = [_oplog(world, b, r) for b, r in _records_of(world, project_id)]
    for key in ("status", "vault_id"):
        wanted = first(query, key)
        if wanted is not None:
            logs = [log for log in logs if log[key] == wanted]
    logs.sort(key=lambda log: (log["created_at"], log["id"]), reverse=True)
    return {
        "operation_logs": logs[offset : offset + limit],
        "count": len(logs),
        "limit": limit,
        "offset": offset,
    }


def _records_of(world: World, project_id: str) -> list[tuple[Payload, Payload]]:
    backups = world.state["backups"]
    return [
        (backups[i], record)
        for i in world.sorted_ids(project_id, None)
        for record in backups[i]["replication_records"]
    ]


def _oplog(world: World, backup: Payload, record: Payload) -> Payload:
    status = _OPLOG_STATUS.get(record["status"], "running")
    ended = record["created_at"] if status in ("success", "failed", "skipped") else None
    extra = record["extra_info"]
    return {
        "id": record["id"],
        "status": status,
        "operation_type": "replication",
        "project_id": backup["project_id"],
        "provider_id": backup["provider_id"],
        "checkpoint_id": backup["checkpoint_id"],
        "policy_id": "",
        "vault_id": backup["vault_id"],
        "vault_name": world.state["vaults"].get(backup["vault_id"], {}).get("name", ""),
        "created_at": record["created_at"],
        "started_at": record["created_at"],
        "ended_at": ended,
        "updated_at": record["created_at"],
        "error_info": {
            "code": extra.get("fail_code") or "",
            "message": extra.get("fail_reason") or "",
        },
        "extra_info": {
            "common": {
                "progress": record["extra_info"]["progress"],
                "request_id": "",
                "task_id": record["id"],
            },
            "resource": {
                "id": backup["resource_id"],
                "name": backup["resource_name"],
                "type": backup["resource_type"],
            },
            "replication": {
                "source_backup_id": backup["id"],
                "source_project_id": backup["project_id"],
                "source_region": record["source_region"],
                "source_checkpoint_id": backup["checkpoint_id"],
                "source_backup_name": backup["name"],
                "destination_project_id": record["destination_project_id"],
                "destination_region": record["destination_region"],
                "destination_backup_id": record["destination_backup_id"],
                "destination_checkpoint_id": record["destination_checkpoint_id"],
            },
        },
    }


# ----- IAM ---------------------------------------------------------------------------------


def list_projects(world: World, query: Query, base_url: str) -> Payload:
    projects = [_render_project(p, base_url) for p in world.state["projects"].values()]
    for key in ("name", "domain_id", "parent_id", "id"):
        wanted = first(query, key)
        if wanted is not None:
            projects = [p for p in projects if p[key] == wanted]
    enabled = first(query, "enabled")
    if enabled is not None:
        projects = [p for p in projects if p["enabled"] == (enabled.lower() in _TRUE)]
    return {
        "projects": projects,
        "links": {"self": f"{base_url}/v3/projects", "previous": None, "next": None},
    }


def _render_project(project: Payload, base_url: str) -> Payload:
    rendered = {k: v for k, v in project.items() if k != "region"}
    rendered["links"] = {"self": f"{base_url}/v3/projects/{project['id']}"}
    return rendered
