"""The API gateway in front of the emulated CBR: throttling windows and the signing guards.

What Huawei's gateway does before a request reaches a service (docs/design.md §16):

- throttling by fixed windows of 1 second, 1 minute or 5 minutes: past ``limit`` requests
  in a window, ``429 APIGW.0308`` "policy user over ratelimit,limit:N,time:1 minute", with
  no ``Retry-After`` unless told to send one;
- a request whose ``X-Sdk-Date`` is more than 15 minutes away from the gateway's clock is
  refused (``401 APIGW.0301`` "signature expired", with both times in the message);
- more than 5 failed signatures in a row lock the access key for 5 minutes.

The config is a plain dict (it travels through the admin endpoint as JSON). Windows and the
lockout run on the emulator's clock (tests step it); the signing date is checked against the
real clock plus ``clock_offset_seconds`` (the SDK signs with the real clock), so a test can
play a host whose clock is off. Either code prefix (``APIGW`` or ``APIG``) can be chosen.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

WINDOW_NAMES = {1.0: "1 second", 60.0: "1 minute", 300.0: "5 minute"}
DEFAULTS: dict[str, Any] = {
    "prefix": "APIGW",
    "throttle_limit": None,  # requests per window; None: no throttling
    "throttle_window_seconds": 1.0,
    "retry_after": False,  # send Retry-After (seconds left in the window) with a 429
    "max_skew_seconds": 900.0,
    "clock_offset_seconds": 0.0,  # the gateway's clock minus the real one
    "lockout_after": 5,  # failed signatures in a row tolerated; one more locks the key
    "lockout_seconds": 300.0,
    # Operations answered 404 as if not published here ("show_backup" or, for one region,
    # "show_backup@cn-south-1"): by the gateway (404 APIGW.0101) or, with "proxy", by a
    # proxy in front of it (an HTML 404 without any error code).
    "unpublished": [],
    "unpublished_answer": "gateway",
}
SDK_DATE = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class Refusal:
    """The gateway's answer instead of the service's."""

    status: int
    code: str
    message: str
    headers: dict[str, str]


def validate(config: dict[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown gateway keys: {sorted(unknown)}")
    merged = {**DEFAULTS, **config}
    if merged["prefix"] not in ("APIGW", "APIG"):
        raise ValueError("prefix must be APIGW or APIG")
    limit = merged["throttle_limit"]
    if limit is not None and int(limit) < 1:
        raise ValueError("throttle_limit must be at least 1")
    if float(merged["throttle_window_seconds"]) <= 0:
        raise ValueError("throttle_window_seconds must be positive")
    if merged["unpublished_answer"] not in ("gateway", "proxy"):
        raise ValueError("unpublished_answer must be gateway or proxy")
    return merged


class Gateway:
    """Thread-safe: the handler threads ask it about every API request."""

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._wall_clock = wall_clock
        self._config = validate(config or {})
        self._window = -1  # index of the current throttling window
        self._used = 0
        self._failures: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}

    @property
    def config(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._config)

    def set(self, config: dict[str, Any]) -> None:
        checked = validate(config)
        with self._lock:
            self._config = checked
            self._window, self._used = -1, 0

    def now(self) -> float:
        """The gateway's clock (for its Date header): real time plus the offset."""
        with self._lock:
            return self._wall_clock() + float(self._config["clock_offset_seconds"])

    def _code(self, number: str) -> str:
        return f"{self._config['prefix']}.{number}"

    # ----- signing -----------------------------------------------------------------------

    def locked(self, access_key: str) -> Refusal | None:
        with self._lock:
            until = self._locked_until.get(access_key)
            if until is None or self._clock() >= until:
                return None
            return Refusal(
                401,
                self._code("0301"),
                "Incorrect IAM authentication information: "
                "AK access failed to reach the limit, forbidden",
                {},
            )

    def check_date(self, value: str | None) -> str | None:
        """Why a signing date is refused (expired or unreadable), or None when it is fine."""
        if not value:
            return None  # the signature check reports a missing date
        gateway_now = self.now()
        try:
            signed = datetime.strptime(value.strip(), SDK_DATE).replace(tzinfo=UTC).timestamp()
        except ValueError:
            return "invalid X-Sdk-Date"
        with self._lock:
            limit = float(self._config["max_skew_seconds"])
        if abs(gateway_now - signed) <= limit:
            return None
        server = datetime.fromtimestamp(gateway_now, UTC).strftime(SDK_DATE)
        return f"signature expired, signature time:{value.strip()},server time:{server}"

    def auth_failed(self, access_key: str, reason: str) -> Refusal:
        """A refused signature: counted toward the access key's lockout."""
        with self._lock:
            failures = self._failures.get(access_key, 0) + 1
            self._failures[access_key] = failures
            if failures > int(self._config["lockout_after"]):
                self._locked_until[access_key] = self._clock() + float(
                    self._config["lockout_seconds"]
                )
                self._failures[access_key] = 0
            code = self._code("0301")
        return Refusal(401, code, f"Incorrect IAM authentication information: {reason}", {})

    def auth_passed(self, access_key: str) -> None:
        with self._lock:
            self._failures.pop(access_key, None)

    def no_such_api(self, operation: str | None, region: str | None) -> Refusal | None:
        """The 404 of a path the gateway does not route (``operation`` None: unknown)."""
        with self._lock:
            hidden = self._config["unpublished"]
            proxy = self._config["unpublished_answer"] == "proxy"
            code = self._code("0101")
        if operation is not None and not {operation, f"{operation}@{region}"} & set(hidden):
            return None
        if proxy and operation is not None:
            return Refusal(404, "", "", {})
        message = "The API does not exist or has not been published in the environment."
        return Refusal(404, code, message, {})

    # ----- throttling --------------------------------------------------------------------

    def admit(self) -> Refusal | None:
        """Count one request in the current window; a Refusal (429) past its limit."""
        with self._lock:
            limit = self._config["throttle_limit"]
            if limit is None:
                return None
            length = float(self._config["throttle_window_seconds"])
            now = self._clock()
            window = math.floor(now / length)
            if window != self._window:
                self._window, self._used = window, 0
            if self._used < int(limit):
                self._used += 1
                return None
            headers = {}
            if self._config["retry_after"]:
                headers["Retry-After"] = str(max(1, math.ceil((window + 1) * length - now)))
            name = WINDOW_NAMES.get(length, f"{length:g} second")
            message = (
                "The throttling threshold has been reached: "
                f"policy user over ratelimit,limit:{int(limit)},time:{name}"
            )
            return Refusal(429, self._code("0308"), message, headers)
