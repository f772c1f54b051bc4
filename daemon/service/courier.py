"""The daemon's notify thread: alert notifications and heartbeat pings, outside the work
lock, so a slow receiver holds up no sweep."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import structlog

from daemon.adapters.metrics import Metrics
from daemon.adapters.webhook import WebhookClient
from daemon.app import App
from daemon.engine.outbox import Outbox

log = structlog.get_logger("cbr_replicator")

COURIER_TICK = timedelta(minutes=1)  # notifications due for a retry go out this often at least


class Courier:
    """The notify thread: delivers the ledger's pending notifications and pings heartbeats,
    woken after each work item and at least every ``COURIER_TICK``. A slow or dead receiver
    holds up no sweep; a daemon thread, so it never delays the exit either (a notification
    cut off then stays pending, and goes out after its lease, from this or another process)."""

    def __init__(
        self, current_app: Callable[[], App], metrics: Metrics, stopping: threading.Event
    ) -> None:
        self._current_app = current_app
        self._metrics = metrics
        self._stopping = stopping
        self._client = WebhookClient()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._pings: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def ping_after(self, policy: str) -> None:
        """Ping the policy's heartbeat (it swept without error) at the next round."""
        with self._lock:
            self._pings.add(policy)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(COURIER_TICK.total_seconds())
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._round()
            except Exception:  # a notification never stops the daemon
                log.exception("notify_round_crashed")

    def _round(self) -> None:
        app = self._current_app()
        with self._lock:
            policies, self._pings = sorted(self._pings), set()
        outbox = Outbox(
            app.ledger, app.settings, self._client, owner=app.engine.owner, clock=app.engine.now
        )
        report = outbox.deliver_pending(stop=self._stopping.is_set)
        for outcome in ("delivered", "failed", "dropped"):
            self._metrics.count_notifications("webhook", outcome, getattr(report, outcome))
        for _url, result in outbox.ping_heartbeats(policies):
            self._metrics.count_notifications("heartbeat", "delivered" if result.ok else "failed")
