"""What limits a submission pass: free in-flight slots, the traffic budget of the day (in the
policy's time zone), and deferring a job to the next day when the budget is spent.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog

from daemon.core.model import Job, JobState, Reason
from daemon.engine.context import Engine, Target
from daemon.engine.outcomes import unleased

log = structlog.get_logger("cbr_replicator")


def free_slots(engine: Engine, target: Target) -> int:
    """How many more replications this policy may start (policy and region limits)."""
    in_flight = {JobState.SUBMITTING, JobState.REPLICATING}
    slots = target.max_in_flight - engine.ledger.count_jobs(in_flight, policy=target.policy)
    if engine.max_in_flight_per_region is not None:
        region_used = engine.ledger.count_jobs(
            in_flight, destination_region=target.destination.region
        )
        slots = min(slots, engine.max_in_flight_per_region - region_used)
    return max(0, slots)


class SlotBudget:
    """Slots for new POSTs, shared by the worker threads of one pass."""

    def __init__(self, slots: int, traffic: int | None = None) -> None:
        self._slots = slots
        self._traffic = traffic  # bytes left of today's budget; None: no budget
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._slots <= 0:
                return False
            self._slots -= 1
            return True

    def slots_left(self) -> int:
        with self._lock:
            return self._slots

    def take_traffic(self, size: int) -> bool:
        with self._lock:
            if self._traffic is None:
                return True
            if size > self._traffic:
                return False
            self._traffic -= size
            return True


def day_bounds(moment: datetime, timezone: str) -> tuple[datetime, datetime]:
    """Start of ``moment``'s day in ``timezone`` and of the next one, both in UTC."""
    local = moment.astimezone(ZoneInfo(timezone))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    following = start + timedelta(days=1)  # wall-clock arithmetic: the next local midnight
    return start.astimezone(UTC), following.astimezone(UTC)


def traffic_left(engine: Engine, target: Target) -> int | None:
    if target.traffic_budget_per_day is None:
        return None
    day_start, _ = day_bounds(engine.now(), target.timezone)
    used = engine.ledger.submitted_bytes(policy=target.policy, since=day_start)
    return max(0, target.traffic_budget_per_day - used)


def defer_to_next_day(engine: Engine, target: Target, job: Job) -> Job:
    """Today's traffic budget is spent: the job waits, queued, for the next day."""
    _, next_day = day_bounds(engine.now(), target.timezone)
    log.info(
        "traffic_budget_exhausted",
        policy=target.policy,
        backup=job.source_backup_id,
        region=job.destination_region,
        until=next_day.isoformat(),
    )
    later = job.evolve(
        next_attempt_at=next_day,
        last_error_code=str(Reason.TRAFFIC_BUDGET_EXHAUSTED),
        last_error=f"the policy's traffic budget for today is spent; waits until {next_day}",
    )
    return engine.ledger.save_jobs([unleased(later)], engine.now())[0]
