"""What each CLI command does with a built ``App``, and how it prints: tables for people,
JSON with ``--json``. Exit codes follow docs/design.md §8."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.adapters.webhook import WebhookClient
from daemon.app import App, owner_gone
from daemon.cli.progress import Progress
from daemon.config.describe import format_duration
from daemon.core import exitcodes
from daemon.core.errors import (
    CloudError,
    Interrupted,
    LedgerError,
    PermissionDeniedError,
    RefusedError,
)
from daemon.core.model import (
    LEASED,
    TERMINAL_STATES,
    Backup,
    Decision,
    Job,
    JobState,
    Reason,
    SweepReport,
    Vault,
)
from daemon.core.policy import Policy
from daemon.core.ports import Notification
from daemon.core.redaction import redact_text
from daemon.core.traffic import GroupBy, group_traffic
from daemon.engine import alerting, manual, track
from daemon.engine.budget import day_bounds
from daemon.engine.resolve import resolve_policy
from daemon.engine.run import RunReport, count_outcomes, run_policies, wait_for_run
from daemon.service.outbox import NO_WEBHOOK, Outbox
from daemon.service.scheduling import next_sweep


def _out(line: str = "") -> None:
    print(line, flush=True)


def _json(value: object) -> None:
    print(json.dumps(value, indent=2, default=json_value, sort_keys=True), flush=True)


def json_value(value: object) -> object:
    """What JSON cannot hold as is: times in RFC 3339 (UTC, ``T`` and ``Z``, as the logs and
    webhooks write them), anything else as text."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


# -- check-config --cloud ------------------------------------------------------------------


def check_cloud(app: App) -> int:
    """Resolve every enabled policy against the cloud, as a sweep would, without scanning."""
    code = exitcodes.OK
    regions = sorted(
        {p.source.region for p in app.policies()} | {p.destination.region for p in app.policies()}
    )
    for scope, endpoint in app.endpoints(regions).items():
        _out(f"resolved endpoint {scope}: {endpoint}")
    for policy in app.policies():
        try:
            resolved = resolve_policy(app.engine, policy)
        except RefusedError as refusal:
            print(f"policy {policy.name}: {refusal}", file=sys.stderr)
            code = exitcodes.REPLICATION_FAILED
            continue
        target = resolved.target
        vaults = ", ".join(f"{vault.name} ({vault.id})" for vault in resolved.source_vaults)
        _out(
            f"policy {policy.name}: ok; source {target.source_region} project "
            f"{target.source_project_id} vaults {vaults}; destination "
            f"{target.destination.region} project {target.destination.project_id} vault "
            f"{target.destination.vault_id}"
        )
    return code


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
            _out(
                f"{'POLICY':<20} {'VAULT':<16} {'BACKUP':<38} {'ACTION':<8} "
                f"{'REASON':<{REASON_WIDTH}} NAME"
            )
            self.header_printed = True
        _out(
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
        _out(
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
        _json(document)
        return
    for report in run.sweeps:
        if report.error_reason == LEASED:  # exit 0: the other process is doing the work
            _out(f"policy {report.policy}: skipped: {report.error}")
            continue
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(report.reasons.items()))
        if report.error:
            print(f"policy {report.policy}: {report.error_reason}: {report.error}", file=sys.stderr)
        outcome = f"error {report.error_reason}" if report.error else "ok"
        _out(
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


# -- status and history --------------------------------------------------------------------


def status(app: App, *, as_json: bool) -> int:
    ledger = app.ledger
    now = app.engine.now()
    sweeps = ledger.last_sweeps()
    counts = ledger.job_counts()
    policies = [
        _policy_status(app, policy, sweeps.get(policy.name), counts, now)
        for policy in app.settings.policies
    ]
    alerts = [_notification_dict(item) for item in ledger.recent_notifications(limit=10)]
    manual_jobs = {str(state): counts.get((None, state), 0) for state in JobState}
    bindings: list[dict[str, Any]] = [
        {
            "source_vault_id": binding.source_vault_id,
            "source_vault_name": binding.source_vault_name,
            "destination_region": binding.destination_region,
            "destination_vault_id": binding.destination_vault_id,
            "origin": binding.origin,
            "created_at": binding.created_at,
            "state": binding.state,
        }
        for binding in ledger.list_bindings()
    ]
    instances: list[dict[str, Any]] = [
        {
            "owner": instance.owner,
            "role": instance.role,
            "started_at": instance.started_at,
            "last_seen_at": instance.last_seen_at,
            "leases": list(instance.leases),
            "jobs_leased": instance.jobs_leased,
            "gone": instance_gone(instance.owner, instance.last_seen_at, now),
        }
        for instance in ledger.instances(now)
    ]
    if as_json:
        _json(
            {
                "policies": policies,
                "manual_jobs": manual_jobs,
                "vault_bindings": bindings,
                "instances": instances,
                "recent_alerts": alerts,
            }
        )
        return exitcodes.OK
    for row in policies:
        _print_policy_status(row)
    manual_line = ", ".join(f"{state} {count}" for state, count in manual_jobs.items() if count)
    if manual_line:
        _out(f"manual jobs: {manual_line}")
    for binding in bindings:
        vault = binding["source_vault_name"] or binding["source_vault_id"]
        pending = " (intent: POST outcome unknown)" if binding["state"] == "intent" else ""
        _out(
            f"vault {vault} -> {binding['destination_region']} since "
            f"{_when(binding['created_at'])} by {binding['origin']}{pending}"
        )
    for instance in instances:
        holds = ", ".join(instance["leases"]) or "no sweep lease"
        gone = " (gone: it stopped without saying so)" if instance["gone"] else ""
        _out(
            f"instance {instance['owner']} ({instance['role']}): last seen "
            f"{_when(instance['last_seen_at'])}; holds {holds}, {instance['jobs_leased']} "
            f"job(s){gone}"
        )
    for alert in alerts:
        _out(
            f"alert {_when(alert['at'])} {alert['event']} {alert['subject']} "
            f"(notification {alert['delivery']})"
        )
    return exitcodes.OK


# A live instance is seen every half lease (the daemon) or at each step of a run: one not
# seen for this long, or whose process on this host is gone, was killed (a clean exit removes
# its row). Its row stays (marked) until the ledger forgets it, a week later.
INSTANCE_GONE_AFTER = timedelta(hours=1)


def instance_gone(owner: str, last_seen: datetime, now: datetime) -> bool:
    return owner_gone(owner) or now - last_seen > INSTANCE_GONE_AFTER


def _policy_status(
    app: App,
    policy: Policy,
    last: SweepReport | None,
    counts: dict[tuple[str | None, JobState], int],
    now: datetime,
) -> dict[str, Any]:
    ledger = app.ledger
    day_start, _ = day_bounds(now, policy.schedule.timezone)
    rpo = alerting.rpo_now(ledger, policy, now)
    budget = policy.traffic_budget_per_day
    last_result = None if last is None else (last.error_reason or "error") if last.error else "ok"
    return {
        "policy": policy.name,
        "enabled": policy.enabled,
        "destination_region": policy.destination.region,
        "last_sweep": last.finished_at if last else None,
        "last_result": last_result,
        "next_sweep": next_sweep(policy.schedule, last.started_at if last else None, now)
        if policy.enabled
        else None,
        "jobs": {str(state): counts.get((policy.name, state), 0) for state in JobState},
        "oldest_pending_backup": ledger.oldest_pending_backup(policy.name),
        "rpo": {
            "state": str(rpo.state),
            "rpo_seconds": int(rpo.rpo.total_seconds()),
            "newest_replicated_age_seconds": _seconds(rpo.newest_replicated_age),
            "oldest_waiting_age_seconds": _seconds(rpo.oldest_waiting_age),
        },
        "stuck": [
            {
                "backup_id": job.source_backup_id,
                "backup_name": job.backup_name,
                "since": job.updated_at,
            }
            for job in alerting.stuck_now(ledger, policy, now)
        ],
        "traffic_today_bytes": ledger.traffic_bytes(policy=policy.name, since=day_start),
        "traffic_total_bytes": ledger.traffic_bytes(policy=policy.name),
        "traffic_budget_per_day": budget,
        "traffic_budget_used_bytes": (
            ledger.submitted_bytes(policy=policy.name, since=day_start) if budget else None
        ),
    }


def _seconds(age: timedelta | None) -> int | None:
    return None if age is None else int(age.total_seconds())


def _print_policy_status(row: dict[str, Any]) -> None:
    jobs = ", ".join(f"{state} {count}" for state, count in row["jobs"].items() if count)
    last_sweep = f"{_when(row['last_sweep'])} ({row['last_result'] or 'never'})"
    if row["enabled"]:
        last_sweep += f", next {_when(row['next_sweep']) if row['next_sweep'] else 'at start'}"
    _out(
        f"{row['policy']} -> {row['destination_region']}: last sweep {last_sweep}; "
        f"jobs: {jobs or 'none'}; oldest pending backup {_when(row['oldest_pending_backup'])}"
    )
    rpo = row["rpo"]
    stuck = ", ".join(item["backup_id"] for item in row["stuck"]) or "none"
    _out(
        f"  rpo {rpo['state']} (rpo {_age(rpo['rpo_seconds'])}; newest replicated backup "
        f"{_age(rpo['newest_replicated_age_seconds'], ago=True)}, oldest waiting "
        f"{_age(rpo['oldest_waiting_age_seconds'], ago=True)}); stuck: {stuck}"
    )
    budget = row["traffic_budget_per_day"]
    used = (
        f" (budget: {_size(row['traffic_budget_used_bytes'])} of {_size(budget)} submitted)"
        if budget
        else ""
    )
    _out(
        f"  traffic today {_size(row['traffic_today_bytes'])}{used}, "
        f"total {_size(row['traffic_total_bytes'])}"
    )


def _age(seconds: int | None, *, ago: bool = False) -> str:
    if seconds is None:
        return "none"
    text = format_duration(timedelta(seconds=seconds))
    return f"{text} ago" if ago else text


def _notification_dict(item: Notification) -> dict[str, Any]:
    return {
        "at": item.created_at,
        "event": item.event,
        "subject": item.subject,
        "policy": item.policy,
        # Without a webhook a change is only recorded (and logged): nothing to deliver.
        "delivery": "none" if item.last_error == NO_WEBHOOK else item.status,
        "delivery_attempts": item.attempts,
        "delivery_error": item.last_error,
    }


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ") if moment else "-"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def history(app: App, *, backup: str | None, policy: str | None, limit: int, as_json: bool) -> int:
    configured = {known.name for known in app.settings.policies}
    # The text output labels the jobs of no policy [manual]: the same name selects them.
    manual_jobs = policy == manual.MANUAL and policy not in configured
    entries = app.ledger.history(
        source_backup_id=backup, policy=policy, limit=limit, manual=manual_jobs
    )
    if not entries:
        _refuse_empty_history(app, backup, policy, configured)
    if as_json:
        _json([_entry_dict(entry) for entry in entries])
        return exitcodes.OK
    for entry in entries:
        _out(
            f"{_when(entry.at)} {entry.source_backup_id} -> {entry.destination_region} "
            f"[{entry.policy or 'manual'}] {entry.outcome}"
            f"{' ' + entry.error_code if entry.error_code else ''}"
            f"{' request ' + entry.request_id if entry.request_id else ''}"
            f"{': ' + entry.error_message if entry.error_message else ''}"
        )
    return exitcodes.OK


def _refuse_empty_history(
    app: App, backup: str | None, policy: str | None, configured: set[str]
) -> None:
    """Nothing found: a name that the ledger and the config do not know is a typo, said so
    (an empty answer would read as "never replicated, all is well")."""
    if backup is not None and app.ledger.history(source_backup_id=backup, limit=1) == []:
        raise LookupError(f"no replication of backup {backup} in the ledger; check the id")
    unknown = policy is not None and policy not in configured and policy != manual.MANUAL
    if unknown and app.ledger.history(policy=policy, limit=1) == []:
        known = ", ".join(sorted(configured)) or "none"
        raise LookupError(
            f"no policy named {policy} in the config or the ledger; known: {known}, "
            f"or {manual.MANUAL}"
        )


def report_traffic(app: App, *, since: datetime, by: GroupBy, as_json: bool) -> int:
    """Bytes replicated since ``since``, as CBR bills them, grouped by day (UTC), policy or
    destination region."""
    rows = group_traffic(app.ledger.traffic_entries(since=since), by)
    total = sum(row.bytes for row in rows)
    if as_json:
        _json(
            {
                "since": since,
                "by": by,
                "rows": [
                    {by: row.key, "bytes": row.bytes, "replications": row.replications}
                    for row in rows
                ],
                "total_bytes": total,
                "total_replications": sum(row.replications for row in rows),
            }
        )
        return exitcodes.OK
    header = {"day": "DAY (UTC)", "policy": "POLICY", "region": "REGION"}[by]
    _out(f"traffic since {_when(since)}, as billed (each replication: its backup's size)")
    _out(f"{header:<24} {'REPLICATIONS':>12} {'SIZE':>12} {'BYTES':>18}")
    for row in rows:
        _out(f"{row.key:<24} {row.replications:>12} {_size(row.bytes):>12} {row.bytes:>18}")
    count = sum(row.replications for row in rows)
    _out(f"{'total':<24} {count:>12} {_size(total):>12} {total:>18}")
    return exitcodes.OK


def _entry_dict(entry: Any) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in entry.__slots__}


# -- manual commands -----------------------------------------------------------------------


def _source_region(app: App, given: str | None) -> str:
    if given:
        return given
    regions = {policy.source.region for policy in app.settings.policies}
    if len(regions) == 1:
        return regions.pop()
    raise ValueError(
        "--source-region is required: the policies use "
        + (", ".join(sorted(regions)) if regions else "no source region")
    )


def _request(app: App, args: argparse.Namespace) -> manual.ManualRequest:
    return manual.ManualRequest(
        source_region=_source_region(app, args.source_region),
        destination_region=args.to_region,
        destination_vault=args.to_vault,
        destination_project=args.to_project,
    )


def replicate_backup(app: App, args: argparse.Namespace) -> int:
    result = manual.replicate_backup(
        app.engine,
        _request(app, args),
        args.backup_id,
        name=args.name,
        description=args.description,
    )
    return _finish_manual(app, result, args)


def replicate_vault(app: App, args: argparse.Namespace) -> int:
    result = manual.replicate_vault(app.engine, _request(app, args), args.vault)
    return _finish_manual(app, result, args)


def _finish_manual(app: App, result: manual.ManualResult, args: argparse.Namespace) -> int:
    jobs = list(result.jobs)
    stopped: int | None = None  # the signal that stopped the wait
    if args.wait:
        try:
            jobs = _wait_jobs(app, jobs, args.wait_timeout)
        except KeyboardInterrupt as stop:
            stopped = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
            jobs = _jobs_now(app, jobs)
    if args.json:
        _json({"message": result.message, "jobs": [_job_dict(job) for job in jobs]})
    else:
        _out(result.message)
        for job in jobs:
            _out(
                f"  {job.source_backup_id} -> {job.destination_region}: {job.state}"
                f"{' (' + str(job.last_error_code) + ')' if job.last_error_code else ''}"
            )
    if stopped is not None:
        print(
            f"cbr-replicator: stopped waiting ({signal.Signals(stopped).name}); the "
            "replications go on in the cloud, and status or the next run follows them",
            file=sys.stderr,
            flush=True,
        )
        return exitcodes.signalled(stopped)
    if any(job.state in (JobState.FAILED, JobState.GIVEN_UP) for job in jobs):
        return exitcodes.REPLICATION_FAILED
    if args.wait and any(job.state not in TERMINAL_STATES for job in jobs):
        return exitcodes.WAIT_TIMED_OUT
    return exitcodes.OK


def _jobs_now(app: App, jobs: Iterable[Job]) -> list[Job]:
    """The jobs as the ledger has them (the last known state where it cannot be read)."""
    try:
        current = [(job, app.ledger.get_job(*job.key)) for job in jobs]
    except LedgerError:
        return list(jobs)
    return [now or before for before, now in current]


def _job_dict(job: Job) -> dict[str, Any]:
    return {
        "source_backup_id": job.source_backup_id,
        "destination_region": job.destination_region,
        "state": str(job.state),
        "replication_record_id": job.replication_record_id,
        "replica_backup_id": job.replica_backup_id,
        "replica_name": job.replica_name,
        "last_error_code": job.last_error_code,
    }


def _wait_jobs(app: App, jobs: Iterable[Job], timeout: timedelta) -> list[Job]:
    """Poll the manual jobs until they succeed or fail, or the timeout passes."""
    from daemon.core.retrying import RetryPolicy

    deadline = time.monotonic() + timeout.total_seconds()
    keys = [job.key for job in jobs]
    while True:
        current = [app.ledger.get_job(*key) for key in keys]
        live = [job for job in current if job is not None]
        if all(job.state != JobState.REPLICATING for job in live) or time.monotonic() >= deadline:
            return live
        try:
            track.track_jobs(app.engine, live, RetryPolicy(max_attempts=1))
        except PermissionDeniedError:
            raise
        except CloudError as error:
            print(f"waiting: {error}", file=sys.stderr)
        time.sleep(1.0)


def retry(app: App, backup_id: str, region: str) -> int:
    job = manual.retry_job(app.engine, backup_id, region)
    _out(f"backup {backup_id} -> {region}: {job.state}; the next run submits it")
    return exitcodes.OK
