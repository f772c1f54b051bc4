"""``cloud.proxy`` carries every request, to https:// and http:// endpoints alike (the SDK
hands requests its proxy for https:// only): through the real SDK, an HTTP proxy in the test
in front of the emulator sees the adapter's calls."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from daemon.adapters.cloud.client import HuaweiCloud
from daemon.adapters.cloud.options import CloudOptions, Credentials
from daemon.emulator import Emulator
from tests.engine.harness import one_vault_scenario, server_backup

SOURCE, DEST = "cn-north-4", "cn-south-1"


class ForwardProxy(BaseHTTPRequestHandler):
    """A plain HTTP forward proxy: absolute-URI requests, passed on unchanged."""

    protocol_version = "HTTP/1.1"
    seen: list[str]

    def _forward(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        target = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=10)
        path = target.path + (f"?{target.query}" if target.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
        upstream.request(self.command, path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = _forward

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def proxy() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Proxy", (ForwardProxy,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_proxy_carries_calls_to_an_http_endpoint(proxy: tuple[str, list[str]]) -> None:
    url, seen = proxy
    scenario = one_vault_scenario(SOURCE, DEST, [server_backup("web-1")])
    with Emulator(scenario, clock="manual") as emulator:
        assert emulator.url.startswith("http://")
        cloud = HuaweiCloud(
            Credentials(
                access_key=SecretStr(emulator.access_key),
                secret_key=SecretStr(emulator.secret_key),
                domain_id=emulator.domain_id,
            ),
            CloudOptions(
                cbr_endpoints={},
                all_regions_endpoint=emulator.url,
                proxy=url,
                read_timeout=timedelta(seconds=5),
                read_attempts=1,
            ),
            sleep=lambda seconds: None,
        )
        project = cloud.resolve_project(SOURCE)  # IAM
        vault = cloud.find_vault(SOURCE, project, "web-prod")  # CBR
        assert vault.name == "web-prod"
        assert any("/v3/projects" in line for line in seen), seen
        assert any(f"/v3/{project}/vaults" in line for line in seen), seen
        assert len(seen) == len(emulator.requests())  # every call went through it
