"""Helpers for the emulator tests: the demo scenario path, SDK clients, a signed raw client."""

from __future__ import annotations

import http.client
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from huaweicloudsdkcbr.v1 import CbrClient
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig

from daemon.emulator import Emulator
from daemon.emulator.auth import canonical_request, sign

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo-cloud.yaml"


def make_cbr(emu: Emulator, region: str, project: str | None = None, sk: str | None = None) -> Any:
    """A real SDK client for one region's project, pointed at the emulator."""
    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    config.timeout = (5, 10)
    credentials = BasicCredentials(
        emu.access_key, sk or emu.secret_key, emu.project_id(region, project)
    )
    return (
        CbrClient.new_builder()
        .with_http_config(config)
        .with_credentials(credentials)
        .with_endpoints([emu.url])
        .build()
    )


class RawClient:
    """A hand-signed http.client caller, to see exactly what goes over the wire."""

    def __init__(self, emu: Emulator, timeout: float = 5.0) -> None:
        parts = urlsplit(emu.url)
        self.host = str(parts.hostname)
        self.port = int(parts.port or 80)
        self.emu = emu
        self.timeout = timeout

    def request(
        self, method: str, target: str, body: Any = None
    ) -> tuple[int, dict[str, str], bytes]:
        payload = json.dumps(body).encode() if body is not None else b""
        headers = self.signed_headers(method, target, payload)
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            connection.request(method, target, body=payload or None, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def signed_headers(self, method: str, target: str, payload: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Host": f"{self.host}:{self.port}",
            "X-Sdk-Date": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        }
        lower = {k.lower(): v for k, v in headers.items()}
        names = sorted(lower)
        canonical = canonical_request(method, target, names, lower.get, payload)
        signature = sign(canonical, headers["X-Sdk-Date"], self.emu.secret_key)
        headers["Authorization"] = (
            f"SDK-HMAC-SHA256 Access={self.emu.access_key}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return headers
