"""The metrics endpoint answers ``/metrics`` only, on the address it was given."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from daemon.adapters.metrics import Metrics, MetricsServer
from tests.service.support import Service, web_south


@pytest.fixture
def served() -> Iterator[MetricsServer]:
    server = Metrics().serve("127.0.0.1:0")
    yield server
    server.close()


def status_of(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_metrics_are_at_metrics(served: MetricsServer) -> None:
    code, body = status_of(f"http://{served.address}/metrics")
    assert code == 200
    assert "cbr_replicator_sweeps_total" in body or "process_" in body
    assert status_of(f"http://{served.address}/metrics?name[]=x")[0] == 200


@pytest.mark.parametrize("path", ["/", "/index.html", "/metrics/", "/metricsx", "/../metrics"])
def test_any_other_path_is_not_found(served: MetricsServer, path: str) -> None:
    code, body = status_of(f"http://{served.address}{path}")
    assert code == 404
    assert "process_" not in body


def test_an_ipv6_listen_address_is_served() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        server = Metrics().serve("[::1]:0")
    except OSError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    try:
        assert server.address.startswith("[::1]:")
        assert status_of(f"http://{server.address}/metrics")[0] == 200
    finally:
        server.close()


def test_the_daemon_warns_when_its_metrics_listen_beyond_this_host(service: Service) -> None:
    service.write_config([web_south("1h")], metrics={"listen": "0.0.0.0:0"})
    daemon, _notify = service.start_ready()
    warning = daemon.wait_event("config_warning")
    assert "metrics.listen: serves the metrics beyond this host" in warning["problem"]
    assert warning["level"] == "warning"
