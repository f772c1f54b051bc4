"""The ledger's tables, as SQLModel rows, and the migrations that bring an older ledger to
them: one function per schema version, applied in order."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Dialect,
    Index,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 4


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, whatever the database keeps (SQLite keeps text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        value = value.astimezone(UTC)
        # SQLite compares the stored text; one representation keeps that order right.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(*, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=True, index=index))


class JobRow(SQLModel, table=True):
    __tablename__: ClassVar[str] = "jobs"
    __table_args__ = (
        UniqueConstraint("source_backup_id", "destination_region", name="uq_jobs_backup_region"),
        Index("ix_jobs_due", "state", "next_attempt_at"),
        # A policy's jobs by state, in backup order: the RPO window's newest replicated and
        # oldest waiting backup are one index seek each, not a scan of the policy's jobs
        # (schema version 4; it replaced an index on the policy alone).
        Index("ix_jobs_policy_state", "policy", "state", "backup_created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    source_backup_id: str = Field(max_length=64)
    destination_region: str = Field(max_length=64)
    state: str = Field(max_length=16)
    origin: str = Field(max_length=16)
    policy: str | None = Field(default=None, max_length=64)
    source_region: str = Field(max_length=64)
    source_project_id: str = Field(max_length=64)
    source_vault_id: str = Field(max_length=64)
    destination_project_id: str = Field(max_length=64)
    destination_vault_id: str = Field(max_length=64)
    backup_name: str = Field(default="", max_length=255)
    backup_created_at: datetime | None = _when()
    bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    attempts: int = 0
    next_attempt_at: datetime | None = _when()
    last_error_code: str | None = Field(default=None, max_length=64)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    replication_record_id: str | None = Field(default=None, max_length=64)
    replica_backup_id: str | None = Field(default=None, max_length=64)
    replica_name: str | None = Field(default=None, max_length=64)
    replica_description: str | None = Field(default=None, max_length=255)
    lease_owner: str | None = Field(default=None, max_length=255)
    lease_expires_at: datetime | None = _when()
    created_at: datetime | None = _when()
    updated_at: datetime | None = _when()
    finished_at: datetime | None = _when(index=True)


class AttemptRow(SQLModel, table=True):
    __tablename__: ClassVar[str] = "attempts"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    at: datetime | None = _when()
    outcome: str = Field(max_length=32)
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    request_id: str | None = Field(default=None, max_length=128)


class BindingRow(SQLModel, table=True):
    """Once-only: never updated (but intent -> bound) and never deleted (but an intent
    whose POST the cloud refused)."""

    __tablename__: ClassVar[str] = "vault_bindings"
    __table_args__ = (
        UniqueConstraint("source_vault_id", "destination_region", name="uq_bindings_vault_region"),
    )

    id: int | None = Field(default=None, primary_key=True)
    source_vault_id: str = Field(max_length=64)
    destination_region: str = Field(max_length=64)
    destination_project_id: str = Field(max_length=64)
    destination_vault_id: str = Field(max_length=64)
    origin: str = Field(max_length=80)
    created_at: datetime | None = _when()
    source_region: str = Field(default="", max_length=64)
    state: str = Field(default="bound", max_length=16)
    source_vault_name: str = Field(default="", max_length=255, index=True)


class SweepRow(SQLModel, table=True):
    __tablename__: ClassVar[str] = "sweeps"

    id: int | None = Field(default=None, primary_key=True)
    policy: str = Field(max_length=64, index=True)
    started_at: datetime | None = _when()
    finished_at: datetime | None = _when()
    backups_seen: int = 0
    reasons: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    enqueued: int = 0
    adopted: int = 0
    submitted: int = 0
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error_reason: str | None = Field(default=None, max_length=64)


class LeaseRow(SQLModel, table=True):
    __tablename__: ClassVar[str] = "leases"

    name: str = Field(primary_key=True, max_length=128)
    owner: str = Field(max_length=255)
    expires_at: datetime | None = _when()


class InstanceRow(SQLModel, table=True):
    """Added in schema version 2: which processes use this ledger (``status``)."""

    __tablename__: ClassVar[str] = "instances"

    owner: str = Field(primary_key=True, max_length=255)
    role: str = Field(max_length=16)
    started_at: datetime | None = _when()
    last_seen_at: datetime | None = _when(index=True)


class AlertRow(SQLModel, table=True):
    """Added in schema version 3: the last recorded state of each alert subject.

    A subject in state ``ok`` has no row, except a policy's health (``policy:<name>``),
    which stays to mark that the policy was evaluated once."""

    __tablename__: ClassVar[str] = "alert_states"

    subject: str = Field(primary_key=True, max_length=255)
    policy: str = Field(max_length=64, index=True)
    kind: str = Field(max_length=16)
    state: str = Field(max_length=16)
    since: datetime | None = _when()


class NotificationRow(SQLModel, table=True):
    """Added in schema version 3: every alert change, and its webhook delivery (an outbox
    written with the change, so a change is sent once even across restarts)."""

    __tablename__: ClassVar[str] = "notifications"
    __table_args__ = (Index("ix_notifications_due", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=64, unique=True)
    event: str = Field(max_length=32)
    subject: str = Field(max_length=255)
    policy: str = Field(max_length=64, index=True)
    created_at: datetime | None = _when()
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", max_length=16)  # pending | delivered | dropped
    attempts: int = 0
    next_attempt_at: datetime | None = _when()
    lease_owner: str | None = Field(default=None, max_length=255)
    lease_expires_at: datetime | None = _when()
    finished_at: datetime | None = _when()
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class SchemaVersionRow(SQLModel, table=True):
    __tablename__: ClassVar[str] = "schema_version"

    id: int = Field(default=1, primary_key=True)
    version: int


# -- migrations --------------------------------------------------------------------------------
# One function per version, applied in order inside one transaction each. Version 1 is the
# tables above as first released; later versions alter them in place (never drop data).
Migration = Callable[[Connection], None]


def _create(connection: Connection, *names: str) -> None:
    tables = [SQLModel.metadata.tables[name] for name in names]
    SQLModel.metadata.create_all(connection, tables=tables)


def _v1_initial(connection: Connection) -> None:
    _create(connection, "jobs", "attempts", "vault_bindings", "sweeps", "leases")


def _v2_instances(connection: Connection) -> None:
    _create(connection, "instances")


def _v3_alerts(connection: Connection) -> None:
    _create(connection, "alert_states", "notifications")


def _v4_policy_state_index(connection: Connection) -> None:
    """The jobs' index on the policy becomes one on (policy, state, backup created)."""
    connection.execute(text("DROP INDEX IF EXISTS ix_jobs_policy"))
    for index in SQLModel.metadata.tables["jobs"].indexes:
        if index.name == "ix_jobs_policy_state":
            index.create(connection, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (
    _v1_initial,
    _v2_instances,
    _v3_alerts,
    _v4_policy_state_index,
)
assert len(MIGRATIONS) == SCHEMA_VERSION
