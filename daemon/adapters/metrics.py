"""Prometheus metrics of the daemon (prometheus-client), served on ``metrics.listen``.

Counters and histograms are fed by the service as work happens; the figures that live in
the ledger (jobs by state, replicated bytes, the oldest backup still waiting) are read by the
service after each work item and handed over as a ``LedgerSnapshot``, so a scrape never
touches the database and never waits for a sweep.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.core import alerts
from daemon.core.alerts import ReplicationWindow
from daemon.core.model import Job, JobState, SweepReport

PREFIX = "cbr_replicator"
PATH = "/metrics"
MANUAL = "manual"  # the policy label of jobs made by replicate-backup/replicate-vault
SWEEP_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass(frozen=True)
class AlertFacts:
    """One policy's RPO and stuck figures; the RPO state is computed at scrape time."""

    region: str
    rpo: timedelta
    window: ReplicationWindow
    stuck: int = 0


@dataclass(frozen=True)
class LedgerSnapshot:
    """What the ledger says, read in one go by the service."""

    jobs: Mapping[tuple[str | None, JobState], int] = field(default_factory=dict)
    replicated_bytes: Mapping[str, int] = field(default_factory=dict)  # policy -> bytes
    oldest_pending: Mapping[str, datetime | None] = field(default_factory=dict)  # policy ->
    alerts: Mapping[str, AlertFacts] = field(default_factory=dict)  # policy ->


class _LedgerCollector(Collector):
    """Families computed at scrape time from the latest snapshot (ages from the clock)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot = LedgerSnapshot()

    def update(self, snapshot: LedgerSnapshot) -> None:
        with self._lock:
            self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        with self._lock:
            snapshot = self._snapshot
        jobs = GaugeMetricFamily(
            f"{PREFIX}_jobs", "Ledger jobs by policy and state", labels=["policy", "state"]
        )
        for (policy, state), count in sorted(snapshot.jobs.items(), key=_job_key):
            jobs.add_metric([policy or MANUAL, str(state)], count)
        yield jobs
        replicated = CounterMetricFamily(
            f"{PREFIX}_replicated_bytes",
            "Bytes of the source backups replicated successfully (from the ledger)",
            labels=["policy"],
        )
        for policy, count in sorted(snapshot.replicated_bytes.items()):
            replicated.add_metric([policy], count)
        yield replicated
        yield self._oldest_family(snapshot)
        yield from self._alert_families(snapshot)

    def _alert_families(self, snapshot: LedgerSnapshot) -> Iterator[GaugeMetricFamily]:
        labels = ["policy", "destination_region"]
        rpo = GaugeMetricFamily(f"{PREFIX}_rpo_seconds", "The policy's RPO", labels=labels)
        state = GaugeMetricFamily(
            f"{PREFIX}_rpo_state",
            "1 for the policy's RPO state now (ok, at_risk, breached), 0 for the others",
            labels=[*labels, "state"],
        )
        newest = GaugeMetricFamily(
            f"{PREFIX}_newest_replicated_backup_age_seconds",
            "Age of the newest source backup with a finished replica (absent: none yet)",
            labels=labels,
        )
        waiting = GaugeMetricFamily(
            f"{PREFIX}_oldest_waiting_backup_age_seconds",
            "Age of the oldest backup newer than the newest replica still without one (what "
            "the RPO state compares with the rpo); 0 when none waits",
            labels=labels,
        )
        stuck = GaugeMetricFamily(
            f"{PREFIX}_stuck_replications",
            "Replications whose record has not moved for the policy's stuck_after",
            labels=labels,
        )
        now = datetime.fromtimestamp(self._clock(), UTC)
        for policy, facts in sorted(snapshot.alerts.items()):
            status = alerts.rpo_status(facts.window, facts.rpo, now)
            key = [policy, facts.region]
            rpo.add_metric(key, facts.rpo.total_seconds())
            for name in alerts.RpoState:
                state.add_metric([*key, str(name)], 1.0 if status.state == name else 0.0)
            if status.newest_replicated_age is not None:
                newest.add_metric(key, status.newest_replicated_age.total_seconds())
            age = status.oldest_waiting_age or timedelta(0)
            waiting.add_metric(key, age.total_seconds())
            stuck.add_metric(key, facts.stuck)
        yield from (rpo, state, newest, waiting, stuck)

    def _oldest_family(self, snapshot: LedgerSnapshot) -> GaugeMetricFamily:
        oldest = GaugeMetricFamily(
            f"{PREFIX}_oldest_pending_backup_age_seconds",
            "Age of the oldest backup of the policy not yet replicated (the RPO exposure); "
            "0 when every backup is replicated",
            labels=["policy"],
        )
        now = self._clock()
        for policy, moment in sorted(snapshot.oldest_pending.items()):
            age = max(0.0, now - moment.timestamp()) if moment is not None else 0.0
            oldest.add_metric([policy], age)
        return oldest


def _job_key(item: tuple[tuple[str | None, JobState], int]) -> tuple[str, str]:
    (policy, state), _count = item
    return (policy or "", str(state))


class Metrics:
    """Every metric of one daemon, in its own registry (tests make several)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.replications = Counter(
            f"{PREFIX}_replications",
            "Replications by outcome while this process ran: submitted (by its sweeps and "
            "tracker), failed (a failed record or a refused submission), succeeded and "
            "given_up (jobs reaching that state in the ledger, adopted replicas included)",
            ["policy", "destination_region", "outcome"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            f"{PREFIX}_api_requests",
            "Cloud API requests by operation and outcome (ok, or the error class)",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.api_retries = Counter(
            f"{PREFIX}_api_retries",
            "Cloud API requests retried, by operation",
            ["operation"],
            registry=self.registry,
        )
        self.sweep_duration = Histogram(
            f"{PREFIX}_sweep_duration_seconds",
            "Duration of one policy sweep",
            ["policy"],
            buckets=SWEEP_BUCKETS,
            registry=self.registry,
        )
        self.sweeps = Counter(
            f"{PREFIX}_sweeps",
            "Policy sweeps by result (ok, or the error's reason code)",
            ["policy", "result"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            f"{PREFIX}_last_successful_sweep_timestamp_seconds",
            "Unix time of the policy's last sweep that ended without error",
            ["policy"],
            registry=self.registry,
        )
        self.notifications = Counter(
            f"{PREFIX}_notifications",
            "Webhook notifications and heartbeat pings by outcome (delivered, failed: tried "
            "again later, dropped)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self._ledger = _LedgerCollector(clock)
        self.registry.register(self._ledger)

    # -- feeding ---------------------------------------------------------------------------
    def record_sweep(self, report: SweepReport, destination_region: str) -> None:
        if report.finished_at is not None:
            seconds = (report.finished_at - report.started_at).total_seconds()
            self.sweep_duration.labels(report.policy).observe(max(0.0, seconds))
        self.sweeps.labels(report.policy, report.error_reason or "ok").inc()
        if report.error is None and report.finished_at is not None:
            self.last_success.labels(report.policy).set(report.finished_at.timestamp())
        if report.submitted:
            self.count_replications(
                report.policy, destination_region, "submitted", report.submitted
            )

    def record_last_success(self, policy: str, moment: datetime) -> None:
        self.last_success.labels(policy).set(moment.timestamp())

    def count_replications(self, policy: str, region: str, outcome: str, count: int = 1) -> None:
        if count:
            self.replications.labels(policy, region, outcome).inc(count)

    def record_failed_jobs(self, jobs: Iterable[Job]) -> None:
        """Jobs the tracker saw fail in the cloud (a failed replication record)."""
        for job in jobs:
            if job.state == JobState.FAILED:
                self.count_replications(job.policy or MANUAL, job.destination_region, "failed")

    def record_ledger_changes(
        self, before: LedgerSnapshot, after: LedgerSnapshot, regions: Mapping[str, str]
    ) -> None:
        """Jobs that reached succeeded or given_up between two snapshots, whoever moved them
        (the tracker, a sweep, or a ``--run-once`` beside the daemon). ``regions`` maps a
        policy to its destination region; manual jobs have none."""
        for (policy, state), count in after.jobs.items():
            if state not in (JobState.SUCCEEDED, JobState.GIVEN_UP):
                continue
            grown = count - before.jobs.get((policy, state), 0)
            region = regions.get(policy, "") if policy else ""
            if grown > 0:
                self.count_replications(policy or MANUAL, region, str(state), grown)

    def on_api_call(self, operation: str, outcome: str) -> None:
        self.api_requests.labels(operation, outcome).inc()

    def on_retry(self, operation: str) -> None:
        self.api_retries.labels(operation).inc()

    def count_notifications(self, kind: str, outcome: str, count: int = 1) -> None:
        if count:
            self.notifications.labels(kind, outcome).inc(count)

    def update_ledger(self, snapshot: LedgerSnapshot) -> None:
        self._ledger.update(snapshot)

    # -- serving ---------------------------------------------------------------------------
    def serve(self, listen: str) -> MetricsServer:
        """Listen on ``HOST:PORT`` (``[::1]:9687`` for IPv6; port 0 picks a free one)."""
        host, port = parse_listen(listen)
        server_class = _IPv6Server if ":" in host else _ThreadingServer
        server: WSGIServer = make_server(
            host, port, _only_metrics(make_wsgi_app(self.registry)), server_class, _QuietHandler
        )
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        return MetricsServer(server, thread)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape never holds up the daemon's exit


class _IPv6Server(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s is no news


def _only_metrics(app: Any) -> Any:
    """The endpoint is ``/metrics``; any other path is not found (the library's server
    answers the metrics on every path)."""

    def serve(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == PATH:
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found; the metrics are at {PATH}\n".encode()]

    return serve


@dataclass
class MetricsServer:
    server: Any
    thread: threading.Thread

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics.listen {listen!r}: write HOST:PORT, e.g. 127.0.0.1:9687")
    return host, int(port)
