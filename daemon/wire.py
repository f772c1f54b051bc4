"""Turn CBR and IAM JSON answers into model values, rejecting malformed ones.

The SDK silently maps a garbled 2xx body to a model whose fields are all ``None``, so the
adapter parses ``raw_content`` itself: unknown fields are tolerated, a missing or mistyped
field that we need raises ``MalformedAnswerError``. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from daemon.errors import MalformedAnswerError
from daemon.model import Backup, ReplicationRecord, Vault

JsonObject = Mapping[str, Any]


def parse_body(raw: bytes | str | None, operation: str) -> JsonObject:
    """The JSON object of an answer; anything else (HTML, truncated, a list) is malformed."""
    if raw is None or raw in (b"", ""):
        raise MalformedAnswerError(f"{operation}: empty answer body")
    try:
        body = orjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:  # orjson.JSONDecodeError is a ValueError
        raise MalformedAnswerError(
            f"{operation}: answer is not JSON ({error.__class__.__name__})"
        ) from None
    if not isinstance(body, dict):
        raise MalformedAnswerError(f"{operation}: answer is not a JSON object")
    return body


def require(obj: JsonObject, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``obj[key]`` checked against ``kind``; raises MalformedAnswerError naming the field."""
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedAnswerError(f"{where}: field {key!r} missing or not {_kind_name(kind)}")
    return value


def optional(obj: JsonObject, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``obj[key]`` or None; a present value of the wrong type is malformed."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise MalformedAnswerError(f"{where}: field {key!r} is not {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def parse_timestamp(value: object) -> datetime | None:
    """Lenient ISO-8601: CBR answers with and without zones; no zone means UTC."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace(" ", "T", 1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


_RECORD_TEXTS = (
    "destination_region",
    "destination_project_id",
    "destination_vault_id",
    "destination_backup_id",
)


def parse_record(obj: object, where: str) -> ReplicationRecord:
    if not isinstance(obj, dict):
        raise MalformedAnswerError(f"{where}: replication record is not an object")
    # One pass of plain checks; the checking helpers (which name the bad field) run only
    # when that pass finds something wrong. A sweep parses one record per backup listed.
    record_id, status = obj.get("id"), obj.get("status")
    texts = [obj.get(key) for key in _RECORD_TEXTS]
    extra = obj.get("extra_info")
    if not (
        isinstance(record_id, str)
        and isinstance(status, str)
        and all(value is None or isinstance(value, str) for value in texts)
        and (extra is None or isinstance(extra, dict))
    ):
        return _parse_record_checked(obj, where)
    extra = extra or {}
    progress = extra.get("progress")
    return ReplicationRecord(
        id=record_id,
        status=status,
        destination_region=texts[0],
        destination_project_id=texts[1],
        destination_vault_id=texts[2],
        destination_backup_id=texts[3],
        created_at=parse_timestamp(obj.get("created_at")),
        fail_code=extra.get("fail_code") or None,
        fail_reason=extra.get("fail_reason") or None,
        progress=progress if isinstance(progress, int) else None,
    )


def _parse_record_checked(obj: dict[str, Any], where: str) -> ReplicationRecord:
    """The slow path of ``parse_record``: raises naming the first malformed field."""
    require(obj, "id", str, where)
    require(obj, "status", str, where)
    for key in _RECORD_TEXTS:
        optional(obj, key, str, where)
    optional(obj, "extra_info", dict, where)
    raise AssertionError("parse_record's checks disagree")  # pragma: no cover


def parse_backup(obj: object, where: str) -> Backup:
    """One ``BackupResp``. Fields the rules need are required; the rest are lenient."""
    if not isinstance(obj, dict):
        raise MalformedAnswerError(f"{where}: backup is not an object")
    backup_id = require(obj, "id", str, where)
    where = f"{where} backup {backup_id}"
    extend = optional(obj, "extend_info", dict, where) or {}
    children = optional(obj, "children", list, where) or []
    records = optional(obj, "replication_records", list, where) or []
    size = optional(obj, "resource_size", (int, float), where) or 0
    system_disk = extend.get("contain_system_disk")
    return Backup(
        id=backup_id,
        name=optional(obj, "name", str, where) or "",
        vault_id=require(obj, "vault_id", str, where),
        resource_type=require(obj, "resource_type", str, where),
        image_type=require(obj, "image_type", str, where),
        status=require(obj, "status", str, where),
        resource_size_gb=int(size),
        contain_system_disk=system_disk if isinstance(system_disk, bool) else None,
        children_bootable=tuple(_child_bootable(child) for child in children),
        created_at=parse_timestamp(obj.get("created_at")),
        replication_records=tuple(parse_record(record, where) for record in records),
    )


def _child_bootable(child: object) -> bool | None:
    if not isinstance(child, dict):
        return None
    extend = child.get("extend_info")
    bootable = extend.get("bootable") if isinstance(extend, dict) else None
    return bootable if isinstance(bootable, bool) else None


def parse_backup_page(
    body: JsonObject, where: str, skipped: list[MalformedAnswerError] | None = None
) -> tuple[list[Backup], int | None]:
    """A ``ListBackups`` page and the total count the server reported (None if absent).

    With ``skipped``, a malformed backup goes there instead of failing the whole page, so
    one odd backup does not hide the others of its vault (RELIABILITY.md §4, T5)."""
    items = require(body, "backups", list, where)
    count = optional(body, "count", int, where)
    if skipped is None:
        return [parse_backup(item, where) for item in items], count
    page = []
    for item in items:
        try:
            page.append(parse_backup(item, where))
        except MalformedAnswerError as error:
            skipped.append(error)
    return page, count


def parse_vault(obj: object, region: str, where: str) -> Vault:
    if not isinstance(obj, dict):
        raise MalformedAnswerError(f"{where}: vault is not an object")
    billing = require(obj, "billing", dict, where)
    return Vault(
        id=require(obj, "id", str, where),
        name=require(obj, "name", str, where),
        region=region,
        project_id=optional(obj, "project_id", str, where) or "",
        protect_type=require(billing, "protect_type", str, f"{where} billing"),
        object_type=optional(billing, "object_type", str, f"{where} billing"),
    )


def parse_destinations(body: JsonObject, region: str, where: str) -> frozenset[str]:
    """Destinations of ``region`` from ``ShowReplicationCapabilities``.

    The docs do not say whether ``regions`` lists only the queried region or every source
    region, so the entry is picked by name (CBR-API.md §4.3).
    """
    regions = require(body, "regions", list, where)
    for entry in regions:
        if isinstance(entry, dict) and entry.get("name") == region:
            destinations = require(entry, "replication_destinations", list, where)
            return frozenset(d for d in destinations if isinstance(d, str))
    return frozenset()


def parse_projects(body: JsonObject, where: str) -> list[tuple[str, str]]:
    """(id, name) of every project in a ``KeystoneListProjects`` answer."""
    projects = require(body, "projects", list, where)
    result = []
    for project in projects:
        if not isinstance(project, dict):
            raise MalformedAnswerError(f"{where}: project is not an object")
        result.append((require(project, "id", str, where), require(project, "name", str, where)))
    return result
