"""One run over a set of policies: sweep each, then (with ``--wait``) follow this run's
submissions until they finish. Daemon mode and ``--run-once`` both call ``run_policies``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from daemon.core.errors import CloudError, EndpointError, LedgerError, PermissionDeniedError
from daemon.core.model import LEASED, TERMINAL_STATES, JobState, SweepReport
from daemon.core.policy import Policy
from daemon.core.retrying import RetryPolicy
from daemon.engine import alerting, submit, track
from daemon.engine.context import Engine
from daemon.engine.resolve import ResolvedPolicy
from daemon.engine.scan import DecisionSink, ScanHook
from daemon.engine.sweep import sweep_policy

log = structlog.get_logger("cbr_replicator")


@dataclass
class RunReport:
    """Every policy's sweep report and the fate of the jobs this run submitted."""

    sweeps: list[SweepReport] = field(default_factory=list)
    resolved: dict[str, ResolvedPolicy] = field(default_factory=dict)
    failed_jobs: int = 0
    given_up_jobs: int = 0
    unfinished_jobs: int = 0
    cloud_unreachable: bool = False
    # CPU of this process (all its threads) while it swept and, with --wait, waited: the cost
    # of the work itself, without the interpreter's start and the imports (~1 s), which a
    # long-running service pays once.
    cpu_s: float = 0.0
    wall_s: float = 0.0  # the same span in elapsed time
    # The part of ``cpu_s`` spent by the thread that swept (and, with --wait, followed the
    # jobs): reading the ledger, deciding, writing the ledger; the listing calls and the
    # POSTs run on other threads.
    sweeping_thread_cpu_s: float = 0.0
    # Set when the cloud denied a call (``keep_denied``): the run stopped at that policy.
    permission_denied: PermissionDeniedError | None = None
    manual_jobs: bool = False  # this run follows the jobs of no policy too

    @property
    def policy_errors(self) -> list[SweepReport]:
        """Sweeps that failed; one skipped because another process sweeps it did not."""
        return [r for r in self.sweeps if r.error and r.error_reason != LEASED]


def run_policies(
    engine: Engine,
    policies: Sequence[Policy],
    *,
    dry_run: bool = False,
    sink: DecisionSink | None = None,
    role: str = "run-once",
    on_swept: Callable[[SweepReport], None] | None = None,
    on_scanned: ScanHook | None = None,
    keep_denied: bool = False,
    manual_jobs: bool = False,
) -> RunReport:
    """Sweep every given policy once (one after the other); a failing policy never stops
    the others. ``role`` is what ``status`` shows for this process among the instances.
    After each sweep its alert states are evaluated (``alerting``), then ``on_swept`` is called.
    A permission denied stops the run: raised, or with ``keep_denied`` reported as that
    policy's error and kept in ``permission_denied`` (so the caller can show what was done).
    ``manual_jobs``: also follow the replicating jobs of no policy (``follow_manual``), as
    ``wait_for_run`` then does too."""
    run = RunReport()
    if not dry_run:
        engine.ledger.heartbeat(engine.owner, role=role, now=engine.now())
    for policy in policies:
        try:
            report, resolved = sweep_policy(
                engine, policy, dry_run=dry_run, sink=sink, on_scanned=on_scanned
            )
        except PermissionDeniedError as denied:
            if not keep_denied:
                raise
            run.permission_denied = denied
            run.sweeps.append(_denied_report(engine, policy, denied))
            break
        if not dry_run:
            evaluate_alerts(engine, policy, report)
        if on_swept is not None:
            on_swept(report)
        run.sweeps.append(report)
        if resolved is not None:
            run.resolved[policy.name] = resolved
        if report.error and report.error_reason in _UNREACHABLE_CODES:
            run.cloud_unreachable = True
    run.manual_jobs = manual_jobs and not dry_run
    if run.manual_jobs and run.permission_denied is None:
        follow_manual(engine)
    return run


def follow_manual(engine: Engine) -> int:
    """Track the replicating jobs of no policy (``replicate-backup`` or ``-vault`` without
    ``--wait``): no sweep lists them, so without a daemon only a run brings them to an end.
    Returns how many still replicate; a cloud failure is logged and leaves them for later."""
    try:
        for jobs in track.replicating_batches(engine.ledger, manual=True):
            track.track_jobs(engine, jobs, track.MANUAL_RETRY)
    except PermissionDeniedError:
        raise
    except CloudError as error:
        log.warning("manual_tracking_failed", error=str(error))
    return engine.ledger.count_jobs({JobState.REPLICATING}, manual=True)


def _denied_report(engine: Engine, policy: Policy, denied: PermissionDeniedError) -> SweepReport:
    now = engine.now()
    return SweepReport(
        policy=policy.name,
        started_at=now,
        finished_at=now,
        error=str(denied),
        error_reason="permission_denied",
    )


def evaluate_alerts(engine: Engine, policy: Policy, report: SweepReport | None = None) -> None:
    """Record and announce the policy's alert changes; a ledger failure here is logged and
    never stops the run (the next evaluation sees the same changes)."""
    try:
        alerting.evaluate_policy(engine.ledger, policy, engine.now(), report)
    except LedgerError as error:
        log.error("alerts_failed", policy=policy.name, error=str(error))


# Errors that mean "the cloud did not answer" rather than "the cloud said no".
_UNREACHABLE_CODES = frozenset(
    {"ConnectionError", "TransientError", "APIGW.0308", "APIG.0308", "429", "ThrottledError"}
)


def wait_for_run(
    engine: Engine,
    run: RunReport,
    *,
    timeout: timedelta,
    poll_interval: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    on_round: Callable[[int], None] | None = None,
) -> None:
    """Track in-flight jobs of the swept policies until all are finished or the timeout
    passes; retries whose backoff ends meanwhile are submitted again. ``on_round(pending)``
    follows each round (the progress display); the alert states are evaluated at the end."""
    deadline = monotonic() + timeout.total_seconds()
    while True:
        remaining = timedelta(seconds=max(0.0, deadline - monotonic()))
        pending = _follow(engine, run, engine.now() + remaining)
        if on_round is not None:
            on_round(pending)
        if pending == 0 or monotonic() >= deadline:
            break
        sleep(poll_interval)
    count_outcomes(engine, run)
    for resolved in run.resolved.values():
        evaluate_alerts(engine, resolved.policy)


def _follow(engine: Engine, run: RunReport, wait_until: datetime) -> int:
    """One round: track replicating jobs, submit due ones; return how many are unfinished."""
    pending = 0
    engine.ledger.heartbeat(engine.owner, role="run-once", now=engine.now())
    for name, resolved in run.resolved.items():
        target = resolved.target
        try:
            _track_policy(engine, name, target.retry)
            submit.submit_due(engine, target)
        except (PermissionDeniedError, EndpointError):
            raise
        except CloudError as error:
            log.warning("wait_round_failed", policy=name, error=str(error))
        pending += engine.ledger.count_jobs(
            {JobState.QUEUED, JobState.SUBMITTING, JobState.REPLICATING}, policy=name
        )
        pending += _failed_due_before(engine, name, wait_until)
    return pending + (follow_manual(engine) if run.manual_jobs else 0)


def _track_policy(engine: Engine, policy: str, retry: RetryPolicy) -> None:
    """Every replicating job of the policy, a batch at a time."""
    for jobs in track.replicating_batches(engine.ledger, policy):
        track.track_jobs(engine, jobs, retry)


def _failed_due_before(engine: Engine, policy: str, moment: datetime) -> int:
    """Failed jobs whose retry comes before the wait ends are still pending (counted by the
    ledger: reading them was capped at 10,000, and a larger backlog ended the wait early)."""
    return engine.ledger.count_jobs({JobState.FAILED}, policy=policy, retry_due_by=moment)


def count_outcomes(engine: Engine, run: RunReport) -> None:
    """The run's policies' failed, given-up and unfinished jobs, as the ledger has them."""
    if run.manual_jobs:
        run.unfinished_jobs += engine.ledger.count_jobs({JobState.REPLICATING}, manual=True)
    for name in run.resolved:
        run.failed_jobs += engine.ledger.count_jobs({JobState.FAILED}, policy=name)
        run.given_up_jobs += engine.ledger.count_jobs({JobState.GIVEN_UP}, policy=name)
        run.unfinished_jobs += engine.ledger.count_jobs(
            set(JobState) - TERMINAL_STATES - {JobState.FAILED}, policy=name
        )
