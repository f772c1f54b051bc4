"""What operators are told: after a sweep (and the daemon's tracking rounds), a policy's RPO,
stuck replications, given-up jobs and sweep health are evaluated against what the ledger last
recorded; each change is recorded once (compare and set, across processes and restarts) with
its notification, and logged. Notifications are then delivered from the ledger (an outbox),
and heartbeats pinged, by ``deliver_pending`` and ``ping_heartbeats``, which never raise for
a failed delivery: replication never waits on them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from daemon.adapters.logs import redact_text
from daemon.adapters.webhook import Delivery, WebhookClient, url_label
from daemon.core import alerts
from daemon.core.alerts import AlertChange, AlertKind, Observation, RpoStatus
from daemon.core.model import Job, JobState, SweepReport
from daemon.core.policy import Policy, Settings
from daemon.core.ports import Ledger, Notification
from daemon.core.settings import HeartbeatSettings, NotifySettings, WebhookSettings

log = structlog.get_logger("cbr_replicator")

MAX_ROUNDS = 6  # delivery rounds (each of notify.TRIES tries) before a notification is dropped
FIRST_ROUND_DELAY = timedelta(minutes=1)  # doubled per failed round, at most an hour
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
PAGE = 1000
SENDER = "cbr-replicator"
NO_WEBHOOK = "no webhook configured"

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Evaluation:
    """One policy's alert figures now, and the changes this evaluation recorded."""

    rpo: RpoStatus
    stuck: list[Job]
    changes: list[AlertChange] = field(default_factory=list)


# -- evaluating ----------------------------------------------------------------------------------


def rpo_now(ledger: Ledger, policy: Policy, now: datetime) -> RpoStatus:
    return alerts.rpo_status(ledger.replication_window(policy.name), policy.rpo, now)


def stuck_now(ledger: Ledger, policy: Policy, now: datetime) -> list[Job]:
    # Only the candidates are read: after a catch-up, thousands of jobs are replicating and
    # none of them stuck yet (reading them all was 0.45 s per evaluation at 10,000, issue 7).
    candidates = _all_jobs(
        ledger, JobState.REPLICATING, policy.name, unchanged_since=now - policy.stuck_after
    )
    return alerts.stuck_jobs(candidates, policy.stuck_after, now)


def evaluate_policy(
    ledger: Ledger, policy: Policy, now: datetime, report: SweepReport | None = None
) -> Evaluation:
    """Record and log what changed for ``policy``; ``report`` (a sweep's) also decides the
    policy's health, which a tracking round leaves alone."""
    region = policy.destination.region
    rpo = rpo_now(ledger, policy, now)
    stuck = stuck_now(ledger, policy, now)
    given_up = _all_jobs(ledger, JobState.GIVEN_UP, policy.name)
    observed: list[Observation] = [
        alerts.observe_rpo(policy.name, region, rpo),
        *alerts.observe_jobs(AlertKind.STUCK, stuck, region),
        *alerts.observe_jobs(AlertKind.GIVEN_UP, given_up, region),
        alerts.observe_budget(
            policy.name,
            region,
            ledger.budget_deferral(policy.name, now),
            policy.traffic_budget_per_day,
        ),
    ]
    kinds = [AlertKind.RPO, AlertKind.STUCK, AlertKind.GIVEN_UP, AlertKind.BUDGET]
    if report is not None and report.error_reason != "leased":  # another process swept it
        observed.append(
            alerts.observe_policy(policy.name, region, report.error_reason, report.error)
        )
        kinds.append(AlertKind.POLICY)
    found = alerts.changes(ledger.alert_states(policy.name), observed, kinds)
    drafts = [(change, None if change.quiet else _notification(change, now)) for change in found]
    applied = ledger.record_alerts(drafts, now)
    for change in applied:
        _log_change(change)
    quiet = sum(1 for change in applied if change.quiet and change.kind == AlertKind.GIVEN_UP)
    if quiet:
        log.info("alerts_baseline", policy=policy.name, given_up_jobs=quiet)
    return Evaluation(rpo=rpo, stuck=stuck, changes=applied)


def _all_jobs(
    ledger: Ledger, state: JobState, policy: str, *, unchanged_since: datetime | None = None
) -> list[Job]:
    found: list[Job] = []
    after_id = 0
    while True:
        page = ledger.jobs_in_states(
            {state}, limit=PAGE, after_id=after_id, policy=policy, unchanged_since=unchanged_since
        )
        found += page
        if len(page) < PAGE:
            return found
        after_id = max(job.id or 0 for job in page)


def _notification(change: AlertChange, now: datetime) -> Notification:
    event_id = uuid.uuid4().hex
    document = {
        "id": event_id,
        "source": SENDER,
        "event": change.event,
        "kind": str(change.kind),
        "subject": change.subject,
        "policy": change.policy,
        "destination_region": change.region,
        "previous": change.previous,
        "state": change.state,
        "at": now.isoformat(),
        "detail": dict(change.detail),
    }
    payload = redact_text(json.dumps(document, sort_keys=True, default=str))
    return Notification(
        event_id=event_id,
        event=change.event,
        subject=change.subject,
        policy=change.policy,
        payload=payload,
        created_at=now,
    )


def _log_change(change: AlertChange) -> None:
    if change.quiet:
        return
    fields = {
        "policy": change.policy,
        "region": change.region,
        "subject": change.subject,
        "previous": change.previous,
        "state": change.state,
        **{key: value for key, value in change.detail.items() if key != "since"},
    }
    getattr(log, change.level)(change.event, **fields)


# -- delivering ----------------------------------------------------------------------------------


def effective_notify(settings: Settings, policy_name: str) -> NotifySettings:
    """The policy's own webhook and heartbeat where it names them, else the global ones."""
    own = next((p.notify for p in settings.policies if p.name == policy_name), None)
    if own is None:
        return settings.notify
    return NotifySettings(
        webhook=own.webhook or settings.notify.webhook,
        heartbeat=own.heartbeat or settings.notify.heartbeat,
    )


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0  # pending again, for a later round
    dropped: int = 0


@dataclass
class Outbox:
    """Delivers the ledger's pending notifications to the webhooks of the settings."""

    ledger: Ledger
    settings: Settings
    client: WebhookClient
    owner: str
    clock: Clock

    def deliver_pending(
        self, limit: int = 100, stop: Callable[[], bool] = lambda: False
    ) -> DeliveryReport:
        """Send the due notifications one by one (each leased while it is sent), until none
        is due, ``limit`` were sent, or ``stop()`` says so."""
        report = DeliveryReport()
        for _ in range(limit):
            if stop():
                break
            now = self.clock()
            claimed = self.ledger.claim_notifications(
                owner=self.owner, now=now, lease_until=now + self._lease(), limit=1
            )
            if not claimed:
                break
            self._deliver(claimed[0], report)
        return report

    def _lease(self) -> timedelta:
        """Longer than a whole round of tries, so no other process sends it meanwhile."""
        settings = self.settings
        hooks = [
            settings.notify.webhook,
            *(p.notify.webhook for p in settings.policies if p.notify),
        ]
        longest = max((hook.timeout for hook in hooks if hook is not None), default=timedelta(0))
        return max(timedelta(minutes=5), 4 * longest)

    def _deliver(self, notification: Notification, report: DeliveryReport) -> None:
        assert notification.id is not None
        webhook = effective_notify(self.settings, notification.policy).webhook
        if webhook is None:
            self.ledger.finish_notification(
                notification.id, now=self.clock(), status="dropped", error=NO_WEBHOOK
            )
            return
        result = self.client.post_event(
            webhook.url,
            notification.payload.encode(),
            secret=webhook.secret.get_secret_value() if webhook.secret else None,
            timeout=webhook.timeout.total_seconds(),
            event=notification.event,
            delivery_id=notification.event_id,
        )
        self._record(notification, webhook, result, report)

    def _record(
        self,
        notification: Notification,
        webhook: WebhookSettings,
        result: Delivery,
        report: DeliveryReport,
    ) -> None:
        assert notification.id is not None
        now = self.clock()
        context = {
            "event_name": notification.event,
            "policy": notification.policy,
            "target": url_label(webhook.url),
            "tries": result.tries,
        }
        finish = self.ledger.finish_notification
        if result.ok:
            finish(notification.id, now=now, status="delivered")
            log.info("notification_sent", **context)
            report.delivered += 1
            return
        rounds = notification.attempts + 1
        if result.permanent or rounds >= MAX_ROUNDS:
            finish(notification.id, now=now, status="dropped", error=result.error)
            log.error("notification_dropped", error=result.error, rounds=rounds, **context)
            report.dropped += 1
            return
        retry_at = now + min(FIRST_ROUND_DELAY * 2 ** (rounds - 1), timedelta(hours=1))
        finish(
            notification.id, now=now, status="pending", error=result.error, next_attempt_at=retry_at
        )
        log.warning(
            "notification_failed", error=result.error, retry_at=retry_at.isoformat(), **context
        )
        report.failed += 1

    def ping_heartbeats(self, policies: Iterable[str]) -> list[tuple[str, Delivery]]:
        """Ping the heartbeat of each policy that just swept successfully (each URL once)."""
        urls: dict[str, HeartbeatSettings] = {}
        for name in policies:
            heartbeat = effective_notify(self.settings, name).heartbeat
            if heartbeat is not None:
                urls.setdefault(heartbeat.url, heartbeat)
        results = []
        for url in urls:
            result = self.client.ping(url, timeout=HEARTBEAT_TIMEOUT.total_seconds())
            if not result.ok:
                log.warning("heartbeat_failed", target=url_label(url), error=result.error)
            results.append((url, result))
        return results
