"""The traffic report (``report traffic``): finished replications grouped by day, policy or
destination region, as CBR bills them (each replication costs its source backup's size).

Pure: entries in, rows out. Days are UTC days.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import Literal

from daemon.core.ports import TrafficEntry

GroupBy = Literal["day", "policy", "region"]
MANUAL = "(manual)"  # the policy column of replications made by replicate-backup/-vault


@dataclass(frozen=True, slots=True)
class TrafficRow:
    key: str  # the day (YYYY-MM-DD), the policy or the destination region
    bytes: int
    replications: int


def group_traffic(entries: Iterable[TrafficEntry], by: GroupBy) -> list[TrafficRow]:
    """One row per day, policy or region, sorted by that key."""
    sizes: dict[str, int] = {}
    counts: dict[str, int] = {}
    for entry in entries:
        key = _key(entry, by)
        sizes[key] = sizes.get(key, 0) + entry.bytes
        counts[key] = counts.get(key, 0) + 1
    return [TrafficRow(key, sizes[key], counts[key]) for key in sorted(sizes)]


def _key(entry: TrafficEntry, by: GroupBy) -> str:
    if by == "day":
        return entry.finished_at.astimezone(UTC).date().isoformat()
    if by == "policy":
        return entry.policy or MANUAL
    return entry.destination_region
