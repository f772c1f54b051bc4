"""Plain-value builders for the pure core's tests (backups, records, jobs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.core.model import (
    ECS_RESOURCE_TYPE,
    Backup,
    Job,
    JobState,
    Origin,
    RecordStatus,
    ReplicationRecord,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
REGION = "eu-west-101"
OTHER_REGION = "eu-west-0"
SOURCE_REGION = "eu-west-1"


def record(
    status: RecordStatus | str,
    *,
    record_id: str = "rec-1",
    region: str = REGION,
    age: timedelta | None = timedelta(hours=1),
    **fields: Any,
) -> ReplicationRecord:
    """A replication record to ``region`` created ``age`` before NOW (undated when None)."""
    created = None if age is None else NOW - age
    return ReplicationRecord(
        id=record_id,
        status=str(status),
        destination_region=region,
        created_at=created,
        **fields,
    )


def backup(*records: ReplicationRecord, **fields: Any) -> Backup:
    """An eligible server backup with a system disk, unless ``fields`` say otherwise."""
    values: dict[str, Any] = {
        "id": "b-1",
        "name": "web-01",
        "vault_id": "v-1",
        "resource_type": ECS_RESOURCE_TYPE,
        "image_type": "backup",
        "status": "available",
        "contain_system_disk": True,
        "replication_records": records,
    }
    values.update(fields)
    return Backup(**values)


def job(state: JobState, **fields: Any) -> Job:
    """A policy job for b-1 to REGION in ``state``."""
    values: dict[str, Any] = {
        "source_backup_id": "b-1",
        "destination_region": REGION,
        "state": state,
        "origin": Origin.POLICY,
        "policy": "nightly",
        "source_region": SOURCE_REGION,
        "source_project_id": "p-src",
        "source_vault_id": "v-1",
        "destination_project_id": "p-dst",
        "destination_vault_id": "v-dst",
    }
    values.update(fields)
    return Job(**values)
