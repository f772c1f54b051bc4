"""The Prometheus endpoint of a running daemon, scraped over HTTP."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.service.support import Service, web_south

POLICY = {"policy": "web-south"}
SOUTH = {"policy": "web-south", "destination_region": "cn-south-1"}


def scrape(address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return sum(count for (sample, _), count in samples.items() if sample == name)


def test_metrics_endpoint_serves_replications_jobs_sweeps_rpo_and_api_figures(
    service: Service,
) -> None:
    service.write_config([web_south("1s")], metrics={"listen": "127.0.0.1:0"})
    # Some list pages fail once with a 500: the adapter retries them.
    service.emulator.set_faults({"operations": {"list_backups": {"error_before_rate": 0.3}}})
    started = time.time()
    daemon, notify = service.start_ready()
    address = daemon.wait_event("daemon_started")["metrics"]
    daemon.wait_event("sweep_finished", policy="web-south", submitted=4)
    service.emulator.set_faults({})
    notify.drain()
    notify.wait_for("STATUS", "idle; 0 queued, 5 in flight")

    samples = scrape(address)
    replications = "cbr_replicator_replications_total"
    assert value(samples, replications, **SOUTH, outcome="submitted") == 4
    assert value(samples, replications, **SOUTH, outcome="succeeded") == 1  # adopted web-done
    assert value(samples, "cbr_replicator_jobs", **POLICY, state="replicating") == 5
    assert value(samples, "cbr_replicator_jobs", **POLICY, state="succeeded") == 1
    # The oldest backup waiting was made days ago (the scenario's dates): the RPO exposure.
    assert value(samples, "cbr_replicator_oldest_pending_backup_age_seconds", **POLICY) > 3600
    assert value(samples, "cbr_replicator_sweep_duration_seconds_count", **POLICY) >= 1
    assert 0 < value(samples, "cbr_replicator_sweep_duration_seconds_sum", **POLICY) < 20
    last_ok = value(samples, "cbr_replicator_last_successful_sweep_timestamp_seconds", **POLICY)
    assert started <= last_ok <= time.time()
    assert (
        value(samples, "cbr_replicator_api_requests_total", operation="list_backups", outcome="ok")
        >= 1
    )
    assert total(samples, "cbr_replicator_api_retries_total") >= 1
    assert (
        value(
            samples,
            "cbr_replicator_api_requests_total",
            operation="list_backups",
            outcome="TransientError",
        )
        >= 1
    )

    notify.drain()
    service.emulator.advance(3600)  # every replication finishes
    notify.wait_for("STATUS", "idle; 0 queued, 0 in flight")
    samples = scrape(address)
    assert value(samples, replications, **SOUTH, outcome="succeeded") == 6
    assert value(samples, replications, **SOUTH, outcome="submitted") == 4
    assert value(samples, "cbr_replicator_jobs", **POLICY, state="succeeded") == 6
    assert value(samples, "cbr_replicator_oldest_pending_backup_age_seconds", **POLICY) == 0
    assert value(samples, "cbr_replicator_replicated_bytes_total", **POLICY) >= 4 * 40 * 2**30
