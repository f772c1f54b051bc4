"""Policy leases (one sweeper per policy at a time) and the instances using the ledger."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from daemon.adapters.ledger.base import SqlBase
from daemon.adapters.ledger.schema import InstanceRow, JobRow, LeaseRow
from daemon.core.ports import InstanceInfo

INSTANCE_RETENTION = timedelta(days=7)  # instances not seen for this long are forgotten


class LeaseStore(SqlBase):
    """The leases and instances of the ``Ledger`` port."""

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
