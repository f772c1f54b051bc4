"""A ``Cloud`` that reports each request before it is made: the daemon's hang watch counts
them, and refuses new reads once it is stopping."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from daemon.core.model import (
    Backup,
    BackupPage,
    Destination,
    ReplicaSpec,
    ReplicationAccepted,
    Vault,
    VaultReplicationAccepted,
)
from daemon.core.ports import Cloud


class WatchedCloud:
    """``Cloud`` that calls ``on_call(mutating)`` before each request (and each page), which
    may raise to refuse it."""

    def __init__(self, cloud: Cloud, on_call: Callable[[bool], None]) -> None:
        self._cloud = cloud
        self._on_call = on_call

    def resolve_project(self, region: str, project: str | None = None) -> str:
        self._on_call(False)
        return self._cloud.resolve_project(region, project)

    def replication_destinations(self, region: str, project_id: str) -> frozenset[str]:
        self._on_call(False)
        return self._cloud.replication_destinations(region, project_id)

    def find_vault(self, region: str, project_id: str, name_or_id: str) -> Vault:
        self._on_call(False)
        return self._cloud.find_vault(region, project_id, name_or_id)

    def list_backup_pages(
        self, region: str, project_id: str, vault_id: str | None
    ) -> Iterator[BackupPage]:
        self._on_call(False)
        for page in self._cloud.list_backup_pages(region, project_id, vault_id):
            yield page
            self._on_call(False)  # before the next page is fetched

    def show_backup(self, region: str, project_id: str, backup_id: str) -> Backup:
        self._on_call(False)
        return self._cloud.show_backup(region, project_id, backup_id)

    def replicate_backup(
        self,
        region: str,
        project_id: str,
        backup_id: str,
        destination: Destination,
        replica: ReplicaSpec,
    ) -> ReplicationAccepted:
        self._on_call(True)
        return self._cloud.replicate_backup(region, project_id, backup_id, destination, replica)

    def replicate_vault(
        self,
        region: str,
        project_id: str,
        vault_id: str,
        destination: Destination,
        enable_acceleration: bool,
    ) -> VaultReplicationAccepted:
        self._on_call(True)
        return self._cloud.replicate_vault(
            region, project_id, vault_id, destination, enable_acceleration
        )
