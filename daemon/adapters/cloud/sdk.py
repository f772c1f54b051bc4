"""The SDK's clients: one CBR client per (region, project) with an explicit endpoint and
project id, the IAM client, their HTTP configuration and hooks (the concurrency slot, the
last answer's headers), and small adjustments to the SDK (keep the raw body, skip its model
decoding, the proxy).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from huaweicloudsdkcbr.v1 import CbrClient
from huaweicloudsdkcore.auth.credentials import BasicCredentials, GlobalCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.http.http_handler import HttpHandler
from huaweicloudsdkiam.v3 import IamClient

from daemon import __version__
from daemon.adapters.cloud.classify import parse_retry_after
from daemon.adapters.cloud.http import DeadlineAdapter
from daemon.adapters.cloud.options import CloudOptions, Credentials, cbr_endpoint, iam_endpoint
from daemon.adapters.cloud.ratelimit import AdaptiveRate, ThrottleGate, TokenBucket
from daemon.core.errors import PermanentError, PermissionDeniedError
from daemon.core.model import Vault

VaultIndex: TypeAlias = Mapping[str, tuple[Vault, ...]]
IAM_SCOPE = "iam"  # the scope of IAM calls beside the regions' (one 401 latch each)
ApiCallback = Callable[[str, str], None]


class _LastResponse(threading.local):
    """Headers of the last answer on this thread (the SDK's exceptions carry none)."""

    retry_after: float | None = None
    request_id: str | None = None
    holds_slot: bool = False  # one of the ``concurrency`` slots, from send to answer
    server_date: str | None = None  # the answer's Date header (the gateway's clock)


class SdkClients:
    """The SDK clients and the state they share with the requests sent through them."""

    def __init__(
        self,
        credentials: Credentials,
        options: CloudOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
        on_api_call: ApiCallback | None = None,
        on_retry: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials = credentials
        self._options = options
        self._sleep = sleep
        self._on_api_call = on_api_call
        self._on_retry = on_retry
        self._wall_clock = wall_clock
        self._last = _LastResponse()
        bucket = TokenBucket(options.requests_per_second, clock=clock, sleep=sleep)
        self._rate = AdaptiveRate(bucket, options.requests_per_second)
        self._gate = ThrottleGate(options.throttle_budget.total_seconds(), clock=clock, sleep=sleep)
        self._denied: dict[str, tuple[float, PermissionDeniedError]] = {}
        self._in_flight = threading.BoundedSemaphore(options.concurrency)
        self._clients: dict[tuple[str, str], Any] = {}
        self._projects: dict[tuple[str, str | None], str] = {}
        self._iam: Any = None
        self._vault_listings: dict[tuple[str, str], tuple[float, VaultIndex]] = {}
        self._lock = threading.Lock()
        self._max_pages = options.max_listing_pages
        # The whole of one request, connect to the last byte of the answer (a slow drip
        # never trips the per-read timeout); the lease outlasts it (config check).
        self._request_budget = (options.connect_timeout + options.read_timeout).total_seconds()

    def _take_slot(self) -> None:
        self._in_flight.acquire()
        self._last.holds_slot = True

    def _free_slot(self) -> None:
        if self._last.holds_slot:
            self._last.holds_slot = False
            self._in_flight.release()

    # -- clients ---------------------------------------------------------------------------
    def _cbr(self, region: str, project_id: str) -> Any:
        key = (region, project_id)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._build_cbr_client(region, project_id)
                self._clients[key] = client
        return client

    def _build_cbr_client(self, region: str, project_id: str) -> Any:
        credentials = BasicCredentials(
            self._credentials.access_key.get_secret_value(),
            self._credentials.secret_key.get_secret_value(),
            project_id,  # explicit: never the SDK's silent "{project_id}" fallback
        )
        self._add_token(credentials)
        client = (
            CbrClient.new_builder()
            .with_http_config(self._http_config())
            .with_credentials(credentials)
            .with_endpoint(self._cbr_endpoint(region))
            .with_http_handler(self._http_handler())
            .build()
        )
        self._disable_transport_retries(client)
        _keep_raw_body(client)
        _log_through_root(client)
        return client

    def _iam_client(self) -> Any:
        with self._lock:
            if self._iam is None:
                credentials = GlobalCredentials(
                    self._credentials.access_key.get_secret_value(),
                    self._credentials.secret_key.get_secret_value(),
                    self._credentials.domain_id,
                )
                self._add_token(credentials)
                endpoint = iam_endpoint(self._options)
                self._iam = (
                    IamClient.new_builder()
                    .with_http_config(self._http_config())
                    .with_credentials(credentials)
                    .with_endpoint(endpoint)
                    .with_http_handler(self._http_handler())
                    .build()
                )
                self._disable_transport_retries(self._iam)
                _keep_raw_body(self._iam)
                _log_through_root(self._iam)
            return self._iam

    def _add_token(self, credentials: Any) -> None:
        if self._credentials.security_token is not None:
            credentials.with_security_token(self._credentials.security_token.get_secret_value())

    def _cbr_endpoint(self, region: str) -> str:
        return cbr_endpoint(self._options, region)

    def _endpoint_of(self, scope: str) -> str:
        if scope == IAM_SCOPE:
            return iam_endpoint(self._options)
        return self._cbr_endpoint(scope)

    def endpoints(self, regions: Iterable[str]) -> dict[str, str]:
        """IAM's endpoint and each region's CBR endpoint, as this adapter resolves them (an
        unknown region: the reason instead), for ``check-config --cloud``."""
        resolved = {IAM_SCOPE: iam_endpoint(self._options)}
        for region in regions:
            try:
                resolved[region] = cbr_endpoint(self._options, region)
            except PermanentError as error:
                resolved[region] = f"none ({error})"
        return resolved

    def _http_config(self) -> Any:
        config = HttpConfig.get_default_config()
        config.timeout = (
            self._options.connect_timeout.total_seconds(),
            self._options.read_timeout.total_seconds(),
        )
        config.retry_times = 0
        config.ignore_ssl_verification = not self._options.verify_tls
        config.ssl_ca_cert = self._options.ca_bundle
        config.pool_connections = max(10, self._options.concurrency)
        config.pool_maxsize = max(10, self._options.concurrency)
        config.user_agent = f"cbr-replicator/{__version__}"
        if self._options.proxy:
            _apply_proxy(config, self._options.proxy)
        return config

    def _http_handler(self) -> Any:
        """``cloud.concurrency`` bounds the requests on the wire: a slot is taken after the
        SDK signed the request and freed once the answer is read, so the CPU spent around a
        call (signing, our parse) does not hold one while the latency is the cost."""
        last = self._last

        def take_slot(**_kwargs: Any) -> None:
            self._take_slot()

        def remember_headers(**kwargs: Any) -> None:
            self._free_slot()
            response = kwargs["response"]
            last.retry_after = parse_retry_after(response.headers.get("Retry-After"))
            last.request_id = response.headers.get("X-Request-Id")
            last.server_date = response.headers.get("Date")

        handler = HttpHandler()
        handler._request_handlers = [take_slot]
        # The default handler logs every request line at INFO; ours records headers only.
        handler._response_handlers = [remember_headers]
        return handler

    def _disable_transport_retries(self, client: Any) -> None:
        """Remount the session adapter without urllib3's 429 retry, so a throttled GET
        reaches us as an answer with its ``Retry-After`` header rather than a RetryError
        that lost it. Our own tenacity loop is the only retry.

        The session also stops reading the environment (proxy variables, ``~/.netrc``, CA
        bundle variables): the config alone says how to reach CBR (``cloud.proxy``,
        ``cloud.ca_bundle``), and the look-ups cost CPU on every request."""
        session = getattr(client.get_http_client(), "_session", None)
        if session is None:
            return
        session.trust_env = False
        size = max(10, self._options.concurrency)
        adapter = DeadlineAdapter(pool_connections=size, pool_maxsize=size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        if self._options.proxy:
            # The SDK hands requests its proxy for https:// only; an http:// endpoint (a
            # private cloud, a test) would bypass it. The config names one proxy for both.
            proxy = client.get_http_client().config.get_proxy().get("https")
            session.proxies = {"http": proxy, "https": proxy}


def _keep_raw_body(client: Any) -> None:
    """Skip the SDK's model deserialization: ``wire`` parses every answer once, from
    ``raw_content`` (which the SDK still sets). The SDK's own pass builds a model object per
    field and runs dateutil on every timestamp: it cost more CPU than the rest of a sweep.
    Error answers are unaffected (the SDK raises them before deserializing)."""
    client.deserialize = _no_model


def _no_model(response: Any, response_type: Any, progress_callback: Any) -> None:
    return None


def project_in_region(name: str, region: str) -> bool:
    """Default projects are named like the region; sub-projects ``<region>_<suffix>``."""
    return name == region or name.startswith(f"{region}_")


def _apply_proxy(config: Any, proxy: str) -> None:
    parts = urlsplit(proxy)
    config.proxy_protocol = parts.scheme or "http"
    config.proxy_host = parts.hostname
    config.proxy_port = parts.port
    if parts.username:
        config.proxy_user = parts.username
        config.proxy_password = parts.password or ""


def _log_through_root(client: Any) -> None:
    """Building a client turns propagation off on its logger (``HuaweiCloud-SDK-CbrClient``),
    so its records, having no handler, would be written bare to stderr by logging's last
    resort: neither JSON nor redacted. Hand them back to the root handlers, where the
    daemon's logging renders and redacts them (at WARNING and above)."""
    logging.getLogger(f"HuaweiCloud-SDK-{type(client).__name__}").propagate = True
