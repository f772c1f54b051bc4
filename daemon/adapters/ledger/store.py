"""``SqlLedger``: the ``Ledger`` port's queries and writes, one transaction per method."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    func,
    insert,
    or_,
    update,
)
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session, col, select

from daemon.adapters.ledger.schema import (
    AlertRow,
    AttemptRow,
    BindingRow,
    InstanceRow,
    JobRow,
    LeaseRow,
    NotificationRow,
    SchemaVersionRow,
    SweepRow,
    UtcDateTime,
)
from daemon.core import alerts
from daemon.core.alerts import AlertChange, AlertKind, ReplicationWindow, StoredAlert
from daemon.core.errors import LedgerError, LedgerUnavailableError
from daemon.core.model import (
    TERMINAL_STATES,
    Attempt,
    Job,
    JobState,
    Origin,
    PageJobs,
    Reason,
    SweepReport,
    VaultBinding,
)
from daemon.core.ports import HistoryEntry, InstanceInfo, Notification, TrafficEntry

INSTANCE_RETENTION = timedelta(days=7)  # instances not seen for this long are forgotten
IN_LIST_CHUNK = 500  # below SQLite's bound-parameter limit, whatever its build
# The execution option that makes a transaction begin deferred on SQLite (see ``opening``).
READ_ONLY_OPTION = "cbr_read_only"
_READ_ONLY = {READ_ONLY_OPTION: True}


_JOB_FIELDS = tuple(name for name in Job.__dataclass_fields__ if name != "id")


_JOB_PLAIN_FIELDS = tuple(name for name in _JOB_FIELDS if name not in {"state", "origin"})


def _job_from_row(row: JobRow) -> Job:
    return Job(
        **{name: getattr(row, name) for name in _JOB_PLAIN_FIELDS},
        state=JobState(row.state),
        origin=Origin(row.origin),
        id=row.id,
    )


_JOBS_TABLE = JobRow.__table__  # type: ignore[attr-defined]
_SETTLED_BY_VALUE = {state.value: state for state in TERMINAL_STATES}
# Listed rather than "!= succeeded", so that the (policy, state, backup created) index is
# searched once per state instead of read whole.
_NOT_SUCCEEDED = sorted(state.value for state in JobState if state is not JobState.SUCCEEDED)


# A sweep reads one listing page's jobs per query, on a plain connection rather than an ORM
# session (issue 7: 0.79 -> 0.50 ms per page of 100 backups). The states of a page's jobs, which
# is all a sweep reads of most of them, go as SQL of the driver's own: SQLAlchemy renders an
# expanding IN list again on every run, 3 of the 5 us per backup the read cost. PostgreSQL
# takes the ids as one array; SQLite one placeholder per id, in chunks.
_PAGE_STATES_POSTGRES = (
    "SELECT source_backup_id, state FROM jobs "
    "WHERE destination_region = %s AND source_backup_id = ANY(%s)"
)


@functools.cache
def _page_states_sqlite(ids: int) -> str:
    placeholders = ", ".join("?" * ids)  # the ids themselves are bound, never written in
    return (
        "SELECT source_backup_id, state FROM jobs "  # noqa: S608
        f"WHERE destination_region = ? AND source_backup_id IN ({placeholders})"
    )


# The page's open jobs, whole (few per page; built once).
_PAGE_JOBS = _JOBS_TABLE.select().where(
    _JOBS_TABLE.c.destination_region == bindparam("region"),
    _JOBS_TABLE.c.source_backup_id.in_(bindparam("backup_ids", expanding=True)),
)


def _jobs_in(
    connection: Connection, destination_region: str, backup_ids: Collection[str]
) -> dict[str, Job]:
    found: dict[str, Job] = {}
    for chunk in _chunks(list(backup_ids)):
        rows = connection.execute(_PAGE_JOBS, {"region": destination_region, "backup_ids": chunk})
        for row in rows.mappings():
            found[row["source_backup_id"]] = _job_from_values(row)
    return found


def _job_from_values(values: Mapping[Any, Any]) -> Job:
    """A job from a plain (Core) result row: the sweep reads one page's jobs at a time, and
    building ORM objects for them was most of a steady-state sweep's CPU (issue 7)."""
    return Job(
        **{name: values[name] for name in _JOB_PLAIN_FIELDS},
        state=JobState(values["state"]),
        origin=Origin(values["origin"]),
        id=values["id"],
    )


_ATTEMPTS_TABLE = AttemptRow.__table__  # type: ignore[attr-defined]
_JOB_ENUM_FIELDS = frozenset({"state", "origin"})
_JOB_UPDATED_FIELDS = tuple(name for name in _JOB_FIELDS if name != "created_at")


class _StoredJob(NamedTuple):
    id: int
    created_at: datetime | None
    lease_owner: str | None


# Jobs are written with one executemany per statement kind, through Core: building and
# flushing an ORM row per job was a quarter of a catch-up sweep's CPU (issue 7).
_UPDATE_JOB = (
    update(_JOBS_TABLE)
    .where(_JOBS_TABLE.c.id == bindparam("row_id"))
    .values(
        {
            name: bindparam(f"new_{name}", type_=_JOBS_TABLE.c[name].type)
            for name in _JOB_UPDATED_FIELDS
        }
    )
)
_INSERT_JOBS = insert(_JOBS_TABLE).returning(
    _JOBS_TABLE.c.id,
    _JOBS_TABLE.c.source_backup_id,
    _JOBS_TABLE.c.destination_region,
    sort_by_parameter_order=True,
)


def _store_jobs(
    session: Session,
    jobs: Sequence[Job],
    stored: Mapping[tuple[str, str], _StoredJob],
    now: datetime,
    scrub: Callable[[str | None], str | None],
) -> list[Job]:
    """Update the stored ones, insert the others; each job as saved, with its id."""
    updates: dict[int, dict[str, Any]] = {}
    inserts: dict[tuple[str, str], dict[str, Any]] = {}
    for job in jobs:
        values = _job_values(job)
        values["updated_at"] = now
        values["last_error"] = scrub(values["last_error"])
        found = stored.get(job.key)
        if found is not None:
            updates[found.id] = {"row_id": found.id} | {
                f"new_{name}": values[name] for name in _JOB_UPDATED_FIELDS
            }
        else:  # a key given twice in one call is one row, as it was given last
            earlier = inserts.get(job.key)
            values["created_at"] = earlier["created_at"] if earlier else job.created_at or now
            inserts[job.key] = values
    if updates:
        session.execute(_UPDATE_JOB, list(updates.values()))
    saved = {key: (found.id, found.created_at) for key, found in stored.items()}
    if inserts:
        for row_id, backup_id, region in session.execute(_INSERT_JOBS, list(inserts.values())):
            saved[(backup_id, region)] = (row_id, inserts[(backup_id, region)]["created_at"])
    return [
        job.evolve(id=saved[job.key][0], created_at=saved[job.key][1] or now, updated_at=now)
        for job in jobs
    ]


def _job_values(job: Job) -> dict[str, Any]:
    values = {name: getattr(job, name) for name in _JOB_FIELDS}
    for name in _JOB_ENUM_FIELDS:
        values[name] = str(values[name])
    return values


# A binding and its row have the same fields.
_BINDING_FIELDS = tuple(field.name for field in dataclasses.fields(VaultBinding))


def _binding_row(binding: VaultBinding) -> BindingRow:
    return BindingRow(**{name: getattr(binding, name) for name in _BINDING_FIELDS})


def _binding_from_row(row: BindingRow) -> VaultBinding:
    assert row.created_at is not None
    return VaultBinding(**{name: getattr(row, name) for name in _BINDING_FIELDS})


def _report_from_row(row: SweepRow) -> SweepReport:
    assert row.started_at is not None
    return SweepReport(
        policy=row.policy,
        started_at=row.started_at,
        finished_at=row.finished_at,
        backups_seen=row.backups_seen,
        reasons=json.loads(row.reasons),
        enqueued=row.enqueued,
        adopted=row.adopted,
        submitted=row.submitted,
        error=row.error,
        error_reason=row.error_reason,
    )


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), IN_LIST_CHUNK):
        yield values[start : start + IN_LIST_CHUNK]


class SqlLedger:
    """The ``Ledger`` port on SQLite or PostgreSQL. Safe to share between threads."""

    def __init__(self, engine: Engine, redact: Callable[[str], str] | None = None) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # Every error text goes through it before it is stored (the app sets the log's secret
        # redaction): an exception quoting a secret must reach neither the ledger nor what
        # ``status`` and ``history`` read from it.
        self.redact = redact

    def _scrub(self, text: str | None) -> str | None:
        return text if text is None or self.redact is None else self.redact(text)

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """One read-only transaction on a plain connection, for the reads a sweep makes per
        page. On SQLite it begins deferred: it takes no write lock, so a page read never makes
        the submitter's (or another instance's) writes wait."""
        try:
            with self.engine.connect() as connection:
                connection.execution_options(**_READ_ONLY)
                with connection.begin():
                    yield connection
        except SQLAlchemyError as error:
            raise ledger_error(error, self.engine) from error

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except IntegrityError:
            raise
        except SQLAlchemyError as error:
            raise ledger_error(error, self.engine) from error

    # -- jobs ----------------------------------------------------------------------------------
    def get_jobs(self, destination_region: str, backup_ids: Collection[str]) -> dict[str, Job]:
        with self._connection() as connection:
            return _jobs_in(connection, destination_region, backup_ids)

    def get_page_jobs(self, destination_region: str, backup_ids: Collection[str]) -> PageJobs:
        settled: dict[str, JobState] = {}
        open_ids: list[str] = []
        with self._connection() as connection:
            for backup_id, state in self._page_states(connection, destination_region, backup_ids):
                settled_state = _SETTLED_BY_VALUE.get(state)
                if settled_state is None:
                    open_ids.append(backup_id)
                else:
                    settled[backup_id] = settled_state
            found = _jobs_in(connection, destination_region, open_ids) if open_ids else {}
        return PageJobs(open=found, settled=settled)

    def _page_states(
        self, connection: Connection, destination_region: str, backup_ids: Collection[str]
    ) -> Iterator[tuple[str, str]]:
        if not self.is_sqlite:
            yield from connection.exec_driver_sql(
                _PAGE_STATES_POSTGRES, (destination_region, list(backup_ids))
            ).all()
            return
        for chunk in _chunks(list(backup_ids)):
            yield from connection.exec_driver_sql(
                _page_states_sqlite(len(chunk)), (destination_region, *chunk)
            ).all()

    def get_job(self, source_backup_id: str, destination_region: str) -> Job | None:
        return self.get_jobs(destination_region, [source_backup_id]).get(source_backup_id)

    def save_jobs(
        self, jobs: Sequence[Job], now: datetime, attempts: Sequence[Attempt] = ()
    ) -> list[Job]:
        if not jobs and not attempts:
            return []
        with self._session() as session:
            stored = _store_jobs(
                session, jobs, self._stored_by_key(session, jobs), now, self._scrub
            )
            if attempts:
                session.execute(
                    insert(_ATTEMPTS_TABLE),
                    [
                        {
                            "job_id": attempt.job_id or stored[position].id or 0,
                            "at": attempt.at,
                            "outcome": attempt.outcome,
                            "error_code": attempt.error_code,
                            "error_message": self._scrub(attempt.error_message),
                            "request_id": attempt.request_id,
                        }
                        for position, attempt in enumerate(attempts)
                    ],
                )
            return stored

    def write_intents(self, jobs: Sequence[Job], now: datetime, *, owner: str) -> list[Job]:
        # The rows stay locked (FOR UPDATE; BEGIN IMMEDIATE on SQLite) from the owner check to
        # the commit, so a claim by another process comes either before (and wins) or after.
        with self._session() as session:
            existing = self._stored_by_key(session, jobs, lock=True)
            owned = [
                job
                for job in jobs
                if (found := existing.get(job.key)) is not None and found.lease_owner == owner
            ]
            return _store_jobs(session, owned, existing, now, self._scrub)

    def _stored_by_key(
        self, session: Session, jobs: Sequence[Job], *, lock: bool = False
    ) -> dict[tuple[str, str], _StoredJob]:
        """What the stored rows of ``jobs`` are needed for, by key."""
        by_region: dict[str, list[str]] = {}
        for job in jobs:
            by_region.setdefault(job.destination_region, []).append(job.source_backup_id)
        table = _JOBS_TABLE
        found: dict[tuple[str, str], _StoredJob] = {}
        for region, backup_ids in by_region.items():
            for chunk in _chunks(backup_ids):
                query = select(
                    table.c.source_backup_id, table.c.id, table.c.created_at, table.c.lease_owner
                ).where(table.c.destination_region == region, table.c.source_backup_id.in_(chunk))
                if lock and not self.is_sqlite:
                    query = query.with_for_update()
                for backup_id, row_id, created_at, lease_owner in session.execute(query):
                    found[(backup_id, region)] = _StoredJob(row_id, created_at, lease_owner)
        return found

    def claim_jobs(
        self,
        *,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        policy: str | None = None,
        destination_region: str | None = None,
    ) -> list[Job]:
        if limit <= 0:
            return []
        table = _JOBS_TABLE
        state, next_attempt_at = table.c.state, table.c.next_attempt_at
        due = or_(
            (state == JobState.QUEUED.value)
            & (next_attempt_at.is_(None) | (next_attempt_at <= now)),
            (state == JobState.FAILED.value) & (next_attempt_at <= now),
            (state == JobState.SUBMITTING.value)
            & (next_attempt_at.is_(None) | (next_attempt_at <= now)),
        )
        unleased = table.c.lease_expires_at.is_(None) | (table.c.lease_expires_at <= now)
        query = table.select().where(due, unleased)
        if policy is not None:
            query = query.where(table.c.policy == policy)
        if destination_region is not None:
            query = query.where(table.c.destination_region == destination_region)
        # Reconcile-first: submitting jobs sort before the rest (docs/design.md §11).
        query = query.order_by(
            (state != JobState.SUBMITTING.value),
            func.coalesce(next_attempt_at, table.c.created_at),
            table.c.id,
        ).limit(limit)
        if not self.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        with self._session() as session:
            jobs = [_job_from_values(row) for row in session.execute(query).mappings()]
            if jobs:
                session.execute(
                    update(table)
                    .where(table.c.id.in_([job.id for job in jobs]))
                    .values(lease_owner=owner, lease_expires_at=lease_until)
                )
            return [job.evolve(lease_owner=owner, lease_expires_at=lease_until) for job in jobs]

    def claim_job(
        self,
        source_backup_id: str,
        destination_region: str,
        *,
        owner: str,
        now: datetime,
        lease_until: datetime,
    ) -> Job | None:
        query = select(JobRow).where(
            JobRow.source_backup_id == source_backup_id,
            JobRow.destination_region == destination_region,
        )
        if not self.is_sqlite:
            query = query.with_for_update()
        with self._session() as session:
            row = session.exec(query).first()
            if row is None:
                return None
            held = row.lease_expires_at is not None and row.lease_expires_at > now
            if held and row.lease_owner != owner:
                return None
            row.lease_owner = owner
            row.lease_expires_at = lease_until
            session.add(row)
            session.flush()
            return _job_from_row(row)

    def release_jobs(self, owner: str) -> None:
        with self._session() as session:
            session.execute(
                update(_JOBS_TABLE)
                .where(_JOBS_TABLE.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    def count_jobs(
        self,
        states: Collection[JobState],
        *,
        policy: str | None = None,
        destination_region: str | None = None,
        retry_due_by: datetime | None = None,
        manual: bool = False,
    ) -> int:
        query = select(func.count()).select_from(JobRow)
        if manual:
            query = query.where(col(JobRow.policy).is_(None))
        query = query.where(col(JobRow.state).in_([str(state) for state in states]))
        if retry_due_by is not None:
            next_attempt_at = col(JobRow.next_attempt_at)
            query = query.where(next_attempt_at.is_(None) | (next_attempt_at <= retry_due_by))
        if policy is not None:
            query = query.where(JobRow.policy == policy)
        if destination_region is not None:
            query = query.where(JobRow.destination_region == destination_region)
        with self._session() as session:
            return int(session.exec(query).one())

    def jobs_in_states(
        self,
        states: Collection[JobState],
        *,
        limit: int,
        after_id: int = 0,
        policy: str | None = None,
        unchanged_since: datetime | None = None,
        manual: bool = False,
    ) -> list[Job]:
        table = _JOBS_TABLE
        query = table.select().where(
            table.c.state.in_([str(state) for state in states]), table.c.id > after_id
        )
        if policy is not None:
            query = query.where(table.c.policy == policy)
        if manual:
            query = query.where(table.c.policy.is_(None))
        if unchanged_since is not None:
            query = query.where(table.c.updated_at <= unchanged_since)
        query = query.order_by(table.c.id).limit(limit)
        with self._session() as session:
            return [_job_from_values(row) for row in session.execute(query).mappings()]

    # -- vault bindings ------------------------------------------------------------------------
    def get_binding(self, source_vault_id: str, destination_region: str) -> VaultBinding | None:
        return self.get_bindings(destination_region, [source_vault_id]).get(source_vault_id)

    def get_bindings(
        self, destination_region: str, source_vault_ids: Collection[str]
    ) -> dict[str, VaultBinding]:
        found: dict[str, VaultBinding] = {}
        with self._session() as session:
            for chunk in _chunks(list(source_vault_ids)):
                rows = session.exec(
                    select(BindingRow).where(
                        BindingRow.destination_region == destination_region,
                        col(BindingRow.source_vault_id).in_(chunk),
                    )
                )
                found.update((row.source_vault_id, _binding_from_row(row)) for row in rows)
        return found

    def add_binding(self, binding: VaultBinding) -> VaultBinding:
        row = _binding_row(binding)
        try:
            with self._session() as session:
                session.add(row)
            return _binding_from_row(row)
        except IntegrityError:
            existing = self.get_binding(binding.source_vault_id, binding.destination_region)
            if existing is None:  # pragma: no cover - a binding is never deleted
                raise LedgerError("ledger: vault binding vanished after a conflict") from None
            return existing

    def add_bindings(self, bindings: Sequence[VaultBinding]) -> list[VaultBinding]:
        if not bindings:
            return []
        rows = [_binding_row(binding) for binding in bindings]
        try:
            with self._session() as session:
                session.add_all(rows)
        except IntegrityError:
            # Another process added one of them meanwhile (the whole insert was rolled back):
            # one at a time, so that each of its bindings wins.
            return [self.add_binding(binding) for binding in bindings]
        return [_binding_from_row(row) for row in rows]

    def mark_binding_bound(self, source_vault_id: str, destination_region: str) -> None:
        with self._session() as session:
            row = session.exec(
                select(BindingRow).where(
                    BindingRow.source_vault_id == source_vault_id,
                    BindingRow.destination_region == destination_region,
                )
            ).first()
            if row is not None and row.state != "bound":
                row.state = "bound"
                session.add(row)

    def withdraw_binding_intent(self, source_vault_id: str, destination_region: str) -> None:
        with self._session() as session:
            row = session.exec(
                select(BindingRow).where(
                    BindingRow.source_vault_id == source_vault_id,
                    BindingRow.destination_region == destination_region,
                    BindingRow.state == "intent",
                )
            ).first()
            if row is not None:
                session.delete(row)

    def list_bindings(self) -> list[VaultBinding]:
        with self._session() as session:
            rows = session.exec(select(BindingRow).order_by(col(BindingRow.id)))
            return [_binding_from_row(row) for row in rows]

    # -- leases --------------------------------------------------------------------------------
    def acquire_lease(
        self,
        name: str,
        *,
        owner: str,
        now: datetime,
        until: datetime,
        holder_gone: Callable[[str], bool] | None = None,
    ) -> bool:
        query = select(LeaseRow).where(LeaseRow.name == name)
        if not self.is_sqlite:
            query = query.with_for_update()
        try:
            with self._session() as session:
                row = session.exec(query).first()
                if row is None:
                    session.add(LeaseRow(name=name, owner=owner, expires_at=until))
                    return True
                live = row.expires_at is not None and row.expires_at > now
                # A holder killed mid-sweep (kill -9, OOM) would block the policy until its
                # lease ran out; one that no longer runs may be taken over at once.
                gone = holder_gone is not None and holder_gone(row.owner)
                if live and row.owner != owner and not gone:
                    return False
                row.owner = owner
                row.expires_at = until
                session.add(row)
                return True
        except IntegrityError:  # another host inserted the same lease first
            return False

    def lease_holder(self, name: str, now: datetime) -> str | None:
        with self._connection() as connection:
            row = connection.execute(
                select(LeaseRow.owner).where(LeaseRow.name == name, col(LeaseRow.expires_at) > now)
            ).first()
        return None if row is None else str(row[0])

    def release_lease(self, name: str, *, owner: str) -> None:
        with self._session() as session:
            row = session.exec(
                select(LeaseRow).where(LeaseRow.name == name, LeaseRow.owner == owner)
            ).first()
            if row is not None:
                session.delete(row)

    # -- sweeps and reports ----------------------------------------------------------------------
    def start_sweep(self, policy: str, now: datetime) -> int:
        with self._session() as session:
            row = SweepRow(policy=policy, started_at=now)
            session.add(row)
            session.flush()
            assert row.id is not None
            return row.id

    def finish_sweep(self, sweep_id: int, report: SweepReport) -> None:
        with self._session() as session:
            row = session.get(SweepRow, sweep_id)
            if row is None:
                raise LedgerError(f"ledger: no sweep {sweep_id}")
            row.finished_at = report.finished_at
            row.backups_seen = report.backups_seen
            row.reasons = json.dumps(dict(report.reasons), sort_keys=True)
            row.enqueued = report.enqueued
            row.adopted = report.adopted
            row.submitted = report.submitted
            row.error = self._scrub(report.error)
            row.error_reason = report.error_reason
            session.add(row)

    def last_sweeps(self) -> dict[str, SweepReport]:
        newest = (
            select(SweepRow.policy, func.max(SweepRow.id).label("id"))
            .where(col(SweepRow.finished_at).is_not(None))
            .group_by(col(SweepRow.policy))
            .subquery()
        )
        query = select(SweepRow).join(newest, col(SweepRow.id) == newest.c.id)
        with self._session() as session:
            return {row.policy: _report_from_row(row) for row in session.exec(query)}

    def job_counts(self) -> dict[tuple[str | None, JobState], int]:
        query = select(JobRow.policy, JobRow.state, func.count()).group_by(
            col(JobRow.policy), col(JobRow.state)
        )
        with self._session() as session:
            return {
                (policy, JobState(state)): int(count)
                for policy, state, count in session.exec(query)
            }

    def traffic_bytes(self, *, policy: str | None = None, since: datetime | None = None) -> int:
        # Adopted replicas were made before this ledger knew them: not our traffic.
        query = select(func.coalesce(func.sum(JobRow.bytes), 0)).where(
            JobRow.state == JobState.SUCCEEDED.value, JobRow.origin != Origin.ADOPTED.value
        )
        if policy is not None:
            query = query.where(JobRow.policy == policy)
        if since is not None:
            query = query.where(col(JobRow.finished_at) >= since)
        with self._session() as session:
            return int(session.exec(query).one())

    def submitted_bytes(self, *, policy: str, since: datetime) -> int:
        accepted = (
            select(AttemptRow.job_id)
            .where(AttemptRow.outcome == "accepted", col(AttemptRow.at) >= since)
            .distinct()
            .subquery()
        )
        query = (
            select(func.coalesce(func.sum(JobRow.bytes), 0))
            .join(accepted, col(JobRow.id) == accepted.c.job_id)
            .where(JobRow.policy == policy)
        )
        with self._session() as session:
            return int(session.exec(query).one())

    def oldest_pending_backup(self, policy: str) -> datetime | None:
        query = select(func.min(JobRow.backup_created_at)).where(
            JobRow.policy == policy, col(JobRow.state).in_(_NOT_SUCCEEDED)
        )
        with self._session() as session:
            value = session.exec(query).one()
        return UtcDateTime().process_result_value(_parse_if_text(value), self.engine.dialect)

    def history(
        self,
        *,
        source_backup_id: str | None = None,
        policy: str | None = None,
        limit: int = 50,
        manual: bool = False,
    ) -> list[HistoryEntry]:
        query = select(AttemptRow, JobRow).join(JobRow, col(AttemptRow.job_id) == col(JobRow.id))
        if source_backup_id is not None:
            query = query.where(JobRow.source_backup_id == source_backup_id)
        if manual:
            query = query.where(col(JobRow.policy).is_(None))
        elif policy is not None:
            query = query.where(JobRow.policy == policy)
        query = query.order_by(col(AttemptRow.at).desc(), col(AttemptRow.id).desc()).limit(limit)
        with self._session() as session:
            return [
                HistoryEntry(
                    at=attempt.at or datetime.min.replace(tzinfo=UTC),
                    source_backup_id=job.source_backup_id,
                    destination_region=job.destination_region,
                    policy=job.policy,
                    outcome=attempt.outcome,
                    error_code=attempt.error_code,
                    error_message=attempt.error_message,
                    request_id=attempt.request_id,
                )
                for attempt, job in session.exec(query)
            ]

    def traffic_entries(self, *, since: datetime) -> list[TrafficEntry]:
        query = select(
            JobRow.policy, JobRow.destination_region, JobRow.finished_at, JobRow.bytes
        ).where(
            JobRow.state == JobState.SUCCEEDED.value,
            JobRow.origin != Origin.ADOPTED.value,
            col(JobRow.finished_at) >= since,
        )
        with self._session() as session:
            return [
                TrafficEntry(policy, region, finished_at, int(size))
                for policy, region, finished_at, size in session.exec(query)
                if finished_at is not None
            ]

    def replication_window(self, policy: str) -> ReplicationWindow:
        newest_query = select(func.max(JobRow.backup_created_at)).where(
            JobRow.policy == policy, JobRow.state == JobState.SUCCEEDED.value
        )
        gone = (col(JobRow.state) == JobState.GIVEN_UP.value) & (
            col(JobRow.last_error_code) == "source_backup_deleted"
        )
        with self._session() as session:
            newest = self._moment(session.exec(newest_query).one())
            waiting_query = select(func.min(JobRow.backup_created_at)).where(
                JobRow.policy == policy, col(JobRow.state).in_(_NOT_SUCCEEDED), ~gone
            )
            if newest is not None:
                waiting_query = waiting_query.where(col(JobRow.backup_created_at) > newest)
            oldest = self._moment(session.exec(waiting_query).one())
        return ReplicationWindow(newest_replicated=newest, oldest_waiting=oldest)

    def budget_deferral(self, policy: str, now: datetime) -> datetime | None:
        query = select(func.max(JobRow.next_attempt_at)).where(
            JobRow.policy == policy,
            col(JobRow.state).in_([JobState.QUEUED.value, JobState.FAILED.value]),
            JobRow.last_error_code == Reason.TRAFFIC_BUDGET_EXHAUSTED.value,
            col(JobRow.next_attempt_at) > now,
        )
        with self._session() as session:
            return self._moment(session.exec(query).one())

    def _moment(self, value: object) -> datetime | None:
        return UtcDateTime().process_result_value(_parse_if_text(value), self.engine.dialect)

    # -- alerts and notifications --------------------------------------------------------------
    def alert_states(self, policy: str) -> dict[str, StoredAlert]:
        with self._session() as session:
            rows = session.exec(select(AlertRow).where(AlertRow.policy == policy))
            return {
                row.subject: StoredAlert(
                    row.subject, AlertKind(row.kind), row.state, row.since or _EPOCH
                )
                for row in rows
            }

    def record_alerts(
        self, changes: Sequence[tuple[AlertChange, Notification | None]], now: datetime
    ) -> list[AlertChange]:
        if not changes:
            return []
        subjects = [change.subject for change, _ in changes]
        query = select(AlertRow).where(col(AlertRow.subject).in_(subjects))
        if not self.is_sqlite:
            query = query.with_for_update()
        applied: list[AlertChange] = []
        try:
            with self._session() as session:
                rows = {row.subject: row for row in session.exec(query)}
                for change, notification in changes:
                    if _apply_alert(session, rows, change, now):
                        applied.append(change)
                        if notification is not None:
                            session.add(_notification_row(notification))
        except IntegrityError:  # another process recorded the same first change: it sends it
            return []
        return applied

    def claim_notifications(
        self, *, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[Notification]:
        due = col(NotificationRow.next_attempt_at).is_(None) | (
            col(NotificationRow.next_attempt_at) <= now
        )
        unleased = col(NotificationRow.lease_expires_at).is_(None) | (
            col(NotificationRow.lease_expires_at) <= now
        )
        query = (
            select(NotificationRow)
            .where(NotificationRow.status == "pending", due, unleased)
            .order_by(col(NotificationRow.id))
            .limit(limit)
        )
        if not self.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        with self._session() as session:
            rows = list(session.exec(query))
            for row in rows:
                row.lease_owner = owner
                row.lease_expires_at = lease_until
                session.add(row)
            return [_notification_from_row(row) for row in rows]

    def finish_notification(
        self,
        notification_id: int,
        *,
        now: datetime,
        status: str,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        with self._session() as session:
            row = session.get(NotificationRow, notification_id)
            if row is None:
                return
            row.attempts += 1
            row.status = status
            row.last_error = self._scrub(error)
            row.next_attempt_at = next_attempt_at
            row.lease_owner = None
            row.lease_expires_at = None
            row.finished_at = now if status != "pending" else None
            session.add(row)

    def recent_notifications(self, *, limit: int = 20) -> list[Notification]:
        query = select(NotificationRow).order_by(col(NotificationRow.id).desc()).limit(limit)
        with self._session() as session:
            return [_notification_from_row(row) for row in session.exec(query)]

    # -- instances -------------------------------------------------------------------------------
    def heartbeat(self, owner: str, *, role: str, now: datetime) -> None:
        query = select(InstanceRow).where(InstanceRow.owner == owner)
        with self._session() as session:
            row = session.exec(query).first()
            if row is None:
                row = InstanceRow(owner=owner, role=role, started_at=now)
                stale = now - INSTANCE_RETENTION
                for old in session.exec(
                    select(InstanceRow).where(col(InstanceRow.last_seen_at) < stale)
                ):
                    session.delete(old)
            row.role = role
            row.last_seen_at = now
            session.add(row)

    def instances(self, now: datetime) -> list[InstanceInfo]:
        with self._session() as session:
            rows = list(
                session.exec(select(InstanceRow).order_by(col(InstanceRow.last_seen_at).desc()))
            )
            leases: dict[str, list[str]] = {}
            for lease in session.exec(
                select(LeaseRow).where(col(LeaseRow.expires_at) > now).order_by(col(LeaseRow.name))
            ):
                leases.setdefault(lease.owner, []).append(lease.name)
            jobs = dict(
                session.exec(
                    select(JobRow.lease_owner, func.count())
                    .where(col(JobRow.lease_expires_at) > now)
                    .group_by(col(JobRow.lease_owner))
                ).all()
            )
        return [
            InstanceInfo(
                owner=row.owner,
                role=row.role,
                started_at=row.started_at or now,
                last_seen_at=row.last_seen_at or now,
                leases=tuple(leases.get(row.owner, ())),
                jobs_leased=int(jobs.get(row.owner, 0)),
            )
            for row in rows
        ]

    def forget_instance(self, owner: str) -> None:
        with self._session() as session:
            row = session.get(InstanceRow, owner)
            if row is not None:
                session.delete(row)

    def schema_version(self) -> int:
        with self._session() as session:
            row = session.get(SchemaVersionRow, 1)
            return row.version if row is not None else 0

    def close(self) -> None:
        self.engine.dispose()


def cause_of(error: SQLAlchemyError) -> object:
    """The driver's own message when there is one (it names the file or the constraint)."""
    return getattr(error, "orig", None) or error


def ledger_error(error: SQLAlchemyError, engine: Engine, place: str = "ledger") -> LedgerError:
    """``error`` as what it means: ``LedgerUnavailableError`` when the database did not
    answer or cannot write for now (the CLI exits 75, systemd restarts the daemon), a plain
    ``LedgerError`` when the ledger or its config must be fixed (78)."""
    if isinstance(cause_of(error), sqlite3.OperationalError):
        space = no_space_problem(engine.url.database)
        if space is not None:
            return LedgerUnavailableError(f"{place}: {space}")
    cause = " ".join(str(cause_of(error)).split())  # libpq's messages span lines
    text = f"{place}: {error.__class__.__name__}: {cause}"
    if database_unavailable(error):
        return LedgerUnavailableError(f"{text}; the database did not answer: retried later")
    return LedgerError(text)


# PostgreSQL error classes that say "not now" rather than "wrong": connection exceptions,
# transaction rollbacks (serialization, deadlock), insufficient resources, operator
# intervention (shutdown, cancelled statement), system errors; and a lock not available.
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_STATES = frozenset({"55P03"})
# The server refused the connection (FATAL), but only for now.
_TRANSIENT_REFUSALS = (
    "starting up",
    "shutting down",
    "in recovery",
    "too many",
    "connection slots",
    "terminating connection",
)


def database_unavailable(error: SQLAlchemyError) -> bool:
    """Did the database fail to answer (rather than refuse)? True for a dropped, refused or
    timed-out connection, a server starting, stopping or full, a lock wait given up."""
    if getattr(error, "connection_invalidated", False) or isinstance(error, PoolTimeout):
        return True
    cause = getattr(error, "orig", None)
    if isinstance(cause, sqlite3.Error):
        return "locked" in str(cause) or "busy" in str(cause)
    state = getattr(cause, "sqlstate", None)
    if state:
        return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES
    if not isinstance(error, OperationalError | InterfaceError):
        return False
    # psycopg reports failed connections without a state: refused, timed out or
    # unresolved (no answer), or a FATAL from the server (an answer: wrong database, user).
    message = str(cause)
    return "FATAL" not in message or any(marker in message for marker in _TRANSIENT_REFUSALS)


MIN_FREE_BYTES = 1 << 20


def no_space_problem(database: str | None) -> str | None:
    """What to say when the SQLite file's filesystem is full: SQLite then reports a write
    it could not make ("disk I/O error", "database or disk is full") while the file itself
    is as it was before the write, and must not be thrown away."""
    if not database or database == ":memory:":
        return None
    directory = Path(database).parent
    try:
        info = os.statvfs(directory)
    except OSError:
        return None
    free = info.f_bavail * info.f_frsize
    no_inode = info.f_files > 0 and info.f_favail == 0  # 0 files: it has no inode count
    if free >= MIN_FREE_BYTES and not no_inode:
        return None
    what = "no space" if free < MIN_FREE_BYTES else "no free inode"
    return (
        f"{database}: {what} left on the device holding {directory} ({free} bytes free); "
        "free space and start again. The ledger file is intact (SQLite did not apply the "
        "write it could not make): keep it"
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _apply_alert(
    session: Session, rows: dict[str, AlertRow], change: AlertChange, now: datetime
) -> bool:
    """Compare and set one subject's state; False when it is no longer ``change.previous``."""
    row = rows.get(change.subject)
    current = row.state if row is not None else alerts.OK
    if current != change.previous:
        return False
    if change.state == alerts.OK and change.kind != AlertKind.POLICY:
        if row is not None:
            session.delete(row)
            del rows[change.subject]
        return True
    if row is None:
        row = AlertRow(
            subject=change.subject, policy=change.policy, kind=str(change.kind), state=""
        )
        rows[change.subject] = row
    row.state = change.state
    row.since = now
    session.add(row)
    session.flush()
    return True


def _notification_row(notification: Notification) -> NotificationRow:
    return NotificationRow(
        event_id=notification.event_id,
        event=notification.event,
        subject=notification.subject,
        policy=notification.policy,
        created_at=notification.created_at,
        payload=notification.payload,
    )


def _notification_from_row(row: NotificationRow) -> Notification:
    return Notification(
        event_id=row.event_id,
        event=row.event,
        subject=row.subject,
        policy=row.policy,
        payload=row.payload,
        created_at=row.created_at or _EPOCH,
        status=row.status,
        attempts=row.attempts,
        last_error=row.last_error,
        id=row.id,
    )


def _parse_if_text(value: object) -> datetime | None:
    """``min()`` over a SQLite text column comes back as text, not through the column type."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
