"""The webhook and heartbeat client (stdlib ``urllib``): signed JSON POSTs with retries and a
timeout, and heartbeat pings. It never raises for a failed delivery: the caller gets a
``Delivery`` and decides (a failed notification never blocks replication).

Signature: ``X-CBR-Replicator-Signature: sha256=<hex>``, the HMAC-SHA256 of
``<X-CBR-Replicator-Timestamp>.<body>`` keyed with the webhook's secret; a receiver recomputes
it over the raw body and rejects old timestamps (replays). The secret is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from types import SimpleNamespace
from urllib.parse import urlsplit

from daemon import __version__
from daemon.adapters.deadlines import GUARD
from daemon.core.ports import Delivery

SIGNATURE_HEADER = "X-CBR-Replicator-Signature"
TIMESTAMP_HEADER = "X-CBR-Replicator-Timestamp"
EVENT_HEADER = "X-CBR-Replicator-Event"
DELIVERY_HEADER = "X-CBR-Replicator-Delivery"
TRIES = 3  # per delivery round; later rounds are the outbox's (service/outbox.py)
FIRST_BACKOFF = 1.0  # seconds, doubled after each failed try
MAX_RETRY_AFTER = 30.0  # a receiver asking for longer is retried in a later round instead
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    message = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class WebhookClient:
    """Sends events and pings. ``sleep`` and ``clock`` are injected so tests never wait."""

    def __init__(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        tries: int = TRIES,
        first_backoff: float = FIRST_BACKOFF,
    ) -> None:
        self._sleep = sleep
        self._clock = clock
        self._tries = tries
        self._first_backoff = first_backoff
        self._opener = urllib.request.build_opener(
            _NoRedirect(), _DeadlineHTTPHandler(), _DeadlineHTTPSHandler()
        )

    def post_event(
        self,
        url: str,
        body: bytes,
        *,
        secret: str | None,
        timeout: float,
        event: str,
        delivery_id: str,
    ) -> Delivery:
        """POST one JSON event; retried on network errors, timeouts, 429 and 5xx."""

        def build() -> urllib.request.Request:
            timestamp = str(int(self._clock()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": f"cbr-replicator/{__version__}",
                EVENT_HEADER: event,
                DELIVERY_HEADER: delivery_id,
                TIMESTAMP_HEADER: timestamp,
            }
            if secret:
                headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
            return urllib.request.Request(  # noqa: S310 (an http(s) URL: _checked)
                _checked(url), data=body, headers=headers, method="POST"
            )

        return self._deliver(build, timeout)

    def ping(self, url: str, *, timeout: float) -> Delivery:
        """GET a heartbeat URL (Healthchecks and the like accept GET, HEAD and POST)."""

        def build() -> urllib.request.Request:
            headers = {"User-Agent": f"cbr-replicator/{__version__}"}
            return urllib.request.Request(_checked(url), headers=headers, method="GET")  # noqa: S310

        return self._deliver(build, timeout)

    def _deliver(self, build: Callable[[], urllib.request.Request], timeout: float) -> Delivery:
        backoff = self._first_backoff
        result = Delivery(ok=False, tries=0, error="not sent")
        for attempt in range(1, self._tries + 1):
            try:
                request = build()
            except ValueError as error:
                return Delivery(ok=False, tries=attempt, error=str(error), permanent=True)
            result, wait = self._try_once(request, timeout, attempt)
            if result.ok or result.permanent or attempt == self._tries or wait is None:
                return result
            self._sleep(max(backoff, wait))
            backoff *= 2
        return result

    def _try_once(
        self, request: urllib.request.Request, timeout: float, attempt: int
    ) -> tuple[Delivery, float | None]:
        """One request: its outcome, and how long to wait before the next try (None: don't).
        ``timeout`` bounds the whole try (a receiver dripping its answer included)."""
        try:
            with GUARD.bound(timeout) as ticket:
                try:
                    with self._opener.open(request, timeout=timeout) as answer:
                        answer.read(65536)
                        return Delivery(ok=True, tries=attempt, status=answer.status), None
                except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
                    if not ticket.expired:
                        raise
                    # The guard shut its socket down at the deadline: retried like a timeout.
                    timed_out = f"TimeoutError: no whole answer within {timeout:g}s"
                    return Delivery(False, attempt, None, timed_out), 0.0
        except urllib.error.HTTPError as error:
            status = error.code
            retry_after = _retry_after(error.headers.get("Retry-After"))
            failed = Delivery(
                False, attempt, status, f"HTTP {status}", status not in RETRYABLE_STATUS
            )
            if failed.permanent or (retry_after is not None and retry_after > MAX_RETRY_AFTER):
                return failed, None
            return failed, retry_after or 0.0
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            return Delivery(False, attempt, None, f"{type(reason).__name__}: {reason}"), 0.0


class _DeadlineHTTPConnection(http.client.HTTPConnection):
    """Attaches its socket, once connected, to the calling thread's deadline (``deadlines``).
    The socket itself: urllib drops the connection's reference once the headers are in, the
    body is read through the response."""

    def connect(self) -> None:
        super().connect()
        GUARD.attach(SimpleNamespace(sock=self.sock))


class _DeadlineHTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        GUARD.attach(SimpleNamespace(sock=self.sock))


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_DeadlineHTTPConnection, req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_DeadlineHTTPSConnection, req, context=self._context)  # type: ignore[attr-defined]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a place to resend a signed body to."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


def _checked(url: str) -> str:
    """The config allows http(s) URLs only; never let urllib open a file: URL."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("only http:// and https:// URLs are allowed")
    return url


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
