"""Each fault kind as a raw HTTP client sees it, plus the admin endpoints and the CLI."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from daemon.emulator import Emulator
from tests.emulator.emulator_support import DEMO, RawClient

REPO = Path(__file__).resolve().parents[2]


def replicate_target(emu: Emulator, backup: str = "db-prod-2026-11-01") -> tuple[str, Any]:
    project = emu.project_id("cn-north-4")
    body = {
        "replicate": {
            "destination_project_id": emu.project_id("cn-south-1"),
            "destination_region": "cn-south-1",
            "destination_vault_id": emu.vault_id("cn-south-1", "web-dr"),
        }
    }
    return f"/v3/{project}/backups/{emu.backup_id(backup)}/replicate", body


def vaults_target(emu: Emulator) -> str:
    return f"/v3/{emu.project_id('cn-north-4')}/vaults"


def record_count(emu: Emulator, backup: str = "db-prod-2026-11-01") -> int:
    return len(emu.state()["backups"][emu.backup_id(backup)]["replication_records"])


def test_no_faults_answers_with_request_id(emulator: Emulator, raw: RawClient) -> None:
    status, headers, body = raw.request("GET", vaults_target(emulator))
    assert status == 200
    assert headers["X-Request-Id"]
    assert json.loads(body)["count"] == 4


def test_throttle_is_429_with_retry_after(emulator: Emulator, raw: RawClient) -> None:
    emulator.set_faults({"throttle_rate": 1.0})
    status, headers, body = raw.request("GET", vaults_target(emulator))
    assert (status, headers["Retry-After"]) == (429, "1")
    assert json.loads(body)["error_code"] == "APIGW.0308"


def test_error_before_does_not_apply(emulator: Emulator, raw: RawClient) -> None:
    emulator.set_faults({"error_before_rate": 1.0})
    status, _, _ = raw.request("POST", *replicate_target(emulator))
    assert status == 500
    assert record_count(emulator) == 0


def test_error_after_applies_then_fails(emulator: Emulator, raw: RawClient) -> None:
    emulator.set_faults({"error_after_rate": 1.0})
    status, _, body = raw.request("POST", *replicate_target(emulator))
    assert status == 500
    assert json.loads(body)["error_code"] == "BackupService.9910"
    assert record_count(emulator) == 1


def test_reset_after_applies_and_drops_the_connection(emulator: Emulator, raw: RawClient) -> None:
    emulator.set_faults({"reset_after_rate": 1.0})
    with pytest.raises((ConnectionError, OSError)):
        raw.request("POST", *replicate_target(emulator))
    assert record_count(emulator) == 1
    assert emulator.requests("replicate_backup")[-1]["fault"] == "reset_after"


def test_slow_after_applies_past_the_read_timeout(emulator: Emulator) -> None:
    emulator.set_faults({"slow_after_rate": 1.0, "slow_seconds": 0.5})
    with pytest.raises(TimeoutError):
        RawClient(emulator, timeout=0.1).request("POST", *replicate_target(emulator))
    assert record_count(emulator) == 1


def test_malformed_truncates_reads_only(emulator: Emulator, raw: RawClient) -> None:
    emulator.set_faults({"malformed_rate": 1.0})
    status, _, body = raw.request("GET", vaults_target(emulator))
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    status, _, body = raw.request("POST", *replicate_target(emulator))
    assert status == 200
    assert json.loads(body)["replication"]["replication_record_id"]


def test_html_page_with_status_200(emulator: Emulator, raw: RawClient) -> None:
    emulator.set_faults({"html_rate": 1.0})
    status, headers, body = raw.request("GET", vaults_target(emulator))
    assert (status, headers["Content-Type"]) == (200, "text/html")
    assert body.startswith(b"<html>")


def test_latency_is_added(emulator: Emulator, raw: RawClient) -> None:
    emulator.set_faults({"latency_ms": 150})
    started = time.monotonic()
    raw.request("GET", vaults_target(emulator))
    assert time.monotonic() - started >= 0.15


def test_faults_per_operation_and_never_on_iam_or_admin(emulator: Emulator, raw: RawClient) -> None:
    emulator.set_faults({"operations": {"replicate_backup": {"error_before_rate": 1.0}}})
    assert raw.request("GET", vaults_target(emulator))[0] == 200
    assert raw.request("POST", *replicate_target(emulator))[0] == 500
    emulator.set_faults({"error_before_rate": 1.0})
    assert raw.request("GET", "/v3/projects?name=cn-north-4")[0] == 200
    with urllib.request.urlopen(f"{emulator.url}/__emulator__/health") as answer:
        assert answer.status == 200


def test_unknown_fault_key_is_rejected(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="unknown fault keys"):
        emulator.set_faults({"trottle_rate": 0.5})


def test_unknown_path_is_404_json(emulator: Emulator, raw: RawClient) -> None:
    status, _, body = raw.request("GET", "/v3/nothing/here/at/all")
    assert status == 404
    assert "error_code" in json.loads(body)


def test_keep_alive_serves_several_requests_on_one_connection(
    emulator: Emulator, raw: RawClient
) -> None:
    import http.client

    connection = http.client.HTTPConnection(raw.host, raw.port, timeout=5)
    try:
        for _ in range(3):
            target = vaults_target(emulator)
            connection.request("GET", target, headers=raw.signed_headers("GET", target, b""))
            response = connection.getresponse()
            assert response.status == 200
            response.read()
    finally:
        connection.close()


# ----- admin endpoints -----------------------------------------------------------------------


def admin(emu: Emulator, method: str, name: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{emu.url}/__emulator__/{name}", data=data, method=method)
    with urllib.request.urlopen(request) as answer:
        return json.loads(answer.read())


def test_admin_endpoints_drive_the_world(emulator: Emulator, raw: RawClient) -> None:
    raw.request("POST", *replicate_target(emulator))
    assert admin(emulator, "GET", "requests")["requests"][0]["operation"] == "replicate_backup"
    admin(emulator, "POST", "clock/advance", {"seconds": 100})
    state = admin(emulator, "GET", "state")
    record = state["backups"][emulator.backup_id("db-prod-2026-11-01")]["replication_records"][0]
    assert record["status"] == "success"
    assert admin(emulator, "GET", "duplicates") == {"duplicates": []}
    admin(emulator, "PUT", "faults", {"throttle_rate": 1.0})
    assert admin(emulator, "GET", "faults")["faults"]["throttle_rate"] == 1.0
    admin(emulator, "PUT", "faults", {})
    vault_id = emulator.vault_id("cn-north-4", "db-prod")
    added = admin(emulator, "POST", "backups", {"vault_id": vault_id, "name": "db-prod-new"})
    assert added["backup"]["project_id"] == emulator.project_id("cn-north-4")
    assert admin(emulator, "POST", f"backups/{added['backup']['id']}/delete") == {"deleted": True}
    assert admin(emulator, "DELETE", "requests") == {"cleared": True}
    assert emulator.requests() == []


# ----- CLI -----------------------------------------------------------------------------------


def test_cli_prints_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "daemon.emulator",
        "--scenario",
        str(DEMO),
        "--state",
        str(tmp_path / "cloud.json"),
        "--clock",
        "manual",
        "--faults",
        "base",
        "--fault-rate-scale",
        "2",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        with urllib.request.urlopen(f"{url}/__emulator__/faults") as answer:
            assert json.loads(answer.read())["faults"]["error_before_rate"] == pytest.approx(0.2)
        assert (tmp_path / "cloud.json").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_cli_listen_takes_host_and_port(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "daemon.emulator", "--scenario", str(DEMO)]
    command += ["--listen", f"127.0.0.1:{port}"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
