"""The ``Cloud`` port over the official Huawei Cloud SDK (``huaweicloudsdkcbr``, ``...iam``).

The cloud adapter (the only package that imports the SDK) owns: one CBR client per (region,
project) with an explicit endpoint and project id (``sdk``); project resolution through IAM
and pagination (here); the client-side rate limit and concurrency cap, tenacity retries for
reads, never for POSTs (``transport``); and the one function that classifies SDK errors into
``core.errors`` (``classify``). Answers are parsed from the raw body by ``wire`` into our own
frozen types; no SDK object leaves the package.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import structlog
from huaweicloudsdkcbr.v1 import (
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
from huaweicloudsdkiam.v3 import KeystoneListProjectsRequest

from daemon.adapters.cloud import wire
from daemon.adapters.cloud.sdk import IAM_SCOPE, VaultIndex, project_in_region
from daemon.adapters.cloud.transport import SdkTransport
from daemon.core.errors import AmbiguousError, MalformedAnswerError, NotFoundError, PermanentError
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
LISTING_WINDOW = 4  # pages of one vault read at once when it holds more
PROJECT_LISTING_WINDOW = 8  # pages of a whole project's listing read at once
VAULT_LISTING_TTL = 60.0  # seconds a project's vault listing answers find_vault


class HuaweiCloud(SdkTransport):
    """``core.ports.Cloud`` on the official SDK."""

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
            if name == wanted and project_in_region(name, region):
                return project_id
        if project is not None:
            # Maybe an id: list the account's projects and match it within the region.
            for project_id, name in self._list_projects(name=None):
                if project_id == project and project_in_region(name, region):
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

    def _listed_vaults(self, region: str, project_id: str) -> VaultIndex:
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
