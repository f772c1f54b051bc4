"""Turn CBR and IAM JSON answers into model values, rejecting malformed ones.

The SDK silently maps a garbled 2xx body to a model whose fields are all ``None``, so the
adapter parses ``raw_content`` itself: unknown fields are tolerated, a missing or mistyped
field that we need raises ``MalformedAnswerError``. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import orjson

from daemon.core.errors import MalformedAnswerError
from daemon.core.model import Backup, BackupPage, ReplicationRecord, Vault

JsonObject = Mapping[str, Any]
# A backup's size in GB, as CBR gives it. The ledger stores it in bytes as a 64-bit integer,
# and sums those: past 1 PiB a size is no size (1e300, 10**30 overflowed the ledger).
MAX_RESOURCE_SIZE_GB = 1 << 20


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
    try:  # what CBR sends, "Z" and a space separator included, parses as it is
        parsed = datetime.fromisoformat(value)
    except ValueError:
        value = value.strip().replace("Z", "+00:00")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
    if parsed.tzinfo is None:
        if "T" in value or " " in value:
            # Parsing again with the zone is four times cheaper than datetime.replace, which
            # every zoneless CBR timestamp needs.
            return datetime.fromisoformat(value + "+00:00")
        return parsed.replace(tzinfo=UTC)  # a date alone
    return parsed if parsed.tzinfo is UTC else _in_utc(parsed)


def _in_utc(moment: datetime) -> datetime | None:
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 moved past the calendar's ends by its offset
        return None


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
        # type(), not isinstance(): a JSON true is no progress, as on the fast way
        progress=progress if type(progress) is int else None,
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
    """One ``BackupResp``, field by field (a backup shown alone, and listing pages that the
    fast way refused). Fields the rules need are required; the rest are lenient."""
    if not isinstance(obj, dict):
        raise MalformedAnswerError(f"{where}: backup is not an object")
    backup_id = require(obj, "id", str, where)
    where = f"{where} backup {backup_id}"
    extend = optional(obj, "extend_info", dict, where) or {}
    children = optional(obj, "children", list, where) or []
    records = optional(obj, "replication_records", list, where) or []
    size = _resource_size(optional(obj, "resource_size", (int, float), where), where)
    system_disk = extend.get("contain_system_disk")
    return Backup(
        id=backup_id,
        name=optional(obj, "name", str, where) or "",
        vault_id=require(obj, "vault_id", str, where),
        resource_type=require(obj, "resource_type", str, where),
        image_type=require(obj, "image_type", str, where),
        status=require(obj, "status", str, where),
        resource_size_gb=size,
        contain_system_disk=system_disk if isinstance(system_disk, bool) else None,
        children_bootable=tuple(_child_bootable(child) for child in children),
        created_at=parse_timestamp(obj.get("created_at")),
        replication_records=tuple(parse_record(record, where) for record in records),
    )


def _resource_size(value: float | None, where: str) -> int:
    if value is None:
        return 0
    if not 0 <= value <= MAX_RESOURCE_SIZE_GB:  # NaN included
        raise MalformedAnswerError(
            f"{where}: field 'resource_size' is not a size from 0 to {MAX_RESOURCE_SIZE_GB} GB"
        )
    return int(value)


def _child_bootable(child: object) -> bool | None:
    if not isinstance(child, dict):
        return None
    extend = child.get("extend_info")
    bootable = extend.get("bootable") if isinstance(extend, dict) else None
    return bootable if isinstance(bootable, bool) else None


def parse_backup_page(
    body: BackupListing | JsonObject, where: str, skipped: list[MalformedAnswerError] | None = None
) -> tuple[list[Backup], int | None]:
    """A ``ListBackups`` page and the total count the server reported (None if absent).

    With ``skipped``, a malformed backup goes there instead of failing the whole page, so
    one odd backup does not hide the others of its vault (docs/design.md §13, T5)."""
    if isinstance(body, BackupListing):
        return [_backup_from(raw) for raw in body.backups], body.count
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


# -- listing pages, decoded straight into the fields we read --------------------------------
# A listing page holds ~1.6 KB of JSON per backup, of which the rules read a tenth. Decoding
# it into dicts cost ~10 us per backup (orjson) before any check; msgspec decodes into these
# structs, skipping every other field, and checks the types on the way. A page it
# refuses (a missing or mistyped field anywhere) goes the plain way below, which names the
# field and skips only the malformed backup: both ways give the same result for any page.


class _RecordExtra(msgspec.Struct, gc=False):
    progress: Any = None
    fail_code: Any = None
    fail_reason: Any = None


class _Record(msgspec.Struct, gc=False):
    id: str
    status: str
    destination_region: str | None = None
    destination_project_id: str | None = None
    destination_vault_id: str | None = None
    destination_backup_id: str | None = None
    created_at: Any = None
    extra_info: _RecordExtra | None = None


class _Extend(msgspec.Struct, gc=False):
    contain_system_disk: Any = None


class _ChildExtend(msgspec.Struct, gc=False):
    bootable: Any = None


class _Child(msgspec.Struct, gc=False):
    extend_info: _ChildExtend | None = None


_SizeInt = Annotated[int, msgspec.Meta(ge=0, le=MAX_RESOURCE_SIZE_GB)]
_SizeFloat = Annotated[float, msgspec.Meta(ge=0, le=MAX_RESOURCE_SIZE_GB)]


class _Backup(msgspec.Struct, gc=False):
    id: str
    vault_id: str
    resource_type: str
    image_type: str
    status: str
    name: str | None = None
    resource_size: _SizeInt | _SizeFloat | None = None
    created_at: Any = None
    extend_info: _Extend | None = None
    children: list[_Child] | None = None
    replication_records: list[_Record] | None = None


class BackupListing(msgspec.Struct, gc=False):
    """A ``ListBackups`` answer that decoded whole into the fields we read."""

    backups: list[_Backup]
    count: int | None = None


_LISTING = msgspec.json.Decoder(BackupListing)


def parse_backup_listing(raw: bytes | str | None, operation: str) -> BackupListing | JsonObject:
    """A ``ListBackups`` answer: the fast structs when every field has its type, else the
    plain JSON object (for ``parse_backup_page`` to check field by field)."""
    if raw is not None and raw not in (b"", ""):
        try:
            return _LISTING.decode(raw)
        except msgspec.DecodeError:  # ValidationError included: a field of another type
            pass
        except RecursionError:  # nested deeper than msgspec goes, in a field we skip
            pass  # the checked way refuses it as malformed (orjson's depth limit)
    return parse_body(raw, operation)


def listing_page(
    body: BackupListing | JsonObject, where: str, skipped: list[MalformedAnswerError]
) -> tuple[BackupPage, int | None]:
    """A ``ListBackups`` page as a ``BackupPage`` and the count the server reported. From the
    fast structs each backup is built only when read; a page that needed the checked way is
    built whole (``parse_backup_page``, whose malformed backups go to ``skipped``)."""
    if isinstance(body, BackupListing):
        raws = body.backups
        return BackupPage([raw.id for raw in raws], raws, _backup_from), body.count
    page, count = parse_backup_page(body, where, skipped)
    return BackupPage.of(page), count


def _record_from(raw: _Record) -> ReplicationRecord:
    extra = raw.extra_info
    if extra is not None:
        progress = extra.progress
        fail_code, fail_reason = extra.fail_code or None, extra.fail_reason or None
    else:
        progress = fail_code = fail_reason = None
    # Positional, in the field order of ReplicationRecord: keywords cost a third more, once
    # per backup listed.
    return ReplicationRecord(
        raw.id,
        raw.status,
        raw.destination_region,
        raw.destination_project_id,
        raw.destination_vault_id,
        raw.destination_backup_id,
        parse_timestamp(raw.created_at),
        fail_code,
        fail_reason,
        progress if type(progress) is int else None,
    )


def _backup_from(raw: _Backup) -> Backup:
    system_disk = raw.extend_info.contain_system_disk if raw.extend_info is not None else None
    children, records = raw.children, raw.replication_records
    return Backup(  # positional, in the field order of Backup (as in _record_from)
        raw.id,
        raw.name or "",
        raw.vault_id,
        raw.resource_type,
        raw.image_type,
        raw.status,
        int(raw.resource_size or 0),
        system_disk if type(system_disk) is bool else None,
        tuple(
            [
                _bootable(child.extend_info.bootable if child.extend_info is not None else None)
                for child in children
            ]
        )
        if children
        else (),
        parse_timestamp(raw.created_at),
        tuple([_record_from(record) for record in records]) if records else (),
    )


def _bootable(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


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

    The API answers the capability of the region asked, but its entry's ``name`` is not
    always the region id (Huawei's own example names it ``southchina``): the entry named
    like the region, else the only entry. Several entries, none named so, are not guessed
    from: MalformedAnswerError showing what the answer held.
    """
    regions = require(body, "regions", list, where)
    entries = [entry for entry in regions if isinstance(entry, dict)]
    named = [entry for entry in entries if entry.get("name") == region]
    if named or (len(regions) == 1 and entries):
        chosen = (named or entries)[0]
        destinations = require(chosen, "replication_destinations", list, where)
        return frozenset(d for d in destinations if isinstance(d, str))
    raise MalformedAnswerError(
        f"{where}: no entry for region {region!r} among {len(regions)}: "
        f"{_describe_entries(regions)}"
    )


def _describe_entries(regions: list[Any]) -> str:
    described = []
    for entry in regions[:10]:
        if not isinstance(entry, dict):
            described.append("(not an object)")
            continue
        destinations = entry.get("replication_destinations")
        listed = ", ".join(map(str, destinations)) if isinstance(destinations, list) else "?"
        described.append(f"{entry.get('name')!r} -> [{listed}]")
    more = f" and {len(regions) - 10} more" if len(regions) > 10 else ""
    return "; ".join(described) + more if described else "none"


def parse_projects(body: JsonObject, where: str) -> list[tuple[str, str]]:
    """(id, name) of every project in a ``KeystoneListProjects`` answer."""
    projects = require(body, "projects", list, where)
    result = []
    for project in projects:
        if not isinstance(project, dict):
            raise MalformedAnswerError(f"{where}: project is not an object")
        result.append((require(project, "id", str, where), require(project, "name", str, where)))
    return result
