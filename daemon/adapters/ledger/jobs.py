"""The jobs table: reading a page's jobs at once, saving decisions, writing intents,
claiming and releasing due jobs, counting them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, func, insert, or_, update
from sqlmodel import Session, col, select

from daemon.adapters.ledger.base import SqlBase, in_chunks
from daemon.adapters.ledger.schema import AttemptRow, JobRow
from daemon.core.model import TERMINAL_STATES, Attempt, Job, JobState, Origin, PageJobs

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
NOT_SUCCEEDED = sorted(state.value for state in JobState if state is not JobState.SUCCEEDED)


# A sweep reads one listing page's jobs per query, on a plain connection rather than an ORM
# session (0.79 -> 0.50 ms per page of 100 backups). The states of a page's jobs, which
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
    for chunk in in_chunks(list(backup_ids)):
        rows = connection.execute(_PAGE_JOBS, {"region": destination_region, "backup_ids": chunk})
        for row in rows.mappings():
            found[row["source_backup_id"]] = _job_from_values(row)
    return found


def _job_from_values(values: Mapping[Any, Any]) -> Job:
    """A job from a plain (Core) result row: the sweep reads one page's jobs at a time, and
    building ORM objects for them was most of a steady-state sweep's CPU."""
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
# flushing an ORM row per job was a quarter of a catch-up sweep's CPU.
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


class JobStore(SqlBase):
    """The jobs of the ``Ledger`` port."""

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
        for chunk in in_chunks(list(backup_ids)):
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
            for chunk in in_chunks(backup_ids):
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
