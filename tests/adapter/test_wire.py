"""Parsing of CBR answers: lenient where the API is loose, strict where the rules need a field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.adapters.cloud import wire
from daemon.core.errors import MalformedAnswerError


def backup_json(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "id": "b1",
        "name": "web-1",
        "vault_id": "v1",
        "resource_type": "OS::Nova::Server",
        "image_type": "backup",
        "status": "available",
        "resource_size": 40,
        "created_at": "2026-11-01T10:00:00.000000",
        "extend_info": {"contain_system_disk": True},
        "children": [{"extend_info": {"bootable": True}}],
        "replication_records": [
            {
                "id": "r1",
                "status": "fail",
                "destination_region": "cn-south-1",
                "created_at": "2026-11-01T11:00:00Z",
                "extra_info": {"fail_code": "BackupService.6129", "fail_reason": "full"},
            }
        ],
        "some_future_field": {"ignored": True},
    }
    body.update(overrides)
    return body


def test_backup_parses_every_field_the_rules_use() -> None:
    backup = wire.parse_backup(backup_json(), "ListBackups")
    assert backup.id == "b1"
    assert backup.contain_system_disk is True
    assert backup.children_bootable == (True,)
    assert backup.bytes == 40 * 2**30
    assert backup.created_at == datetime(2026, 11, 1, 10, tzinfo=UTC)
    record = backup.replication_records[0]
    assert (record.status, record.fail_code, record.fail_reason) == (
        "fail",
        "BackupService.6129",
        "full",
    )
    assert record.created_at == datetime(2026, 11, 1, 11, tzinfo=UTC)


@pytest.mark.parametrize("missing", ["id", "vault_id", "resource_type", "image_type", "status"])
def test_backup_without_a_required_field_is_malformed(missing: str) -> None:
    body = backup_json()
    del body[missing]
    with pytest.raises(MalformedAnswerError, match=missing):
        wire.parse_backup(body, "ListBackups")


@pytest.mark.parametrize(
    ("field", "value"),
    [("status", 3), ("replication_records", "x"), ("extend_info", []), ("resource_size", "big")],
)
def test_backup_with_a_wrongly_typed_field_is_malformed(field: str, value: object) -> None:
    with pytest.raises(MalformedAnswerError):
        wire.parse_backup(backup_json(**{field: value}), "ListBackups")


def test_absent_system_disk_flag_stays_unknown() -> None:
    backup = wire.parse_backup(backup_json(extend_info={}), "ListBackups")
    assert backup.contain_system_disk is None


@pytest.mark.parametrize(
    "raw", [b"", b"<html>gateway</html>", b'{"backups": [', b"[]", None, b"\xff\xfe"]
)
def test_bodies_that_are_not_a_json_object_are_malformed(raw: bytes | None) -> None:
    with pytest.raises(MalformedAnswerError):
        wire.parse_body(raw, "ListBackups")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01T10:00:00", datetime(2026, 11, 1, 10, tzinfo=UTC)),
        ("2026-11-01T10:00:00.123456", datetime(2026, 11, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-01T12:00:00+02:00", datetime(2026, 11, 1, 10, tzinfo=UTC)),
        ("2026-11-01 10:00:00Z", datetime(2026, 11, 1, 10, tzinfo=UTC)),
        ("yesterday", None),
        (None, None),
        # Moved past the calendar's ends by the offset: OverflowError (a traceback) before.
        ("9999-12-31T23:00:00-05:00", None),
        ("0001-01-01T00:30:00+05:00", None),
    ],
)
def test_timestamps_are_parsed_leniently_as_utc(
    text: str | None, expected: datetime | None
) -> None:
    assert wire.parse_timestamp(text) == expected


def _reference_timestamp(value: object) -> datetime | None:
    """The plain implementation parse_timestamp had before it was made faster (issue 7)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace(" ", "T", 1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:  # a moment beyond the calendar in UTC: none (as parse_timestamp)
        return None


_ZONES = st.sampled_from(["", "Z", "+00:00", "+08:00", "-03:30"])
_SEPARATORS = st.sampled_from(["T", " "])


@settings(deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    separator=_SEPARATORS,
    zone=_ZONES,
    timespec=st.sampled_from(["hours", "minutes", "seconds", "milliseconds", "microseconds"]),
    padding=st.sampled_from(["", " "]),
    date_only=st.booleans(),
)
def test_timestamps_parse_as_the_plain_implementation_did(
    *, moment: datetime, separator: str, zone: str, timespec: str, padding: str, date_only: bool
) -> None:
    if date_only:
        text = moment.date().isoformat()
    else:
        text = moment.isoformat(sep=separator, timespec=timespec) + zone
    text = padding + text + padding
    parsed = wire.parse_timestamp(text)
    assert parsed == _reference_timestamp(text)
    assert parsed is None or parsed.tzinfo is UTC


@settings(deadline=None)
@given(st.text(max_size=40))
def test_any_text_parses_as_the_plain_implementation_did(text: str) -> None:
    parsed = wire.parse_timestamp(text)
    assert parsed == _reference_timestamp(text)
    assert parsed is None or parsed.tzinfo is UTC


def test_capabilities_pick_the_entry_of_the_queried_region() -> None:
    body = {
        "regions": [
            {"name": "cn-south-1", "replication_destinations": ["cn-north-4"]},
            {"name": "cn-north-4", "replication_destinations": ["cn-south-1", "ap-southeast-1"]},
        ]
    }
    assert wire.parse_destinations(body, "cn-north-4", "caps") == {"cn-south-1", "ap-southeast-1"}


def test_capabilities_of_one_entry_named_otherwise_are_the_regions() -> None:
    """Huawei's example names the queried region's entry ``southchina``."""
    body = {"regions": [{"name": "southchina", "replication_destinations": ["cn-hk1"]}]}
    assert wire.parse_destinations(body, "cn-south-1", "caps") == {"cn-hk1"}


def test_capabilities_of_several_entries_none_named_so_are_not_guessed() -> None:
    body = {
        "regions": [
            {"name": "southchina", "replication_destinations": ["cn-hk1"]},
            {"name": "northchina", "replication_destinations": ["cn-east-3"]},
        ]
    }
    with pytest.raises(MalformedAnswerError) as unclear:
        wire.parse_destinations(body, "af-south-1", "caps")
    assert "'southchina' -> [cn-hk1]; 'northchina' -> [cn-east-3]" in str(unclear.value)


def test_backup_page_reports_the_server_count() -> None:
    page, count = wire.parse_backup_page({"backups": [backup_json()], "count": 1201}, "ListBackups")
    assert [backup.id for backup in page] == ["b1"]
    assert count == 1201
