"""Writing a command's report: plain lines, JSON documents, and the small formats they share
(ages, times, sizes).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from daemon.config.describe import format_duration


def out(line: str = "") -> None:
    print(line, flush=True)


def print_json_document(value: object) -> None:
    print(json.dumps(value, indent=2, default=json_value, sort_keys=True), flush=True)


def json_value(value: object) -> object:
    """What JSON cannot hold as is: times in RFC 3339 (UTC, ``T`` and ``Z``, as the logs and
    webhooks write them), anything else as text."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def whole_seconds(age: timedelta | None) -> int | None:
    return None if age is None else int(age.total_seconds())


def age_text(seconds: int | None, *, ago: bool = False) -> str:
    if seconds is None:
        return "none"
    text = format_duration(timedelta(seconds=seconds))
    return f"{text} ago" if ago else text


def when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ") if moment else "-"


def size_text(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
