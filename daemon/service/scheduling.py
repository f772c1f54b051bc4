"""When the daemon works: the APScheduler trigger of a policy's schedule, the next sweep, the
misfire grace, the tracker's interval, the hang test and the systemd status line.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from daemon.adapters.metrics import LedgerSnapshot
from daemon.core.model import IN_FLIGHT_STATES, JobState, SweepReport
from daemon.core.policy import Policy, ScheduleSettings
from daemon.core.units import apscheduler_crontab

# -- scheduling ----------------------------------------------------------------------------

# A work item that made no cloud call this long (stuck in one), or that is still calling this
# long after its cloud.sweep_deadline (calls refused, no progress), is hung.
HANG_AFTER = timedelta(minutes=15)
TRACK_EVERY_AT_MOST = timedelta(minutes=1)


def make_trigger(schedule: ScheduleSettings) -> Any:
    """The APScheduler trigger of a policy's cron or interval schedule, with its jitter."""
    jitter = int(schedule.jitter.total_seconds()) or None
    if schedule.cron is not None:
        trigger = CronTrigger.from_crontab(
            apscheduler_crontab(schedule.cron), timezone=schedule.timezone
        )
        trigger.jitter = jitter
        return trigger
    assert schedule.interval is not None
    return IntervalTrigger(
        seconds=schedule.interval.total_seconds(), timezone=schedule.timezone, jitter=jitter
    )


def next_sweep(
    schedule: ScheduleSettings, last_started: datetime | None, now: datetime
) -> datetime | None:
    """When the daemon sweeps next, as far as the ledger tells (for ``status``): a cron's
    next time; an interval's last sweep plus the interval (None before the first: the daemon
    sweeps at its start). Jitter may add to it."""
    if schedule.interval is not None:
        return None if last_started is None else last_started + schedule.interval
    trigger = make_trigger(schedule.model_copy(update={"jitter": timedelta(0)}))
    moment: datetime | None = trigger.get_next_fire_time(None, now)
    return moment


def misfire_grace(schedule: ScheduleSettings) -> int:
    """A run late (host asleep, or queued behind other sweeps) by up to its period, at most
    an hour, still runs; a later one is dropped: the next run is as good."""
    return max(1, int(min(schedule.period, timedelta(hours=1)).total_seconds()))


def track_interval(policies: list[Policy]) -> timedelta:
    """Track as often as the most frequent policy sweeps, and at least every minute."""
    periods = [policy.schedule.period for policy in policies]
    return max(timedelta(seconds=1), min([TRACK_EVERY_AT_MOST, *periods]))


def is_hung(now: float, progress: float, deadline: float) -> bool:
    """Whether a running work item is hung (monotonic seconds): no progress for HANG_AFTER.
    Past its deadline its calls no longer count as progress, so one that goes on calling
    (a listing that never ends) is hung HANG_AFTER after its deadline at the latest."""
    return now - min(progress, deadline) > HANG_AFTER.total_seconds()


def status_line(activity: str, snapshot: LedgerSnapshot, last: SweepReport | None) -> str:
    """``idle; 12 queued, 3 in flight, last sweep 14:02Z ok`` (systemctl status shows it)."""
    queued = sum(n for (_, state), n in snapshot.jobs.items() if state == JobState.QUEUED)
    in_flight = sum(n for (_, state), n in snapshot.jobs.items() if state in IN_FLIGHT_STATES)
    if last is None or last.finished_at is None:
        last_text = "no sweep yet"
    else:
        result = f"error {last.error_reason}" if last.error else "ok"
        last_text = f"last sweep {last.finished_at.astimezone(UTC):%H:%MZ} {result} ({last.policy})"
    return f"{activity}; {queued} queued, {in_flight} in flight, {last_text}"
