"""The daemon's work items, one at a time under the work lock: a policy's sweep, the takeover
of a dead sweeper's policy, the tracker's round, the heartbeat; and what they leave for
``status``, the metrics and the systemd status line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from daemon.adapters.logs import bound_context
from daemon.adapters.metrics import AlertFacts, LedgerSnapshot, Metrics
from daemon.adapters.systemd import SystemdNotifier
from daemon.app import App
from daemon.core import exitcodes
from daemon.core.errors import CloudError, ConfigError, LedgerError, LedgerGoneError, TransientError
from daemon.core.model import Job, SweepReport
from daemon.core.policy import Policy, Settings
from daemon.core.redaction import redact_text
from daemon.engine import alerting, submit, track
from daemon.engine.context import Engine
from daemon.engine.resolve import ResolvedPolicy, retry_policy
from daemon.engine.run import evaluate_alerts, run_policies
from daemon.service.courier import Courier
from daemon.service.scheduling import status_line


def rfc3339(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _enabled_policy(app: App, name: str) -> Policy | None:
    for policy in app.policies():
        if policy.name == name:
            return policy
    return None


log = structlog.get_logger("cbr_replicator")


def notify_quietly(notifier: SystemdNotifier, **fields: str | int) -> None:
    # STATUS= is shown by systemctl status to anyone: it may quote an error.
    fields = {k: redact_text(v) if isinstance(v, str) else v for k, v in fields.items()}
    try:
        notifier.notify(**fields)
    except OSError as error:
        log.warning("sd_notify_failed", error=str(error), fields=sorted(fields))


class DaemonWork:
    """The work items; ``Daemon`` adds the lifecycle, signals, reload and the schedule."""

    app: App
    engine: Engine
    courier: Courier
    metrics: Metrics
    notifier: SystemdNotifier
    scheduler: BackgroundScheduler
    _stopping: threading.Event
    _work_lock: threading.Lock
    _track_wanted: bool
    _progress: float
    _deadline: float
    _working: bool
    _targets: dict[str, ResolvedPolicy]
    _snapshot: LedgerSnapshot
    _last_sweep: SweepReport | None
    _exit_code: int
    _stop_signal: str | None

    @property
    def settings(self) -> Settings:
        return self.app.settings

    def _heartbeat_job(self) -> None:
        if self._stopping.is_set():
            return
        try:
            self.app.ledger.heartbeat(self.engine.owner, role="daemon", now=self.engine.now())
        except LedgerError as error:
            log.warning("heartbeat_failed", error=str(error))

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
                report = submit.submit_due(self.engine, resolved.target)
            region = resolved.target.destination.region
            self.metrics.count_replications(name, region, "submitted", report.submitted)
            self.metrics.count_replications(name, region, "failed", report.failed)
            evaluate_alerts(self.engine, resolved.policy)  # stuck, given up, rpo recovered
        self.courier.wake()

    def _track_replicating(self, app: App) -> None:
        retries = {policy.name: retry_policy(policy) for policy in app.settings.policies}
        manual = track.MANUAL_RETRY
        for jobs in track.replicating_batches(self.engine.ledger):
            by_policy: dict[str | None, list[Job]] = {}
            for job in jobs:
                by_policy.setdefault(job.policy, []).append(job)
            for policy, group in by_policy.items():
                retry = retries.get(policy, manual) if policy else manual
                with bound_context(policy=policy):
                    updated = track.track_jobs(self.engine, group, retry)
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
            stuck=len(alerting.stuck_now(ledger, policy, self.engine.now())),
        )

    def _status(self, activity: str) -> str:
        return status_line(activity, self._snapshot, self._last_sweep)

    def _notify(self, **fields: str | int) -> None:
        notify_quietly(self.notifier, **fields)

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

    def _fatal(self, event: str, error: str) -> None:
        """Stop the daemon with exit 78 (systemd does not restart it: it needs an operator).
        From any thread: the main loop sees the flag at its next round."""
        log.error(event, error=error)
        self._exit_code = exitcodes.CONFIG
        self._stop_signal = self._stop_signal or event
