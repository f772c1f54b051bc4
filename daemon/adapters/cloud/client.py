"""The ``Cloud`` port over the official Huawei Cloud SDK (``huaweicloudsdkcbr``, ``...iam``).

The only module that imports the SDK. It owns: one CBR client per (region, project) with an
explicit endpoint and project id; project resolution through IAM; pagination; the client-side
rate limit and concurrency cap; tenacity retries for reads (never for POSTs); and the one
function that classifies SDK errors into ``daemon.errors``. Answers are parsed from the raw
body by ``daemon.wire`` into our own frozen types; no SDK object leaves this module.
"""

from __future__ import annotations

import email.utils
import functools
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

import requests
import structlog
from huaweicloudsdkcbr.v1 import (
    CbrClient,
    CopyBackupRequest,
    CopyCheckpointRequest,
    ListBackupsRequest,
    ListVaultRequest,
    ShowBackupRequest,
    ShowReplicationCapabilitiesRequest,
    ShowVaultRequest,
)
from huaweicloudsdkcbr.v1.model import (
    BackupReplicateReq,
    BackupReplicateReqBody,
    CheckpointReplicateParam,
    CheckpointReplicateReq,
)
from huaweicloudsdkcbr.v1.region.cbr_region import CbrRegion
from huaweicloudsdkcore.auth.credentials import BasicCredentials, GlobalCredentials
from huaweicloudsdkcore.exceptions import exceptions as sdk_errors
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.http.http_handler import HttpHandler
from huaweicloudsdkiam.v3 import IamClient, KeystoneListProjectsRequest
from pydantic import SecretStr
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from daemon import __version__
from daemon.adapters.cloud import wire
from daemon.adapters.cloud.ratelimit import (
    SUSTAINED_STREAK,
    AdaptiveRate,
    ThrottleGate,
    TokenBucket,
)
from daemon.adapters.deadlines import GUARD
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
    ThrottledError,
    TransientError,
)
from daemon.core.model import (
    Backup,
    BackupPage,
    Destination,
    ReplicaSpec,
    ReplicationAccepted,
    Vault,
    VaultReplicationAccepted,
)

log = structlog.get_logger("cbr_replicator")

PAGE_SIZE = 1000  # the API's maximum ``limit``
# Newest first, ties by id: an explicit, total order, so offset paging is stable (the
# default order is undocumented). Backups made during a listing shift it down (a page may
# repeat the end of the last one, dropped); retention deletes the oldest, past the pages read.
LISTING_SORT = "created_at:desc,id:desc"
MAX_LISTING_PAGES = 1000  # pages one listing may take in one sweep (cloud.max_listing_pages)
LISTING_WINDOW = 4  # pages of one vault read at once when it holds more
PROJECT_LISTING_WINDOW = 8  # pages of a whole project's listing read at once
_VaultIndex: TypeAlias = Mapping[str, tuple[Vault, ...]]
VAULT_LISTING_TTL = 60.0  # seconds a project's vault listing answers find_vault
IAM_SCOPE = "iam"  # the scope of IAM calls beside the regions' (one 401 latch each)
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

T = TypeVar("T")
ApiCallback = Callable[[str, str], None]


@dataclass(frozen=True)
class Credentials:
    """AK/SK (and an optional temporary token), only ever handed to the SDK."""

    access_key: SecretStr
    secret_key: SecretStr
    security_token: SecretStr | None = None
    domain_id: str | None = None


@dataclass(frozen=True)
class CloudOptions:
    """How to reach the cloud: endpoints, TLS, timeouts and limits."""

    cbr_endpoints: dict[str, str]  # region -> URL overrides
    iam_endpoint: str | None = None
    projects: dict[str, str] | None = None  # region -> project id, skipping IAM
    verify_tls: bool = True
    ca_bundle: str | None = None
    proxy: str | None = None
    connect_timeout: timedelta = timedelta(seconds=10)
    read_timeout: timedelta = timedelta(seconds=30)
    requests_per_second: float = 10.0
    concurrency: int = 8
    read_attempts: int = 5
    read_retry_budget: timedelta = timedelta(seconds=120)
    max_listing_pages: int = MAX_LISTING_PAGES
    all_regions_endpoint: str | None = None  # the emulator serves every region and IAM
    site: str = "international"  # a key of SITES: the endpoint patterns
    throttle_budget: timedelta = timedelta(minutes=10)  # throttled this long: give up
    mutation_throttle_wait: timedelta = timedelta(seconds=40)  # a POST's longest gate wait


class _LastResponse(threading.local):
    """Headers of the last answer on this thread (the SDK's exceptions carry none)."""

    retry_after: float | None = None
    request_id: str | None = None
    holds_slot: bool = False  # one of the ``concurrency`` slots, from send to answer
    server_date: str | None = None  # the answer's Date header (the gateway's clock)


def _parse_retry_after(value: str | None) -> float | None:
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


class HuaweiCloud:
    """``daemon.ports.Cloud`` on the official SDK."""

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
        self._vault_listings: dict[tuple[str, str], tuple[float, _VaultIndex]] = {}
        self._lock = threading.Lock()
        self._max_pages = options.max_listing_pages
        # The whole of one request, connect to the last byte of the answer (a slow drip
        # never trips the per-read timeout); the lease outlasts it (config check).
        self._request_budget = (options.connect_timeout + options.read_timeout).total_seconds()

    # -- resolution ------------------------------------------------------------------------
    def resolve_project(self, region: str, project: str | None = None) -> str:
        key = (region, project)
        with self._lock:
            cached = self._projects.get(key)
        if cached is not None:
            return cached
        project_id = self._lookup_project(region, project)
        with self._lock:
            self._projects[key] = project_id
        return project_id

    def _lookup_project(self, region: str, project: str | None) -> str:
        configured = (self._options.projects or {}).get(region)
        if project is None and configured:
            return configured
        wanted = project or region
        by_name = self._list_projects(name=wanted)
        for project_id, name in by_name:
            if name == wanted and _project_in_region(name, region):
                return project_id
        if project is not None:
            # Maybe an id: list the account's projects and match it within the region.
            for project_id, name in self._list_projects(name=None):
                if project_id == project and _project_in_region(name, region):
                    return project_id
        what = f"project {project!r}" if project else "the default project"
        raise NotFoundError(f"{what} not found in region {region}", code="project_not_found")

    def _list_projects(self, name: str | None) -> list[tuple[str, str]]:
        request = KeystoneListProjectsRequest(name=name) if name else KeystoneListProjectsRequest()
        body = self._read(
            "iam_list_projects",
            lambda: self._iam_client().keystone_list_projects(request),
            scope=IAM_SCOPE,
        )
        return wire.parse_projects(body, "KeystoneListProjects")

    def replication_destinations(self, region: str, project_id: str) -> frozenset[str]:
        client = self._cbr(region, project_id)
        body = self._read(
            "replication_capabilities",
            lambda: client.show_replication_capabilities(ShowReplicationCapabilitiesRequest()),
            scope=region,
        )
        return wire.parse_destinations(body, region, "ShowReplicationCapabilities")

    def find_vault(self, region: str, project_id: str, name_or_id: str) -> Vault:
        """From the project's vault listing (one call per 1,000 vaults, reused for
        ``VAULT_LISTING_TTL``), so a policy naming 1,000 vaults costs one call, not 1,000; a
        vault missing from the listing (made since) is looked up directly."""
        listed = self._listed_vaults(region, project_id).get(name_or_id, ())
        if len(listed) == 1:
            return listed[0]
        if len(listed) > 1:
            raise PermanentError(
                f"vault name {name_or_id!r} is ambiguous in {region}; use its id",
                code="vault_ambiguous",
            )
        client = self._cbr(region, project_id)
        body = self._read(
            "list_vaults",
            lambda: client.list_vault(ListVaultRequest(name=name_or_id, limit=PAGE_SIZE)),
            scope=region,
        )
        vaults = wire.require(body, "vaults", list, "ListVault")
        named = [wire.parse_vault(v, region, "ListVault") for v in vaults]
        exact = [vault for vault in named if name_or_id in (vault.name, vault.id)]
        if len(exact) == 1:
            return exact[0]
        if len(exact) > 1:
            raise PermanentError(
                f"vault name {name_or_id!r} is ambiguous in {region}; use its id",
                code="vault_ambiguous",
            )
        return self.show_vault(region, project_id, name_or_id)

    def _listed_vaults(self, region: str, project_id: str) -> _VaultIndex:
        """The project's vaults by name and by id (a dict: a policy of 5,000 vaults looked
        each up in a list of 5,000, 25 million comparisons)."""
        key = (region, project_id)
        with self._lock:
            cached = self._vault_listings.get(key)
        if cached is not None and time.monotonic() - cached[0] < VAULT_LISTING_TTL:
            return cached[1]
        client = self._cbr(region, project_id)
        vaults: list[Vault] = []
        bound = _ListingBound(f"the vault listing of project {project_id}", self._max_pages)
        while True:
            request = ListVaultRequest(limit=PAGE_SIZE, offset=len(vaults))
            body = self._read(
                "list_vaults", functools.partial(client.list_vault, request), scope=region
            )
            items = wire.require(body, "vaults", list, "ListVault")
            page = [wire.parse_vault(item, region, "ListVault") for item in items]
            vaults.extend(page)
            if len(items) < PAGE_SIZE:  # a short page ends it; ``count`` alone never does
                break
            bound.check([vault.id for vault in page], None)
        index: dict[str, tuple[Vault, ...]] = {}
        for vault in vaults:
            index[vault.name] = (*index.get(vault.name, ()), vault)
            if vault.id != vault.name:
                index[vault.id] = (*index.get(vault.id, ()), vault)
        with self._lock:
            self._vault_listings[key] = (time.monotonic(), index)
        return index

    def show_vault(self, region: str, project_id: str, vault_id: str) -> Vault:
        client = self._cbr(region, project_id)
        try:
            body = self._read(
                "show_vault",
                lambda: client.show_vault(ShowVaultRequest(vault_id=vault_id)),
                scope=region,
            )
        except NotFoundError:
            raise NotFoundError(
                f"vault {vault_id!r} not found in {region}", code="vault_not_found"
            ) from None
        return wire.parse_vault(wire.require(body, "vault", dict, "ShowVault"), region, "ShowVault")

    # -- backups ---------------------------------------------------------------------------
    def list_backup_pages(
        self,
        region: str,
        project_id: str,
        vault_id: str | None,
        *,
        resource_type: str | None = None,
    ) -> Iterator[BackupPage]:
        """Pages of ``limit=1000`` by ``offset``, of one vault or (``vault_id`` None) of the
        whole project. Backups added meanwhile shift the listing (newest first) down, so the
        next page may repeat the end of the last one: ids of the previous page are dropped.
        Only that page's ids are kept, so memory stays flat however large the listing; a
        repeat from further back is harmless (decided twice)."""
        seen: set[str] = set()
        for page in self._backup_pages(region, project_id, vault_id, resource_type):
            fresh = page.without(seen)
            seen = set(page.ids)
            if fresh:
                yield fresh

    def _backup_pages(
        self, region: str, project_id: str, vault_id: str | None, resource_type: str | None
    ) -> Iterator[BackupPage]:
        """The listing's pages in order. A listing of more than ``LISTING_WINDOW`` pages (by
        the count of its first page) is read that many pages at a time, so a huge vault takes
        a fraction of one round trip per page; memory stays bounded by the window."""
        client = self._cbr(region, project_id)

        def fetch(offset: int) -> tuple[BackupPage, int | None, int]:
            request = ListBackupsRequest(
                vault_id=vault_id,
                limit=PAGE_SIZE,
                offset=offset,
                sort=LISTING_SORT,
                show_replication=True,
                resource_type=resource_type,
            )
            body = self._read_as(
                "list_backups",
                functools.partial(client.list_backups, request),
                wire.parse_backup_listing,
                scope=region,
            )
            skipped: list[MalformedAnswerError] = []
            page, count = wire.listing_page(body, "ListBackups", skipped)
            for error in skipped:  # the others of the page go on; this one waits for a fix
                log.warning("malformed_backup_skipped", vault=vault_id or "*", error=str(error))
            return page, count, len(page) + len(skipped)

        # A project's listing is its sweep's only one: it reads more pages at once.
        window = min(
            LISTING_WINDOW if vault_id else PROJECT_LISTING_WINDOW, self._options.concurrency
        )
        ahead: deque[Future[tuple[BackupPage, int | None, int]]] = deque()
        pool: ThreadPoolExecutor | None = None
        offset = requested = 0  # offset of the page read next; first offset not yet asked for
        listing = f"vault {vault_id}" if vault_id else f"the backups of project {project_id}"
        bound = _ListingBound(listing, self._max_pages)
        try:
            while True:
                if ahead:
                    page, count, size = ahead.popleft().result()
                else:
                    page, count, size = fetch(offset)
                    requested = offset + PAGE_SIZE
                offset += PAGE_SIZE
                # A short (or empty) page ends the listing. ``count`` is only "number of
                # backups": a full page is followed by another even when ``count`` says
                # that was all (a server may count the page, not the listing).
                last = size < PAGE_SIZE
                if not last:
                    bound.check(page.ids, count)
                if not last and count is not None and count > window * PAGE_SIZE > PAGE_SIZE:
                    pool = pool or ThreadPoolExecutor(window, thread_name_prefix="listing")
                    while len(ahead) < window and requested < count:
                        ahead.append(pool.submit(fetch, requested))
                        requested += PAGE_SIZE
                yield page
                if last:
                    return
        finally:
            for future in ahead:
                future.cancel()
            if pool is not None:
                pool.shutdown(wait=True)

    def show_backup(self, region: str, project_id: str, backup_id: str) -> Backup:
        client = self._cbr(region, project_id)
        body = self._read(
            "show_backup",
            lambda: client.show_backup(ShowBackupRequest(backup_id=backup_id)),
            scope=region,
        )
        return wire.parse_backup(wire.require(body, "backup", dict, "ShowBackup"), "ShowBackup")

    # -- mutations (never retried here: the queue reconciles first) --------------------------
    def replicate_backup(
        self,
        region: str,
        project_id: str,
        backup_id: str,
        destination: Destination,
        replica: ReplicaSpec,
    ) -> ReplicationAccepted:
        client = self._cbr(region, project_id)
        body = BackupReplicateReq(
            replicate=BackupReplicateReqBody(
                destination_project_id=destination.project_id,
                destination_region=destination.region,
                destination_vault_id=destination.vault_id,
                enable_acceleration=replica.enable_acceleration,
                name=replica.name,
                description=replica.description,
            )
        )
        request = CopyBackupRequest(backup_id=backup_id, body=body)
        answer = self._call(
            "replicate_backup", lambda: client.copy_backup(request), mutating=True, scope=region
        )
        try:
            replication = wire.require(answer, "replication", dict, "CopyBackup")
            record_id = wire.require(replication, "replication_record_id", str, "CopyBackup")
        except MalformedAnswerError as error:
            raise AmbiguousError(f"malformed answer to replicate: {error}") from None
        return ReplicationAccepted(
            replication_record_id=record_id, request_id=self._last.request_id
        )

    def replicate_vault(
        self,
        region: str,
        project_id: str,
        vault_id: str,
        destination: Destination,
        enable_acceleration: bool,
    ) -> VaultReplicationAccepted:
        client = self._cbr(region, project_id)
        body = CheckpointReplicateReq(
            replicate=CheckpointReplicateParam(
                vault_id=vault_id,
                destination_vault_id=destination.vault_id,
                destination_region=destination.region,
                destination_project_id=destination.project_id,
                auto_trigger=False,
                enable_acceleration=enable_acceleration,
            )
        )
        request = CopyCheckpointRequest(body=body)
        answer = self._call(
            "replicate_vault", lambda: client.copy_checkpoint(request), mutating=True, scope=region
        )
        try:
            replication = wire.require(answer, "replication", dict, "CopyCheckpoint")
            started = wire.optional(replication, "backups", list, "CopyCheckpoint") or []
            records = {
                wire.require(item, "backup_id", str, "CopyCheckpoint"): wire.require(
                    item, "replication_record_id", str, "CopyCheckpoint"
                )
                for item in started
                if isinstance(item, dict)
            }
        except MalformedAnswerError as error:
            raise AmbiguousError(f"malformed answer to vault replicate: {error}") from None
        return VaultReplicationAccepted(records=records, request_id=self._last.request_id)

    # -- calls -----------------------------------------------------------------------------
    def _read(self, operation: str, call: Callable[[], Any], *, scope: str) -> wire.JsonObject:
        return self._read_as(operation, call, wire.parse_body, scope=scope)

    def _read_as(
        self,
        operation: str,
        call: Callable[[], Any],
        parse: Callable[[Any, str], T],
        *,
        scope: str,
    ) -> T:
        """A read, retried on transient errors and malformed answers with full jitter,
        honouring Retry-After, within a capped number of attempts and total time. Throttling
        is waited out inside ``_exchange`` (the shared gate), not here."""
        retrying = Retrying(
            stop=stop_after_attempt(self._options.read_attempts)
            | stop_after_delay(self._options.read_retry_budget.total_seconds()),
            wait=self._read_wait,
            retry=retry_if_exception_type((TransientError, MalformedAnswerError))
            & retry_if_not_exception_type(ThrottledError),
            sleep=self._sleep,
            before_sleep=lambda _state: self._on_retry and self._on_retry(operation),
            reraise=True,
        )
        parsed: T = retrying(self._exchange, operation, call, parse, mutating=False, scope=scope)
        return parsed

    @staticmethod
    def _read_wait(state: RetryCallState) -> float:
        backoff = float(wait_random_exponential(multiplier=0.5, max=30)(state))
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        return max(backoff, float(retry_after)) if retry_after else backoff

    def _call(
        self, operation: str, call: Callable[[], Any], *, mutating: bool, scope: str
    ) -> wire.JsonObject:
        return self._exchange(operation, call, wire.parse_body, mutating=mutating, scope=scope)

    def _exchange(
        self,
        operation: str,
        call: Callable[[], Any],
        parse: Callable[[Any, str], T],
        *,
        mutating: bool,
        scope: str,
    ) -> T:
        """One call, sent again while the gateway throttles it (a 429 was not applied, so
        this holds for a POST too) until the shared gate gives up. A POST waits for the
        gate at most ``mutation_throttle_wait``: its job's lease must outlast it."""
        self._refuse_if_denied(scope)
        deadline = (
            self._gate.now() + self._options.mutation_throttle_wait.total_seconds()
            if mutating
            else None
        )
        while True:
            self._rate.acquire()
            if not self._gate.admit(deadline):
                error = self._throttled_error(operation)
                self._report(operation, error.__class__.__name__)
                raise error
            sent_at = self._gate.now()
            try:
                body = self._send(operation, call, parse, mutating=mutating, scope=scope)
            except TransientError as error:
                if not is_throttled(error):
                    self._gate.succeeded()
                    raise
                streak = self._gate.throttled(sent_at, error.retry_after)
                if streak == SUSTAINED_STREAK:  # once per episode, only when it lasts
                    self._rate.throttled()
                if streak:
                    log.warning(
                        "throttled",
                        operation=operation,
                        code=error.code,
                        rate=round(self._rate.rate, 2),
                    )
                continue
            except BaseException:
                self._gate.succeeded()  # not throttled; a probe's answer frees the others
                raise
            self._gate.succeeded()
            self._rate.succeeded()
            return body

    def _throttled_error(self, operation: str) -> TransientError:
        """Throttled past the budget (ThrottledError: the run gives up), or a POST that may
        wait no longer (TransientError: that job is deferred, the others go on)."""
        if self._gate.exhausted():
            budget = int(self._options.throttle_budget.total_seconds())
            return ThrottledError(
                f"{operation}: throttled by the API gateway (429) for longer than "
                f"cloud.throttle_budget ({budget}s); nothing was applied",
                code="APIGW.0308",
                status=429,
            )
        wait = int(self._options.mutation_throttle_wait.total_seconds())
        return TransientError(
            f"{operation}: throttled by the API gateway (429) for longer than a POST may "
            f"wait ({wait}s); not applied",
            code="APIGW.0308",
            status=429,
        )

    def _send(
        self,
        operation: str,
        call: Callable[[], Any],
        parse: Callable[[Any, str], T],
        *,
        mutating: bool,
        scope: str,
    ) -> T:
        last = self._last
        last.retry_after = None
        last.request_id = None
        last.server_date = None
        budget = self._request_budget
        try:
            with GUARD.bound(budget) as ticket:
                try:
                    response = call()
                except Exception:
                    if not ticket.expired:
                        raise
                    # Its sockets were shut down at the deadline: a read timeout, however
                    # the interrupted read failed (sent, maybe applied, for a POST).
                    raise requests.ReadTimeout(
                        f"no whole answer within {budget:g}s "
                        "(cloud.connect_timeout + cloud.timeout)"
                    ) from None
            _refuse_redirect(response)
            body = parse(getattr(response, "raw_content", None), operation)
        except Exception as error:
            untrusted = untrusted_endpoint(error)
            if untrusted is not None:
                self._report(operation, "ConfigError")
                raise untrusted from None
            classified = classify_error(error, mutating=mutating, retry_after=last.retry_after)
            classified = self._explain(classified, scope, last.server_date)
            self._report(operation, classified.__class__.__name__)
            raise classified from None
        finally:
            self._free_slot()  # if the SDK failed between sending and the answer's hook
        self._report(operation, "ok")
        return body

    def _explain(self, error: CloudError, scope: str, server_date: str | None) -> CloudError:
        """Add what the caller needs to act: the endpoint of a "no such API", the clock of a
        refused signature; and latch a 401 so this scope is not asked again."""
        if isinstance(error, EndpointError):
            endpoint = self._endpoint_of(scope)
            return EndpointError(
                f"{endpoint} serves no such API ({error}): check cloud.site and "
                f"cloud.endpoints for {scope}",
                code=error.code,
                status=error.status,
                request_id=error.request_id,
            )
        if isinstance(error, PermissionDeniedError) and error.status == 401:
            hint = clock_hint(str(error), server_date, self._wall_clock())
            if hint:
                error = PermissionDeniedError(
                    f"{error}; {hint}",
                    code=error.code,
                    status=error.status,
                    request_id=error.request_id,
                )
            with self._lock:
                self._denied[scope] = (self._gate.now(), error)
        return error

    def _refuse_if_denied(self, scope: str) -> None:
        """After a 401, this process sends nothing more to that scope for a while: the
        gateway locks an access key after a few failed signatures in a row."""
        with self._lock:
            denied = self._denied.get(scope)
            if denied is None:
                return
            if self._gate.now() - denied[0] >= DENIED_RESPITE:
                del self._denied[scope]
                return
        error = denied[1]
        raise PermissionDeniedError(
            f"not sent: {scope} refused this process's signature earlier ({error})",
            code=error.code,
            status=error.status,
            request_id=error.request_id,
        )

    def _take_slot(self) -> None:
        self._in_flight.acquire()
        self._last.holds_slot = True

    def _free_slot(self) -> None:
        if self._last.holds_slot:
            self._last.holds_slot = False
            self._in_flight.release()

    def _report(self, operation: str, outcome: str) -> None:
        if self._on_api_call is not None:
            self._on_api_call(operation, outcome)

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
            last.retry_after = _parse_retry_after(response.headers.get("Retry-After"))
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
        adapter = _DeadlineAdapter(pool_connections=size, pool_maxsize=size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        if self._options.proxy:
            # The SDK hands requests its proxy for https:// only; an http:// endpoint (a
            # private cloud, a test) would bypass it. The config names one proxy for both.
            proxy = client.get_http_client().config.get_proxy().get("https")
            session.proxies = {"http": proxy, "https": proxy}


class _DeadlineHTTPConnection(HTTPConnection):
    """Attaches itself to the calling thread's request deadline (``daemon.deadlines``)."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        GUARD.attach(self)
        super().request(*args, **kwargs)


class _DeadlineHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        GUARD.attach(self)
        super().request(*args, **kwargs)


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


_DEADLINE_POOLS = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections (direct or through the proxy) take part in each
    request's total deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _DEADLINE_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _DEADLINE_POOLS
        return manager


def _refuse_redirect(response: Any) -> None:
    """The SDK raises for 4xx and 5xx only: a 3xx (a captive portal, a wrong endpoint) would
    pass as the API's answer, its body read as a listing. It is no answer of the API."""
    status = getattr(response, "status_code", None)
    if isinstance(status, int) and not 200 <= status < 300:
        raise MalformedAnswerError(
            f"HTTP {status} instead of the API's answer (a redirect: check the endpoint and "
            "any proxy in between)",
            code="unexpected_status",
            status=status,
        )


class _ListingBound:
    """Ends a listing that would never end: full pages repeating earlier ones (a server
    ignoring ``offset``), more full pages than ``most`` (endless fresh pages), or a ``count``
    promising more than that. Keeps one hash per page read.

    A page may repeat an earlier one legitimately, once in a while: exactly a page of new
    backups made between two reads shifts the listing by a whole page. A server ignoring
    ``offset`` repeats it every time: the third repeat ends the listing."""

    REPEATS_TOLERATED = 2

    def __init__(self, listing: str, most: int) -> None:
        self._listing = listing
        self._most = most
        self._pages = 0
        self._repeats = 0
        self._seen: set[int] = set()

    def check(self, ids: Sequence[str], count: int | None) -> None:
        """After each full page; raises for the listing (its vault fails, the rest go on)."""
        self._pages += 1
        fingerprint = hash(tuple(ids))
        self._repeats += fingerprint in self._seen
        if self._repeats > self.REPEATS_TOLERATED:
            raise MalformedAnswerError(
                f"{self._listing}: page {self._pages} repeats an earlier page (same ids), "
                f"{self._repeats} pages did; the server seems to ignore offset, so the listing "
                "would never end",
                code="listing_repeats",
            )
        self._seen.add(fingerprint)
        if self._pages > self._most or (count is not None and count > self._most * PAGE_SIZE):
            raise PermanentError(
                f"{self._listing}: more than {self._most} pages of {PAGE_SIZE} "
                f"(cloud.max_listing_pages){f'; count says {count}' if count else ''}; "
                "stopped there. Raise cloud.max_listing_pages if it is really that long",
                code="listing_too_long",
            )


def _keep_raw_body(client: Any) -> None:
    """Skip the SDK's model deserialization: ``daemon.wire`` parses every answer once, from
    ``raw_content`` (which the SDK still sets). The SDK's own pass builds a model object per
    field and runs dateutil on every timestamp: it cost more CPU than the rest of a sweep.
    Error answers are unaffected (the SDK raises them before deserializing)."""
    client.deserialize = _no_model


def _no_model(response: Any, response_type: Any, progress_callback: Any) -> None:
    return None


def _project_in_region(name: str, region: str) -> bool:
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


@dataclass(frozen=True)
class Site:
    """Where one cloud's endpoints are: IAM's, and CBR's per region."""

    iam: str
    cbr: str  # with {region}
    regions: frozenset[str] | None = None  # None: the SDK's CBR table


# The SDK's tables know Huawei Cloud's international site only (docs/design.md §16); its
# eu-west-101 entry points at the international domain, so the European site has its own.
SITES: Mapping[str, Site] = {
    "international": Site(
        "https://iam.myhuaweicloud.com", "https://cbr.{region}.myhuaweicloud.com"
    ),
    "europe": Site(
        "https://iam.myhuaweicloud.eu",
        "https://cbr.{region}.myhuaweicloud.eu",
        frozenset({"eu-west-101"}),
    ),
    "otc": Site(
        "https://iam.eu-de.otc.t-systems.com",
        "https://cbr.{region}.otc.t-systems.com",
        frozenset({"eu-de", "eu-nl"}),
    ),
}


def site_regions(name: str) -> frozenset[str]:
    site = SITES[name]
    if site.regions is not None:
        return site.regions
    others = {region for other in SITES.values() if other.regions for region in other.regions}
    return frozenset(CbrRegion.static_fields) - others


def iam_endpoint(options: CloudOptions) -> str:
    return options.iam_endpoint or options.all_regions_endpoint or SITES[options.site].iam


def cbr_endpoint(options: CloudOptions, region: str) -> str:
    """An explicit endpoint, else the site's pattern for a region the site has."""
    override = options.cbr_endpoints.get(region) or options.all_regions_endpoint
    if override:
        return override
    if region not in site_regions(options.site):
        home = [name for name in SITES if region in site_regions(name)]
        where = f"; it is a region of cloud.site {home[0]!r}" if home else ""
        raise PermanentError(
            f"no CBR endpoint known for region {region!r} on cloud.site {options.site!r}"
            f"{where}; set cloud.site or cloud.endpoints.cbr.{region}",
            code="unknown_region",
        )
    return SITES[options.site].cbr.format(region=region)


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
