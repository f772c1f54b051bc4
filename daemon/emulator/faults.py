"""Fault injection: decide, per request, whether and how the emulated cloud misbehaves.

A fault config is a plain dict (so it travels through the admin endpoint as JSON):
rates are shares in 0..1 of the matching requests, `latency_ms` is added to every request,
`operations` overrides settings per operation name, `iam: true` lets faults hit IAM too.
One seeded random.Random makes a run repeatable for a given request order.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

# Ordered: faults that refuse before applying come first; a request gets at most one fault.
BEFORE_KINDS = ("throttle", "error_before", "html")
AFTER_KINDS = ("error_after", "reset_after", "slow_after", "malformed", "drip", "redirect")
ALL_KINDS = BEFORE_KINDS + AFTER_KINDS
RATE_KEYS = {kind: f"{kind}_rate" for kind in ALL_KINDS}
# `malformed_writes: true` lets `malformed` truncate the answer of an applied POST too (T5).
# `drip` sends the headers, then the body at `drip_bytes_per_second` (a slow-drip answer).
# `listing` misbehaves in every listing answer (LISTING_MODES); `listing_deletes` deletes that
# many of the oldest backups of the listed vault (or project) after each backup listing page;
# `listing_vaults` (vault ids) limits both to the listings of those vaults.
OTHER_KEYS = (
    "latency_ms",
    "slow_seconds",
    "operations",
    "iam",
    "malformed_writes",
    "drip_bytes_per_second",
    "listing",
    "listing_deletes",
    "listing_vaults",
)
LISTING_MODES = (
    "ignore_offset",  # page 1 again and again, without `count`
    "endless",  # fresh full pages forever, without `count`
    "endless_count",  # fresh full pages forever, `count` 10**12
    "count_is_page",  # `count` is the number of items in this answer, not the total
    "unstable_unless_sorted",  # without `sort`, each answer in another order
)

# docs/design.md §13 base rates for the crash + faults test.
BASE_RATES = {
    "throttle_rate": 0.05,
    "error_before_rate": 0.10,
    "error_after_rate": 0.05,
    "reset_after_rate": 0.05,
    "slow_after_rate": 0.03,
    "malformed_rate": 0.03,
}


@dataclass(frozen=True)
class Decision:
    """What to do with one request: at most one fault kind, plus added latency."""

    kind: str | None
    latency_seconds: float
    slow_seconds: float
    drip_bytes_per_second: float = 100.0
    listing: str | None = None
    listing_deletes: int = 0
    listing_vaults: tuple[str, ...] | None = None


def base_faults(scale: float = 1.0) -> dict[str, Any]:
    """The docs/design.md base rates multiplied by `scale` (capped at 1)."""
    return {key: min(1.0, rate * scale) for key, rate in BASE_RATES.items()}


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown keys and rates outside 0..1, so a typo never silently disables a test."""
    allowed = set(RATE_KEYS.values()) | set(OTHER_KEYS)
    unknown = set(config) - allowed
    if unknown:
        raise ValueError(f"unknown fault keys: {sorted(unknown)}")
    for key in RATE_KEYS.values():
        rate = float(config.get(key, 0.0))
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{key} must be within 0..1")
    if config.get("listing") not in (None, *LISTING_MODES):
        raise ValueError(f"listing must be one of {LISTING_MODES}")
    if float(config.get("drip_bytes_per_second", 1)) <= 0:
        raise ValueError("drip_bytes_per_second must be positive")
    if int(config.get("listing_deletes", 0)) < 0:
        raise ValueError("listing_deletes must not be negative")
    for overrides in (config.get("operations") or {}).values():
        validate(dict(overrides))
    return dict(config)


class FaultInjector:
    """Thread-safe source of fault decisions."""

    def __init__(self, config: dict[str, Any] | None = None, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._config = validate(config or {})

    @property
    def config(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._config)

    def set(self, config: dict[str, Any]) -> None:
        checked = validate(config)
        with self._lock:
            self._config = checked

    def decide(self, operation: str, method: str, is_iam: bool) -> Decision:
        with self._lock:
            settings = self._settings_for(operation)
            latency = float(settings.get("latency_ms", 0)) / 1000.0
            slow = float(settings.get("slow_seconds", 30.0))
            spared = is_iam and not settings.get("iam", False)
            kind = None if spared else self._pick(settings, method)
            return Decision(
                kind,
                latency,
                slow,
                drip_bytes_per_second=float(settings.get("drip_bytes_per_second", 100.0)),
                listing=settings.get("listing"),
                listing_deletes=int(settings.get("listing_deletes", 0)),
                listing_vaults=_vaults(settings.get("listing_vaults")),
            )

    def _settings_for(self, operation: str) -> dict[str, Any]:
        overrides = (self._config.get("operations") or {}).get(operation) or {}
        return {**self._config, **overrides}

    def _pick(self, settings: dict[str, Any], method: str) -> str | None:
        # One draw per request against cumulative rates keeps the kinds mutually exclusive.
        draw = self._rng.random()
        edge = 0.0
        for kind in ALL_KINDS:
            if kind == "malformed" and method != "GET" and not settings.get("malformed_writes"):
                continue  # by default a truncated body is only for reads
            edge += float(settings.get(RATE_KEYS[kind], 0.0))
            if draw < edge:
                return kind
        return None


def _vaults(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(str(vault_id) for vault_id in value)
