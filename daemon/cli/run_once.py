"""``--run-once`` (and ``--dry-run``): one sweep of the chosen policies, the live progress,
the decisions table, the report, the exit code; a stop signal reports what was done.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from daemon.adapters.webhook import WebhookClient
from daemon.app import App
from daemon.cli.output import out, print_json_document
from daemon.cli.progress import Progress
from daemon.core import exitcodes
from daemon.core.errors import Interrupted, LedgerError, PermissionDeniedError
from daemon.core.model import LEASED, Backup, Decision, JobState, Reason, SweepReport, Vault
from daemon.core.policy import Policy
from daemon.core.redaction import redact_text
from daemon.engine.outbox import Outbox
from daemon.engine.run import RunReport, count_outcomes, run_policies, wait_for_run

# -- --run-once ----------------------------------------------------------------------------


REASON_WIDTH = max(len(reason) for reason in Reason)  # the dry-run table's column fits any


class _DecisionPrinter:
    """``--dry-run`` output: one row per backup (a table, or JSON lines collected)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.rows: list[dict[str, Any]] = []
        self.header_printed = False

    def __call__(self, policy: Policy, vault: Vault, backup: Backup, decision: Decision) -> None:
        row = {
            "policy": policy.name,
            "vault": vault.name,
            "backup_id": backup.id,
            "backup_name": backup.name,
            "action": str(decision.action),
            "reason": str(decision.reason),
        }
        if self.as_json:
            self.rows.append(row)
            return
        if not self.header_printed:
            out(
                f"{'POLICY':<20} {'VAULT':<16} {'BACKUP':<38} {'ACTION':<8} "
                f"{'REASON':<{REASON_WIDTH}} NAME"
            )
            self.header_printed = True
        out(
            f"{policy.name:<20} {vault.name:<16} {backup.id:<38} {row['action']:<8} "
            f"{row['reason']:<{REASON_WIDTH}} {backup.name}"
        )


def run_once(
    app: App,
    *,
    policies: list[str] | None,
    dry_run: bool,
    wait: bool,
    wait_timeout: timedelta,
    as_json: bool,
) -> int:
    chosen = app.policies(policies)
    if not chosen:
        print(
            f"warning: {app.loaded.path}: no enabled policy, nothing to sweep; add one under "
            "policies: (or in policies_dir), or set enabled: true",
            file=sys.stderr,
        )
    printer = _DecisionPrinter(as_json) if dry_run else None
    progress = Progress(sys.stderr, len(chosen))
    progress.enabled = progress.enabled and not dry_run  # a dry run prints its own table
    # The progress only counts: a decision sink would build every backup a sweep lists.
    on_scanned = progress.scanned_some if progress.enabled else None
    swept: list[SweepReport] = []

    def on_swept(report: SweepReport) -> None:
        swept.append(report)
        progress.swept_one(report)

    started_cpu, started = time.process_time(), time.monotonic()
    started_thread_cpu = time.thread_time()
    run: RunReport | None = None
    stopped: int | None = None  # the signal that stopped the run
    try:
        try:
            run = run_policies(
                app.engine,
                chosen,
                dry_run=dry_run,
                sink=printer,
                on_swept=on_swept,
                on_scanned=on_scanned,
                keep_denied=True,
                manual_jobs=True,
            )
            if wait and not dry_run and run.permission_denied is None:
                finished = _finished_counter(app, [policy.name for policy in chosen])
                wait_for_run(
                    app.engine,
                    run,
                    timeout=wait_timeout,
                    on_round=lambda pending: progress.waiting(pending, finished()),
                )
        finally:
            progress.close()
    except KeyboardInterrupt as stop:
        # Every job is in the ledger (an intent before each POST): stopping loses nothing,
        # the next run or the daemon goes on. Say what is known, and exit 128 + signal.
        stopped = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
        run = _run_so_far(app, run, swept, waiting=wait and not dry_run)
    run.cpu_s, run.wall_s = time.process_time() - started_cpu, time.monotonic() - started
    run.sweeping_thread_cpu_s = time.thread_time() - started_thread_cpu
    if not dry_run and stopped is None:
        _send_notifications(app, run)  # when stopped, the outbox keeps them for the next run
    _print_run(app, run, printer, as_json=as_json, dry_run=dry_run, stopped=stopped)
    if run.permission_denied is not None and stopped is None:
        print(redact_text(denied_message(run.permission_denied)), file=sys.stderr)
        return exitcodes.NO_PERMISSION
    # A run stopped while sweeping has no wait to report (nor resolved policies to count).
    if wait and not dry_run and not as_json and (stopped is None or run.resolved):
        when = "after waiting" if stopped is None else "when stopped"
        out(
            f"{when}: {run.failed_jobs} failed, {run.given_up_jobs} given up, "
            f"{run.unfinished_jobs} unfinished (see status and history)"
        )
    if stopped is not None:
        _report_stop(stopped, chosen, run)
        return exitcodes.signalled(stopped)
    return _run_exit_code(run, waited=wait and not dry_run)


def _run_so_far(
    app: App, run: RunReport | None, swept: list[SweepReport], *, waiting: bool
) -> RunReport:
    """The report of a run a signal stopped: the policies swept so far and, when it was
    waiting, the jobs' states as the ledger has them."""
    if run is None:
        return RunReport(sweeps=list(swept))
    if waiting:
        try:
            count_outcomes(app.engine, run)
        except LedgerError as error:
            print(f"cannot count the jobs: {error}", file=sys.stderr)
    return run


def _report_stop(signum: int, chosen: list[Policy], run: RunReport) -> None:
    name = signal.Signals(signum).name
    done = {report.policy for report in run.sweeps}
    not_swept = [policy.name for policy in chosen if policy.name not in done]
    where = f"before sweeping {', '.join(not_swept)}" if not_swept else "while waiting"
    print(
        f"cbr-replicator: stopped by {name} {where}; nothing is lost: every job is in the "
        "ledger, and the next run (or the daemon) goes on from there",
        file=sys.stderr,
        flush=True,
    )


def denied_message(error: PermissionDeniedError) -> str:
    return (
        f"permission denied by the cloud: {error}; check the access key, secret key "
        "and the IAM permissions listed in the README"
    )


def _finished_counter(app: App, names: list[str]) -> Callable[[], int]:
    """Jobs of these policies that reached an end state since this call (the progress)."""
    ends = {JobState.SUCCEEDED, JobState.GIVEN_UP}

    def count() -> int:
        return sum(app.ledger.count_jobs(ends, policy=name) for name in names)

    baseline = count()
    return lambda: count() - baseline


def _send_notifications(app: App, run: RunReport) -> None:
    """Deliver what this run's alert changes queued, and ping the heartbeats of the policies
    that swept without error. A failure is logged; it never changes the exit code."""
    outbox = Outbox(
        app.ledger, app.settings, WebhookClient(), owner=app.engine.owner, clock=app.engine.now
    )
    outbox.deliver_pending()
    outbox.ping_heartbeats(report.policy for report in run.sweeps if report.error is None)


def _print_run(
    app: App,
    run: RunReport,
    printer: _DecisionPrinter | None,
    *,
    as_json: bool,
    dry_run: bool,
    stopped: int | None = None,
) -> None:
    if as_json:
        document: dict[str, Any] = {
            "dry_run": dry_run,
            "policies": [_sweep_dict(r) for r in run.sweeps],
        }
        if stopped is not None:
            document["stopped_by"] = signal.Signals(stopped).name
        if printer is not None:
            document["decisions"] = printer.rows
        document["jobs"] = {
            "failed": run.failed_jobs,
            "given_up": run.given_up_jobs,
            "unfinished": run.unfinished_jobs,
        }
        document["cpu_s"] = round(run.cpu_s, 3)
        document["wall_s"] = round(run.wall_s, 3)
        document["sweeping_thread_cpu_s"] = round(run.sweeping_thread_cpu_s, 3)
        print_json_document(document)
        return
    for report in run.sweeps:
        if report.error_reason == LEASED:  # exit 0: the other process is doing the work
            out(f"policy {report.policy}: skipped: {report.error}")
            continue
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(report.reasons.items()))
        if report.error:
            print(f"policy {report.policy}: {report.error_reason}: {report.error}", file=sys.stderr)
        outcome = f"error {report.error_reason}" if report.error else "ok"
        out(
            f"policy {report.policy}: {outcome}; "
            f"{report.backups_seen} backups seen ({reasons or 'none'}); "
            f"{report.enqueued} queued, {report.adopted} adopted, {report.submitted} submitted"
        )


def _sweep_dict(report: Any) -> dict[str, Any]:
    return {
        "policy": report.policy,
        "backups_seen": report.backups_seen,
        "reasons": dict(report.reasons),
        "enqueued": report.enqueued,
        "adopted": report.adopted,
        "submitted": report.submitted,
        "error": report.error,
        "error_reason": report.error_reason,
    }


def _run_exit_code(run: RunReport, *, waited: bool = False) -> int:
    if run.cloud_unreachable:
        return exitcodes.UNAVAILABLE
    if run.policy_errors or run.given_up_jobs or run.failed_jobs:
        return exitcodes.REPLICATION_FAILED
    if waited and run.unfinished_jobs:
        return exitcodes.WAIT_TIMED_OUT
    return exitcodes.OK
