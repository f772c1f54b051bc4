"""Alert states and the notification outbox."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from daemon.adapters.ledger.base import SqlBase
from daemon.adapters.ledger.schema import AlertRow, NotificationRow
from daemon.core import alerts
from daemon.core.alerts import AlertChange, AlertKind, StoredAlert
from daemon.core.ports import Notification

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


class AlertStore(SqlBase):
    """The alert states and the outbox of the ``Ledger`` port."""

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
