"""Sweeps and what is reported from the ledger: each sweep's row, job counts, traffic,
history, the replication window and the traffic budget's deferral.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import func
from sqlmodel import col, select

from daemon.adapters.ledger.base import SqlBase, parse_if_text
from daemon.adapters.ledger.jobs import NOT_SUCCEEDED
from daemon.adapters.ledger.schema import AttemptRow, JobRow, SweepRow, UtcDateTime
from daemon.core.alerts import ReplicationWindow
from daemon.core.errors import LedgerError
from daemon.core.model import JobState, Origin, Reason, SweepReport
from daemon.core.ports import HistoryEntry, TrafficEntry


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


class SweepStore(SqlBase):
    """The sweeps and reports of the ``Ledger`` port."""

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
            JobRow.policy == policy, col(JobRow.state).in_(NOT_SUCCEEDED)
        )
        with self._session() as session:
            value = session.exec(query).one()
        return UtcDateTime().process_result_value(parse_if_text(value), self.engine.dialect)

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
                JobRow.policy == policy, col(JobRow.state).in_(NOT_SUCCEEDED), ~gone
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
