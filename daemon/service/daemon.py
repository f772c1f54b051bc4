"""Daemon mode (``cbr-replicator`` with no command): APScheduler jobs for the policies and the
tracker, signals (TERM and INT stop, HUP reloads), sd_notify and the watchdog, the metrics
endpoint and the single-instance guard of a SQLite ledger (``instance_lock``). The only
module importing APScheduler.

Threads: the main thread runs the main loop (signals, reload, WATCHDOG=1); APScheduler's
thread fires the triggers; a sweep thread and a tracker thread run the work items, one at a
time under ``_work_lock``, so a reload swaps the configuration between two work items.
Sweeps call ``run_policies``, as ``--run-once`` does. A notify thread (``Courier``) sends the
alert notifications and heartbeat pings, outside the work lock (``courier``); the cloud is
wrapped in ``watched.WatchedCloud``, which counts the calls for the hang watch.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from daemon.adapters.cloud.watched import WatchedCloud
from daemon.adapters.instance_lock import InstanceLock
from daemon.adapters.logs import bound_context, configure_logging, redact_text
from daemon.adapters.metrics import AlertFacts, LedgerSnapshot, Metrics, MetricsServer
from daemon.adapters.systemd import Notifier
from daemon.app import App, build_app
from daemon.config.load import LoadedConfig, load_settings
from daemon.core import exitcodes
from daemon.core.errors import CloudError, ConfigError, LedgerError, LedgerGoneError, TransientError
from daemon.core.model import (
    IN_FLIGHT_STATES,
    Job,
    JobState,
    SweepReport,
)
from daemon.core.policy import Policy, ScheduleSettings, Settings
from daemon.core.ports import Cloud
from daemon.core.retrying import RetryPolicy
from daemon.core.units import apscheduler_crontab
from daemon.engine import replicate, watch
from daemon.engine.run import evaluate_alerts, run_policies
from daemon.engine.sweep import ResolvedPolicy, retry_policy
from daemon.service.courier import Courier

log = structlog.get_logger("cbr_replicator")

STOP_TIMEOUT = timedelta(seconds=90)  # in-flight work may finish; below TimeoutStopSec
# A work item that made no cloud call this long (stuck in one), or that is still calling this
# long after its cloud.sweep_deadline (calls refused, no progress), is hung.
HANG_AFTER = timedelta(minutes=15)
HEARTBEAT_EVERY_AT_MOST = timedelta(seconds=30)  # "last seen" of this instance (``status``)
TRACK_EVERY_AT_MOST = timedelta(minutes=1)
IDLE_TICK = 5.0  # seconds between main-loop rounds when there is no watchdog


# -- scheduling ----------------------------------------------------------------------------


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


# -- the daemon ----------------------------------------------------------------------------


def run_daemon(config_path: Path, *, log_format: str | None = None) -> int:
    """Load and check everything, then serve until SIGTERM/SIGINT; returns the exit code.
    ConfigError and LedgerError propagate (the CLI prints them and exits 78)."""
    loaded = load_settings(config_path)
    log_settings = loaded.settings.log
    configure_logging(log_format or log_settings.format, log_settings.level, stream=sys.stdout)
    for warning in loaded.warnings:
        log.warning("config_warning", problem=warning)
    notifier = Notifier()
    lock = None
    try:
        lock = InstanceLock.acquire(loaded.settings.ledger.url)
        daemon = Daemon(config_path, loaded, notifier, log_format=log_format, instance_lock=lock)
        return daemon.serve()
    except (ConfigError, LedgerError) as error:
        _notify_quietly(notifier, STATUS=f"failed to start: {error}")
        raise
    finally:
        if lock is not None:
            lock.release()


def _notify_quietly(notifier: Notifier, **fields: str | int) -> None:
    # STATUS= is shown by systemctl status to anyone: it may quote an error.
    fields = {k: redact_text(v) if isinstance(v, str) else v for k, v in fields.items()}
    try:
        notifier.notify(**fields)
    except OSError as error:
        log.warning("sd_notify_failed", error=str(error), fields=sorted(fields))


class Daemon:
    def __init__(
        self,
        config_path: Path,
        loaded: LoadedConfig,
        notifier: Notifier,
        *,
        log_format: str | None = None,
        instance_lock: InstanceLock | None = None,
    ) -> None:
        self.config_path = config_path
        self.log_format = log_format
        self.notifier = notifier
        self.instance_lock = instance_lock
        self._exit_code = exitcodes.OK  # not OK once a fatal problem stopped the daemon
        self.metrics = Metrics()
        self._stopping = threading.Event()  # set on SIGTERM: no new work, reads refused
        # Signal handlers only set these flags. A handler runs in the main thread between
        # two bytecodes, wherever that thread is, even inside another handler: one that took
        # a lock (Event.set) hung the daemon for good when the main loop held that lock at
        # the time (inside Event.wait or clear). The interpreter itself wakes the main loop,
        # by writing to a pipe (signal.set_wakeup_fd) before any handler runs.
        self._stop_signal: str | None = None
        self._reload_requested = False
        self._wake_read = -1  # the pipe's end the main loop waits on; made by serve()
        self._work_lock = threading.Lock()
        self._track_wanted = False  # the tracker found the work lock taken: its round is due
        self._progress = time.monotonic()
        self._deadline = float("inf")  # monotonic time the running work item's reads end
        self._working = False
        self._targets: dict[str, ResolvedPolicy] = {}
        self._snapshot = LedgerSnapshot()
        self._last_sweep: SweepReport | None = None
        self._metrics_server: MetricsServer | None = None
        self.app = self._build_app(loaded)
        self.engine = self._watched_engine(self.app)
        self.courier = Courier(lambda: self.app, self.metrics, self._stopping)
        self.scheduler = BackgroundScheduler(
            # Sweeps queue for one thread; the tracker has its own and skips a round while
            # a sweep runs (the sweep tracks its policy's jobs itself).
            executors={
                "default": ThreadPoolExecutor(max_workers=1),
                "tracker": ThreadPoolExecutor(max_workers=1),
                "heartbeat": ThreadPoolExecutor(max_workers=1),
            },
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=UTC,
        )

    @property
    def settings(self) -> Settings:
        return self.app.settings

    # -- lifecycle -------------------------------------------------------------------------
    def serve(self) -> int:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)  # set_wakeup_fd wants it so
        self._wake_read = wake_read
        # Before READY=1: a reload may follow it at once.
        previous, previous_wakeup_fd = self._install_signal_handlers(wake_write)
        try:
            try:
                self._start()
            except BaseException:
                self._close()
                raise
            self._main_loop()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            signal.set_wakeup_fd(previous_wakeup_fd)
            os.close(wake_read)
            os.close(wake_write)
        return self._stop()

    def _start(self) -> None:
        listen = self.settings.metrics.listen
        if listen:
            try:
                self._metrics_server = self.metrics.serve(listen)
            except (OSError, ValueError) as error:
                raise ConfigError([f"metrics.listen {listen}: cannot listen: {error}"]) from None
        self._read_ledger_history()
        self._refresh_snapshot(baseline=True)
        self._schedule(self.app.policies())
        self.scheduler.start()
        self.courier.start()
        policies = [policy.name for policy in self.app.policies()]
        if not policies:
            log.warning("no_enabled_policies", config=str(self.config_path))
        first = self._first_sweeps()
        log.info(
            "daemon_started",
            config=str(self.config_path),
            policies=policies,
            next_sweeps={name: _rfc3339(moment) for name, moment in first.items()},
            metrics=self._metrics_server.address if self._metrics_server else None,
            watchdog_seconds=self._watchdog_seconds(),
        )
        self._notify(READY=1, STATUS=self._status("idle"))
        self._sweep_at_once(first)

    def _main_loop(self) -> None:
        """Signals only set flags; everything they ask for happens here."""
        tick = min(self._watchdog_seconds() or IDLE_TICK, IDLE_TICK)
        while not self._stop_asked():
            self._check_instance_lock()
            self._keep_alive()
            self._sleep_until_signal(tick)
            if self._reload_requested and not self._stop_asked():
                self._reload_requested = False
                self._reload()

    def _sleep_until_signal(self, seconds: float) -> None:
        try:
            readable, _, _ = select.select([self._wake_read], [], [], seconds)
        except InterruptedError:  # pragma: no cover (PEP 475 retries; kept for safety)
            return
        if readable:
            with suppress(BlockingIOError):  # raised once drained
                while os.read(self._wake_read, 512):
                    pass

    def _check_instance_lock(self) -> None:
        if self.instance_lock is None:
            return
        try:
            restored = self.instance_lock.check()
        except (LedgerError, OSError) as error:
            self._fatal("instance_lock_lost", str(error))
            return
        if restored:
            log.warning(
                "instance_lock_restored",
                lock=str(self.instance_lock.path),
                detail="the lock file was deleted while the daemon ran; made and locked again",
            )

    def _fatal(self, event: str, error: str) -> None:
        """Stop the daemon with exit 78 (systemd does not restart it: it needs an operator).
        From any thread: the main loop sees the flag at its next round."""
        log.error(event, error=error)
        self._exit_code = exitcodes.CONFIG
        self._stop_signal = self._stop_signal or event

    def _keep_alive(self) -> None:
        """WATCHDOG=1, unless APScheduler's thread died or a work item hangs: then systemd
        restarts us after WatchdogSec."""
        if self.notifier.watchdog_interval is None:
            return
        hung = self._working and is_hung(time.monotonic(), self._progress, self._deadline)
        if not self.scheduler.running or hung:
            log.error("watchdog_withheld", scheduler_running=self.scheduler.running, hung=hung)
            return
        self._notify(WATCHDOG=1)

    def _watchdog_seconds(self) -> float | None:
        interval = self.notifier.watchdog_interval
        return interval.total_seconds() if interval is not None else None

    def _stop(self) -> int:
        self._notify(STOPPING=1, STATUS="stopping: finishing in-flight work")
        log.info("daemon_stopping", signal=self._stop_signal)
        self.courier.wake()  # it sees the stop and ends its loop
        self.scheduler.shutdown(wait=False)
        if not self._wait_for_work(STOP_TIMEOUT):
            log.warning("stop_timeout", seconds=STOP_TIMEOUT.total_seconds())
            # The work thread is still in a cloud call; every job it holds is safe to leave
            # (intent committed, lease expiring). A normal exit would wait for that thread.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(self._exit_code)
        try:
            self._forget_instance()
            self._close()
        finally:
            self._work_lock.release()
        log.info("daemon_stopped")
        return self._exit_code

    def _forget_instance(self) -> None:
        """A clean stop leaves no row in ``status``'s instances (a crash leaves one, shown
        as gone)."""
        try:
            self.app.ledger.forget_instance(self.engine.owner)
        except LedgerError as error:
            log.warning("instance_not_forgotten", error=str(error))

    def _close(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self._metrics_server is not None:
            self._metrics_server.close()
        self.app.close()

    def _wait_for_work(self, timeout: timedelta | None) -> bool:
        """Take the work lock (so no work item runs), keeping the watchdog fed meanwhile.
        False after ``timeout``, or (without a timeout) when a stop is asked for."""
        deadline = None if timeout is None else time.monotonic() + timeout.total_seconds()
        tick = min(self._watchdog_seconds() or 1.0, 1.0)
        while not self._work_lock.acquire(timeout=tick):
            self._keep_alive()
            if deadline is None and self._stop_asked():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    # -- signals ---------------------------------------------------------------------------
    def _install_signal_handlers(self, wake_fd: int) -> tuple[dict[int, Any], int]:
        previous_wakeup_fd = signal.set_wakeup_fd(wake_fd, warn_on_full_buffer=False)
        handlers: dict[int, Callable[[int, FrameType | None], None]] = {
            signal.SIGTERM: self._on_stop_signal,
            signal.SIGINT: self._on_stop_signal,
            signal.SIGHUP: self._on_reload_signal,
        }
        previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
        return previous, previous_wakeup_fd

    # A handler sets one flag, nothing else: no logging (the main thread may be inside a
    # write to the same stream), no lock. The main loop acts on the flags.
    def _on_stop_signal(self, number: int, _frame: FrameType | None) -> None:
        self._stop_signal = signal.Signals(number).name

    def _on_reload_signal(self, _number: int, _frame: FrameType | None) -> None:
        self._reload_requested = True

    def _stop_asked(self) -> bool:
        """Whether a stop signal came; in the main thread, it is passed on here to the event
        the work threads watch (a handler may not set it: Event.set takes a lock)."""
        if self._stop_signal is not None and not self._stopping.is_set():
            self._stopping.set()
            self.courier.wake()
        return self._stopping.is_set()

    # -- reload ----------------------------------------------------------------------------
    def _reload(self) -> None:
        self._notify(RELOADING=1, STATUS=f"reloading {self.config_path}")
        log.info("reload_started", config=str(self.config_path))
        new_app, problems = self._build_new_app()
        if new_app is None:
            for problem in problems:
                log.error("reload_config_problem", problem=problem)
            log.error("reload_rejected", detail="keeping the running configuration")
            self._notify(READY=1, STATUS=self._status("reload failed, running the previous config"))
            return
        if not self._wait_for_work(None):  # a stop came first
            new_app.close()
            return
        try:
            old = self.app
            changes = self._swap(new_app)
        finally:
            self._work_lock.release()
        old.close()
        log.info("reload_finished", **changes)
        self._notify(READY=1, STATUS=self._status("idle (reloaded)"))

    def _build_new_app(self) -> tuple[App | None, list[str]]:
        """The new config loaded, checked and built into new objects (the running ones are
        untouched), or None and every problem found."""
        try:
            loaded = load_settings(self.config_path)
            if loaded.settings.ledger.url != self.settings.ledger.url:
                return None, [
                    "ledger.url changed: a running daemon keeps its ledger; restart the "
                    "service (systemctl restart cbr-replicator) to use another one"
                ]
            return self._build_app(loaded, reuse=self.app), []
        except ConfigError as error:
            return None, list(error.problems)
        except LedgerError as error:
            return None, [str(error)]  # it names the ledger
        except Exception as error:  # an adapter refusing its settings: keep running
            return None, [f"{error.__class__.__name__}: {error}"]

    def _swap(self, new_app: App) -> dict[str, object]:
        """Under the work lock: the new objects replace the old, jobs follow the policies."""
        old_settings = self.settings
        # The ledger passes to the new App; closing the old one leaves it open.
        self.app.owns_ledger, new_app.owns_ledger = False, True
        self.app = new_app
        self.engine = self._watched_engine(new_app)
        self._targets.clear()
        changes = self._reschedule(old_settings, new_app.settings)
        log_settings = new_app.settings.log
        if log_settings != old_settings.log:
            configure_logging(
                self.log_format or log_settings.format, log_settings.level, stream=sys.stdout
            )
        if new_app.settings.metrics.listen != old_settings.metrics.listen:
            log.warning("metrics_listen_unchanged", detail="metrics.listen applies at restart")
        return changes

    # -- scheduling ------------------------------------------------------------------------
    def _schedule(self, policies: list[Policy]) -> None:
        for policy in policies:
            self._add_policy_job(policy)
        self._add_tracker(policies)
        self._add_heartbeat()

    def _add_policy_job(self, policy: Policy) -> None:
        # An interval policy sweeps at once when a reload changes its schedule (and at the
        # start, see ``_start``), then every interval: never a first silent interval (6 h with
        # ``6h``).
        first: dict[str, Any] = {}
        if policy.schedule.interval is not None and self.scheduler.running:
            first["next_run_time"] = datetime.now(UTC)
        self.scheduler.add_job(
            self._sweep_job,
            trigger=make_trigger(policy.schedule),
            args=[policy.name],
            id=f"policy:{policy.name}",
            name=f"sweep {policy.name}",
            replace_existing=True,
            misfire_grace_time=misfire_grace(policy.schedule),
            **first,
        )

    def _first_sweeps(self) -> dict[str, datetime | None]:
        """Each enabled policy's first sweep: now for an interval, its cron's next time."""
        now = datetime.now(UTC)
        found: dict[str, datetime | None] = {}
        for policy in self.app.policies():
            job = self.scheduler.get_job(f"policy:{policy.name}")
            found[policy.name] = (
                now if policy.schedule.interval is not None else getattr(job, "next_run_time", None)
            )
        return found

    def _sweep_at_once(self, first: dict[str, datetime | None]) -> None:
        """After READY (a reload may follow it at once): the interval policies' first runs."""
        for policy in self.app.policies():
            if policy.schedule.interval is not None and first.get(policy.name) is not None:
                self.scheduler.modify_job(f"policy:{policy.name}", next_run_time=first[policy.name])

    def _add_tracker(self, policies: list[Policy]) -> None:
        self.scheduler.add_job(
            self._track_job,
            trigger=IntervalTrigger(seconds=track_interval(policies).total_seconds()),
            id="tracker",
            name="track replications",
            executor="tracker",
            replace_existing=True,
            misfire_grace_time=60,
        )

    def _add_heartbeat(self) -> None:
        """The instance's row in the ledger, refreshed on a thread of its own: a long sweep
        (the tracker skips its rounds meanwhile) never makes a live instance look gone."""
        every = min(HEARTBEAT_EVERY_AT_MOST, self.settings.cloud.lease / 2)
        self.scheduler.add_job(
            self._heartbeat_job,
            trigger=IntervalTrigger(seconds=max(1.0, every.total_seconds())),
            id="heartbeat",
            name="instance heartbeat",
            executor="heartbeat",
            replace_existing=True,
            misfire_grace_time=60,
        )

    def _heartbeat_job(self) -> None:
        if self._stopping.is_set():
            return
        try:
            self.app.ledger.heartbeat(self.engine.owner, role="daemon", now=self.engine.now())
        except LedgerError as error:
            log.warning("heartbeat_failed", error=str(error))

    def _reschedule(self, old: Settings, new: Settings) -> dict[str, object]:
        before = {policy.name: policy for policy in old.policies if policy.enabled}
        after = {policy.name: policy for policy in new.policies if policy.enabled}
        removed = sorted(set(before) - set(after))
        for name in removed:
            self.scheduler.remove_job(f"policy:{name}")
        changed = sorted(
            name
            for name, policy in after.items()
            if name not in before or before[name].schedule != policy.schedule
        )
        for name in changed:
            self._add_policy_job(after[name])
        if track_interval(list(before.values())) != track_interval(list(after.values())):
            self._add_tracker(list(after.values()))
        return {"rescheduled": changed, "removed": removed}

    # -- work items ------------------------------------------------------------------------
    @contextmanager
    def _work(self, activity: str, *, wait: bool = True) -> Iterator[App | None]:
        """One work item: under the work lock, never after a stop, every failure logged.
        Yields None (do nothing) when stopping, or when busy and ``wait`` is False."""
        if not self._enter_work(wait):
            yield None
            return
        try:
            self._working, self._progress = True, time.monotonic()
            self._deadline = self._progress + self.settings.cloud.sweep_deadline.total_seconds()
            self._notify(STATUS=self._status(activity))
            try:
                yield self.app
            except CloudError as error:  # permission denied, cloud down: next run retries
                log.error("work_failed", work=activity, error=str(error), code=error.code)
            except ConfigError as error:  # e.g. an endpoint's certificate is not trusted
                log.error("work_failed", work=activity, error=str(error), code="config")
            except LedgerGoneError as error:  # never go on with an empty ledger
                self._fatal("ledger_gone", str(error))
            except Exception:
                log.exception("work_crashed", work=activity)
            finally:
                self._working = False
                self._refresh_snapshot()
                self._notify(STATUS=self._status("idle"))
        finally:
            self._work_lock.release()

    def _enter_work(self, wait: bool) -> bool:
        """Take the work lock unless stopping; a waiting thread gives up once stopping."""
        if not wait:
            taken = self._work_lock.acquire(blocking=False)
        else:
            taken = False
            while not taken and not self._stopping.is_set():
                taken = self._work_lock.acquire(timeout=0.5)
        if taken and self._stopping.is_set():
            self._work_lock.release()
            return False
        return taken

    def _sweep_job(self, name: str) -> None:
        with self._work(f"sweeping {name}") as app:
            policy = _enabled_policy(app, name) if app is not None else None
            if app is None or policy is None:
                return
            with bound_context(policy=name):
                run = run_policies(self.engine, [policy], role="daemon")
            for report in run.sweeps:
                self._record_sweep(report, policy)
                if report.error is None:
                    self.courier.ping_after(policy.name)
            self._targets.update(run.resolved)
            if self._track_wanted:
                self._track_round(app)
            self.courier.wake()

    def _record_sweep(self, report: SweepReport, policy: Policy) -> None:
        if report.error_reason == "leased":
            log.info("sweep_skipped", policy=policy.name, reason=report.error)
            self._follow_sweeper(policy.name, report.started_at)
            return
        self.metrics.record_sweep(report, policy.destination.region)
        self._last_sweep = report

    # -- failover (several instances on one ledger) ------------------------------------------
    def _follow_sweeper(self, name: str, skipped_at: datetime) -> None:
        """Another instance is sweeping this policy, so this run was skipped: look again every
        quarter lease until that instance has finished a sweep (this round is done) or its
        lease ran out without one (it died: this instance sweeps the round instead). A dead
        instance's policy is taken over about a lease after it stopped renewing, not at the
        next scheduled run, which may be hours away."""
        if self._stopping.is_set():
            return
        self.scheduler.add_job(
            self._takeover_job,
            trigger=DateTrigger(run_date=self.engine.now() + self.engine.lease / 4),
            args=[name, skipped_at],
            id=f"takeover:{name}",
            name=f"take {name} over if its sweeper stopped",
            replace_existing=True,
            misfire_grace_time=None,
        )

    def _takeover_job(self, name: str, skipped_at: datetime) -> None:
        if self._stopping.is_set():
            return
        try:
            last = self.app.ledger.last_sweeps().get(name)
        except LedgerError as error:
            log.warning("takeover_check_failed", policy=name, error=str(error))
            last = None
        if last is not None and last.finished_at is not None and last.finished_at >= skipped_at:
            return  # the other instance finished this round
        self._sweep_job(name)  # skipped again (and followed) while the holder's lease is live

    def _track_job(self) -> None:
        """The tracker's round. Its trigger fires when the sweeps' do (a policy swept every
        minute sweeps at the same moments as a 60 s tracker), so a busy work lock would make
        it skip forever: the round is then left to the work item holding the lock, which runs
        it before letting go."""
        with self._work("tracking replications", wait=False) as app:
            if app is None:
                self._track_wanted = True
                return
            self._track_round(app)

    def _track_round(self, app: App) -> None:
        """Follow running replications to their end; submit what is due (retries whose
        backoff ended, jobs waiting for a free slot) for the policies swept so far."""
        self._track_wanted = False
        # Seen alive by the other instances sharing the ledger (``status``).
        app.ledger.heartbeat(self.engine.owner, role="daemon", now=self.engine.now())
        self._track_replicating(app)
        for name, resolved in list(self._targets.items()):
            if _enabled_policy(app, name) is None:
                continue
            with bound_context(policy=name):
                report = replicate.submit_due(self.engine, resolved.target)
            region = resolved.target.destination.region
            self.metrics.count_replications(name, region, "submitted", report.submitted)
            self.metrics.count_replications(name, region, "failed", report.failed)
            evaluate_alerts(self.engine, resolved.policy)  # stuck, given up, rpo recovered
        self.courier.wake()

    def _track_replicating(self, app: App) -> None:
        retries = {policy.name: retry_policy(policy) for policy in app.settings.policies}
        manual = RetryPolicy(max_attempts=1)
        for jobs in replicate.replicating_batches(self.engine.ledger):
            by_policy: dict[str | None, list[Job]] = {}
            for job in jobs:
                by_policy.setdefault(job.policy, []).append(job)
            for policy, group in by_policy.items():
                retry = retries.get(policy, manual) if policy else manual
                with bound_context(policy=policy):
                    updated = replicate.track_jobs(self.engine, group, retry)
                self.metrics.record_failed_jobs(updated)

    # -- ledger figures and status ---------------------------------------------------------
    def _read_ledger_history(self) -> None:
        sweeps = self.app.ledger.last_sweeps()
        for report in sweeps.values():
            if report.error is None and report.finished_at is not None:
                self.metrics.record_last_success(report.policy, report.finished_at)
        finished = [report for report in sweeps.values() if report.finished_at is not None]
        self._last_sweep = max(finished, key=lambda r: r.finished_at or r.started_at, default=None)

    def _refresh_snapshot(self, *, baseline: bool = False) -> None:
        """Read the ledger's figures for the metrics and the status line; the first read
        (``baseline``) counts no job as newly finished."""
        ledger = self.app.ledger
        try:
            snapshot = LedgerSnapshot(
                jobs=ledger.job_counts(),
                replicated_bytes={
                    policy.name: ledger.traffic_bytes(policy=policy.name)
                    for policy in self.settings.policies
                },
                oldest_pending={
                    policy.name: ledger.oldest_pending_backup(policy.name)
                    for policy in self.app.policies()
                },
                alerts={policy.name: self._alert_facts(policy) for policy in self.app.policies()},
            )
        except LedgerError as error:
            log.error("ledger_read_failed", error=str(error))
            return
        if not baseline:
            regions = {policy.name: policy.destination.region for policy in self.settings.policies}
            self.metrics.record_ledger_changes(self._snapshot, snapshot, regions)
        self._snapshot = snapshot
        self.metrics.update_ledger(snapshot)

    def _alert_facts(self, policy: Policy) -> AlertFacts:
        ledger = self.app.ledger
        return AlertFacts(
            region=policy.destination.region,
            rpo=policy.rpo,
            window=ledger.replication_window(policy.name),
            stuck=len(watch.stuck_now(ledger, policy, self.engine.now())),
        )

    def _status(self, activity: str) -> str:
        return status_line(activity, self._snapshot, self._last_sweep)

    def _notify(self, **fields: str | int) -> None:
        _notify_quietly(self.notifier, **fields)

    # -- cloud -----------------------------------------------------------------------------
    def _build_app(self, loaded: LoadedConfig, reuse: App | None = None) -> App:
        return build_app(
            loaded,
            on_api_call=self.metrics.on_api_call,
            on_retry=self.metrics.on_retry,
            reuse=reuse,
        )

    def _watched_engine(self, app: App) -> replicate.Engine:
        """The app's engine with its cloud watched: every call counts as progress (for the
        watchdog) and, once stopping, reads are refused so a sweep ends at its next page."""
        cloud: Cloud = app.engine.cloud
        watched = WatchedCloud(cloud, on_call=self._on_cloud_call)
        return dataclasses.replace(app.engine, cloud=watched)

    def _on_cloud_call(self, mutating: bool) -> None:
        """A call is progress while the work item is within its deadline; past it, reads are
        refused (the item ends at its next page and the work lock is free for the others),
        and calls made anyway count for nothing: the hang watch sees no progress."""
        if self._stopping.is_set() and not mutating:
            raise TransientError("the daemon is stopping", code="daemon_stopping")
        now = time.monotonic()
        if now > self._deadline and not mutating:
            seconds = int(self.settings.cloud.sweep_deadline.total_seconds())
            raise TransientError(
                f"this work item ran past cloud.sweep_deadline ({seconds}s); it stops here and "
                "goes on at its next run, so the daemon's other work is not held up",
                code="sweep_deadline",
            )
        self._progress = now


def _rfc3339(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _enabled_policy(app: App, name: str) -> Policy | None:
    for policy in app.policies():
        if policy.name == name:
            return policy
    return None
