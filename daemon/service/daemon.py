"""Daemon mode (``cbr-replicator`` with no command): APScheduler jobs for the policies and the
tracker, signals (TERM and INT stop, HUP reloads), sd_notify and the watchdog, the metrics
endpoint and the single-instance guard of a SQLite ledger (``instance_lock``). The only
package importing APScheduler. The work items are in ``work``, the signal flags in
``signals``.

Threads: the main thread runs the main loop (signals, reload, WATCHDOG=1); APScheduler's
thread fires the triggers; a sweep thread and a tracker thread run the work items, one at a
time under ``_work_lock``, so a reload swaps the configuration between two work items.
Sweeps call ``run_policies``, as ``--run-once`` does. A notify thread (``Courier``) sends the
alert notifications and heartbeat pings, outside the work lock (``service.courier``); the cloud is
wrapped in ``adapters.cloud.watched.WatchedCloud``, which counts the calls for the hang watch.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from daemon.adapters.cloud.watched import WatchedCloud
from daemon.adapters.instance_lock import InstanceLock
from daemon.adapters.logs import configure_logging
from daemon.adapters.metrics import LedgerSnapshot, Metrics, MetricsServer
from daemon.adapters.systemd import SystemdNotifier
from daemon.app import App, build_app
from daemon.config.load import LoadedConfig, load_settings
from daemon.core import exitcodes
from daemon.core.errors import ConfigError, LedgerError
from daemon.core.model import SweepReport
from daemon.core.policy import Policy, Settings
from daemon.core.ports import Cloud
from daemon.engine.context import Engine
from daemon.engine.resolve import ResolvedPolicy
from daemon.service.courier import Courier
from daemon.service.scheduling import is_hung, make_trigger, misfire_grace, track_interval
from daemon.service.signals import SignalFlags
from daemon.service.work import DaemonWork, notify_quietly, rfc3339

log = structlog.get_logger("cbr_replicator")

STOP_TIMEOUT = timedelta(seconds=90)  # in-flight work may finish; below TimeoutStopSec
HEARTBEAT_EVERY_AT_MOST = timedelta(seconds=30)  # "last seen" of this instance (``status``)
IDLE_TICK = 5.0  # seconds between main-loop rounds when there is no watchdog


# -- the daemon ----------------------------------------------------------------------------


def run_daemon(config_path: Path, *, log_format: str | None = None) -> int:
    """Load and check everything, then serve until SIGTERM/SIGINT; returns the exit code.
    ConfigError and LedgerError propagate (the CLI prints them and exits 78)."""
    loaded = load_settings(config_path)
    log_settings = loaded.settings.log
    configure_logging(log_format or log_settings.format, log_settings.level, stream=sys.stdout)
    for warning in loaded.warnings:
        log.warning("config_warning", problem=warning)
    notifier = SystemdNotifier()
    lock = None
    try:
        lock = InstanceLock.acquire(loaded.settings.ledger.url)
        daemon = Daemon(config_path, loaded, notifier, log_format=log_format, instance_lock=lock)
        return daemon.serve()
    except (ConfigError, LedgerError) as error:
        notify_quietly(notifier, STATUS=f"failed to start: {error}")
        raise
    finally:
        if lock is not None:
            lock.release()


class Daemon(DaemonWork, SignalFlags):
    def __init__(
        self,
        config_path: Path,
        loaded: LoadedConfig,
        notifier: SystemdNotifier,
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
            next_sweeps={name: rfc3339(moment) for name, moment in first.items()},
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

    # -- cloud -----------------------------------------------------------------------------
    def _build_app(self, loaded: LoadedConfig, reuse: App | None = None) -> App:
        return build_app(
            loaded,
            on_api_call=self.metrics.on_api_call,
            on_retry=self.metrics.on_retry,
            reuse=reuse,
        )

    def _watched_engine(self, app: App) -> Engine:
        """The app's engine with its cloud watched: every call counts as progress (for the
        watchdog) and, once stopping, reads are refused so a sweep ends at its next page."""
        cloud: Cloud = app.engine.cloud
        watched = WatchedCloud(cloud, on_call=self._on_cloud_call)
        return dataclasses.replace(app.engine, cloud=watched)
