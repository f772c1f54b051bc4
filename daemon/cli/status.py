"""The reading commands: ``status`` (policies, jobs, instances, notifications), ``history``
and ``report traffic``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from daemon.app import App, owner_gone
from daemon.cli.output import age_text, out, print_json_document, size_text, when, whole_seconds
from daemon.core import exitcodes
from daemon.core.model import JobState, SweepReport
from daemon.core.policy import Policy
from daemon.core.ports import Notification
from daemon.core.traffic import GroupBy, group_traffic
from daemon.engine import alerting, manual
from daemon.engine.budget import day_bounds
from daemon.engine.outbox import NO_WEBHOOK
from daemon.service.scheduling import next_sweep

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
        print_json_document(
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
        out(f"manual jobs: {manual_line}")
    for binding in bindings:
        vault = binding["source_vault_name"] or binding["source_vault_id"]
        pending = " (intent: POST outcome unknown)" if binding["state"] == "intent" else ""
        out(
            f"vault {vault} -> {binding['destination_region']} since "
            f"{when(binding['created_at'])} by {binding['origin']}{pending}"
        )
    for instance in instances:
        holds = ", ".join(instance["leases"]) or "no sweep lease"
        gone = " (gone: it stopped without saying so)" if instance["gone"] else ""
        out(
            f"instance {instance['owner']} ({instance['role']}): last seen "
            f"{when(instance['last_seen_at'])}; holds {holds}, {instance['jobs_leased']} "
            f"job(s){gone}"
        )
    for alert in alerts:
        out(
            f"alert {when(alert['at'])} {alert['event']} {alert['subject']} "
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
            "newest_replicated_age_seconds": whole_seconds(rpo.newest_replicated_age),
            "oldest_waiting_age_seconds": whole_seconds(rpo.oldest_waiting_age),
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


def _print_policy_status(row: dict[str, Any]) -> None:
    jobs = ", ".join(f"{state} {count}" for state, count in row["jobs"].items() if count)
    last_sweep = f"{when(row['last_sweep'])} ({row['last_result'] or 'never'})"
    if row["enabled"]:
        last_sweep += f", next {when(row['next_sweep']) if row['next_sweep'] else 'at start'}"
    out(
        f"{row['policy']} -> {row['destination_region']}: last sweep {last_sweep}; "
        f"jobs: {jobs or 'none'}; oldest pending backup {when(row['oldest_pending_backup'])}"
    )
    rpo = row["rpo"]
    stuck = ", ".join(item["backup_id"] for item in row["stuck"]) or "none"
    out(
        f"  rpo {rpo['state']} (rpo {age_text(rpo['rpo_seconds'])}; newest replicated backup "
        f"{age_text(rpo['newest_replicated_age_seconds'], ago=True)}, oldest waiting "
        f"{age_text(rpo['oldest_waiting_age_seconds'], ago=True)}); stuck: {stuck}"
    )
    budget = row["traffic_budget_per_day"]
    used = (
        f" (budget: {size_text(row['traffic_budget_used_bytes'])} of {size_text(budget)} submitted)"
        if budget
        else ""
    )
    out(
        f"  traffic today {size_text(row['traffic_today_bytes'])}{used}, "
        f"total {size_text(row['traffic_total_bytes'])}"
    )


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
        print_json_document([_entry_dict(entry) for entry in entries])
        return exitcodes.OK
    for entry in entries:
        out(
            f"{when(entry.at)} {entry.source_backup_id} -> {entry.destination_region} "
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
        print_json_document(
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
    out(f"traffic since {when(since)}, as billed (each replication: its backup's size)")
    out(f"{header:<24} {'REPLICATIONS':>12} {'SIZE':>12} {'BYTES':>18}")
    for row in rows:
        out(f"{row.key:<24} {row.replications:>12} {size_text(row.bytes):>12} {row.bytes:>18}")
    count = sum(row.replications for row in rows)
    out(f"{'total':<24} {count:>12} {size_text(total):>12} {total:>18}")
    return exitcodes.OK


def _entry_dict(entry: Any) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in entry.__slots__}
