"""Delivering what operators are told: notifications from the ledger's outbox to the
webhook, and heartbeat pings; a failed delivery is retried in rounds and never raised, so
replication never waits on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from daemon.core.policy import Settings
from daemon.core.ports import AlertsLedger, Delivery, Notification, Notifier
from daemon.core.redaction import url_label
from daemon.core.settings import HeartbeatSettings, NotifySettings, WebhookSettings
from daemon.engine.alerting import Clock

log = structlog.get_logger("cbr_replicator")

MAX_ROUNDS = 6  # delivery rounds (each of notify.TRIES tries) before a notification is dropped
FIRST_ROUND_DELAY = timedelta(minutes=1)  # doubled per failed round, at most an hour
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
NO_WEBHOOK = "no webhook configured"


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

    ledger: AlertsLedger
    settings: Settings
    client: Notifier
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
