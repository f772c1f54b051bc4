"""Classifying what the SDK raised into the core's errors (transient, ambiguous, permanent,
throttled, ...), by CBR's and the gateway's error codes and by the transport's failure; and
the hint added when a refusal looks like this host's clock is wrong.
"""

from __future__ import annotations

import email.utils
import re
from datetime import UTC, datetime
from typing import Any

import requests
from huaweicloudsdkcore.exceptions import exceptions as sdk_errors
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from daemon.core.errors import (
    AlreadyReplicatedError,
    AmbiguousError,
    BusyError,
    CloudError,
    ConfigError,
    EndpointError,
    MalformedAnswerError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    TransientError,
)

# API Gateway codes come with either prefix (docs/design.md §16).
THROTTLED_CODES = frozenset({"APIGW.0308", "APIG.0308"})
NO_SUCH_API_CODES = frozenset({"APIGW.0101", "APIG.0101"})
GATEWAY_AUTH_CODES = frozenset({"APIGW.0301", "APIG.0301"})
ALREADY_REPLICATED_CODE = "BackupService.1009"
# CBR's own "does not exist": backup, vault, restore point, operation log, task.
NOT_FOUND_CODES = frozenset(
    {
        "BackupService.6200",
        "BackupService.6105",
        "BackupService.6217",
        "BackupService.6500",
        "BackupService.6501",
    }
)
AUTH_CODES = frozenset({"BackupService.8600", "BackupService.9998"}) | GATEWAY_AUTH_CODES
# "The vault is being replicated. Try again later."
BUSY_CODES = frozenset({"BackupService.6130"})
# Refusals the API documents. An edition may answer one with a 500 (Open Telekom Cloud sends
# 1005 and 1006 so): the code decides, so that a refused POST is never taken as ambiguous.
REFUSAL_CODES = frozenset(
    f"BackupService.{number}"
    for number in (
        *("0001", "1002", "1003", "1005", "1006", "1011", "1012", "6003", "6112", "6113"),
        *("6114", "6118", "6119", "6120", "6122", "6128", "6129", "6133", "6142", "6204"),
        "9900",
    )
)

DENIED_RESPITE = 600.0  # seconds a scope that answered 401 is left alone (its lockout is 5 min)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from API gateways; fall back to our own backoff


def classify_error(
    error: Exception, *, mutating: bool, retry_after: float | None = None
) -> CloudError:
    """Map an SDK or transport exception to our error family (docs/design.md §12)."""
    if isinstance(error, CloudError):
        if mutating and isinstance(error, MalformedAnswerError):
            return AmbiguousError(f"malformed answer to a mutating call: {error}")
        return error
    if isinstance(error, sdk_errors.ServiceResponseException):
        return _classify_service_error(error, mutating=mutating, retry_after=retry_after)
    if isinstance(error, RecursionError):  # JSON nested too deeply for a parser (the SDK's)
        return classify_error(
            MalformedAnswerError("answer nested too deeply to parse", code="too_deep"),
            mutating=mutating,
        )
    if isinstance(error, sdk_errors.SdkException | requests.RequestException):
        # A TLS failure that is not a certificate problem (those are ConfigError, see
        # untrusted_endpoint) is the network path's (a reset, a protocol error): it passes;
        # for a POST on a kept-alive connection, the request may have left.
        return _classify_transport_error(error, mutating=mutating)
    return (
        AmbiguousError(f"unexpected {error.__class__.__name__}")
        if mutating
        else TransientError(f"unexpected {error.__class__.__name__}")
    )


_CERTIFICATE_MARKERS = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "doesn't match")


def untrusted_endpoint(error: Exception) -> ConfigError | None:
    """A certificate the endpoint presented and we do not trust (unknown CA, expired, another
    host's name). Nothing was sent; retrying cannot help: what fixes it is in the config
    (``cloud.ca_bundle``, the endpoint's URL) or in the network path (a proxy intercepting
    TLS), so it is a configuration error (exit 78), not a passing one."""
    if not isinstance(error, sdk_errors.SslHandShakeException | requests.exceptions.SSLError):
        return None
    text = str(getattr(error, "error_msg", None) or error)
    if not any(marker in text for marker in _CERTIFICATE_MARKERS):
        return None
    return ConfigError(
        [
            f"cloud: the endpoint's TLS certificate is not trusted ({text}); set "
            "cloud.ca_bundle to the PEM file of the CA that signs it, check the endpoint URL "
            "(cloud.endpoints), or a proxy in between that intercepts TLS"
        ]
    )


def _classify_service_error(error: Any, *, mutating: bool, retry_after: float | None) -> CloudError:
    status = int(error.status_code or 0)
    code = str(error.error_code or status)
    message = f"HTTP {status} {code}: {error.error_msg}"
    details: dict[str, Any] = {"code": code, "status": status, "request_id": error.request_id}
    if status in (401, 403) or code in AUTH_CODES:
        return PermissionDeniedError(message, **details)
    if status == 429 or code in THROTTLED_CODES:
        # Throttled at the gateway: the request was not applied, even for a POST.
        return TransientError(message, retry_after=retry_after, **details)
    if code in NO_SUCH_API_CODES:
        return EndpointError(message, **details)
    return _classify_by_code(code, status, message, details, mutating=mutating)


def _classify_by_code(
    code: str, status: int, message: str, details: dict[str, Any], *, mutating: bool
) -> CloudError:
    """The business code first, the HTTP status only for codes the API does not define: the
    editions answer the same code with different statuses."""
    for codes, kind in _BY_CODE:
        if code in codes:
            return kind(message, **details)
    if status == 404:
        # A 404 without one of CBR's not-found codes (a proxy, an unknown gateway code) says
        # nothing about the object: never "gone", so nothing is replicated again on it.
        return PermanentError(f"{message} (not a CBR not-found answer)", **details)
    if status >= 500:
        return (
            AmbiguousError(message, **details) if mutating else TransientError(message, **details)
        )
    return PermanentError(message, **details)


_BY_CODE: tuple[tuple[frozenset[str], type[CloudError]], ...] = (
    (frozenset({ALREADY_REPLICATED_CODE}), AlreadyReplicatedError),
    (NOT_FOUND_CODES, NotFoundError),
    (BUSY_CODES, BusyError),
    (REFUSAL_CODES, PermanentError),
)


def is_throttled(error: CloudError) -> bool:
    """A 429 of the gateway: refused before it reached CBR, so never applied."""
    return isinstance(error, TransientError) and (
        error.status == 429 or error.code in THROTTLED_CODES
    )


def _classify_transport_error(error: Exception, *, mutating: bool) -> CloudError:
    text = str(getattr(error, "error_msg", None) or error)
    never_sent = _failed_before_sending(error)
    message = f"{error.__class__.__name__}: {text}"
    if mutating and not never_sent:
        # A reset or a read timeout after the request left: it may have been applied.
        return AmbiguousError(message, code="ConnectionError")
    return TransientError(message, code="ConnectionError")


def _failed_before_sending(error: Exception) -> bool:
    if isinstance(error, requests.ConnectTimeout):
        return True
    text = str(getattr(error, "error_msg", None) or error)
    markers = (NewConnectionError.__name__, ConnectTimeoutError.__name__, "Connection refused")
    return any(marker in text for marker in markers)


_SERVER_TIME = re.compile(r"server time:\s*(\d{8}T\d{6}Z)")
CLOCK_SKEW_SUSPECT = 300.0  # seconds between this host's and the gateway's clocks


def clock_hint(message: str, server_date: str | None, local_now: float) -> str | None:
    """What to check after a 401: this host's clock when the gateway says the signature
    expired or its clock is minutes away from ours; the lockout when it says so."""
    lowered = message.lower()
    if "reach the limit" in lowered:
        return (
            "the gateway locks an access key for 5 minutes after repeated signature "
            "failures; fix the cause, then wait"
        )
    skew = _clock_skew(message, server_date, local_now)
    suspect = skew is not None and abs(skew) >= CLOCK_SKEW_SUSPECT
    if "expired" not in lowered and not suspect:
        return None
    if skew is None:
        return "check this host's clock (the gateway refuses signatures 15 minutes off)"
    side = "ahead of" if skew > 0 else "behind"
    return (
        f"this host's clock is {_duration(abs(skew))} {side} the gateway's: check this "
        "host's clock (NTP); the gateway refuses signatures 15 minutes off"
    )


def _clock_skew(message: str, server_date: str | None, local_now: float) -> float | None:
    """Seconds this host's clock is ahead of the gateway's (from the message, else the
    answer's Date header), or None when neither says."""
    found = _SERVER_TIME.search(message)
    try:
        if found:
            server = datetime.strptime(found[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        elif server_date:
            server = email.utils.parsedate_to_datetime(server_date)
        else:
            return None
    except (ValueError, TypeError):
        return None
    if server.tzinfo is None:
        server = server.replace(tzinfo=UTC)
    return local_now - server.timestamp()


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes >= 120:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes} min" if minutes else f"{round(seconds)} s"
