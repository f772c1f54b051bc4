"""Every outbound request has a total deadline, not only one per socket read: a CBR or IAM
answer dripped a few bytes at a time (the emulator's ``drip`` fault), and a webhook or
heartbeat receiver that sends its headers then a byte a second, end the request at
``connect_timeout + timeout`` (the webhook's ``timeout``) with a classified error."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from daemon.adapters.cloud.client import HuaweiCloud
from daemon.adapters.cloud.options import CloudOptions, Credentials
from daemon.adapters.webhook import WebhookClient
from daemon.core.errors import AmbiguousError, TransientError
from daemon.core.model import Destination, ReplicaSpec
from daemon.emulator import Emulator
from tests.engine.harness import one_vault_scenario, server_backup

SOURCE, DEST = "cn-north-4", "cn-south-1"
NEVER = 60.0  # seconds: a request still running then would run for many minutes more
DRIP = {"drip_rate": 1.0, "drip_bytes_per_second": 50}


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    backups = [server_backup(f"web-{i}") for i in range(20)]  # ~30 KB: ten minutes at 50 B/s
    with Emulator(one_vault_scenario(SOURCE, DEST, backups), clock="manual") as running:
        yield running


def short_budget_cloud(emulator: Emulator, *, projects: bool = True) -> HuaweiCloud:
    return HuaweiCloud(
        Credentials(
            access_key=SecretStr(emulator.access_key),
            secret_key=SecretStr(emulator.secret_key),
            domain_id=emulator.domain_id,
        ),
        CloudOptions(
            cbr_endpoints={},
            all_regions_endpoint=emulator.url,
            projects={SOURCE: emulator.project_id(SOURCE)} if projects else None,
            connect_timeout=timedelta(seconds=1),
            read_timeout=timedelta(seconds=2),  # per read: every drip of 5 bytes passes it
            requests_per_second=1000,
            read_attempts=1,
        ),
        sleep=lambda seconds: None,
    )


def outcome_within(seconds: float, work: Callable[[], Any]) -> BaseException | None:
    """The exception ``work()`` raised (None if it returned); fails if still running."""
    ended: list[BaseException | None] = []

    def run() -> None:
        try:
            work()
            ended.append(None)
        except Exception as error:
            ended.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert ended, f"still running after {seconds}s: no total deadline"
    return ended[0]


def test_a_dripped_listing_ends_at_the_request_budget(emulator: Emulator) -> None:
    emulator.set_faults({**DRIP, "operations": {}})
    cloud = short_budget_cloud(emulator)
    project, vault = emulator.project_id(SOURCE), emulator.vault_id(SOURCE, "web-prod")
    error = outcome_within(NEVER, lambda: list(cloud.list_backup_pages(SOURCE, project, vault)))
    assert isinstance(error, TransientError), repr(error)
    assert "no whole answer within 3s" in str(error)


def test_a_dripped_iam_answer_ends_at_the_request_budget(emulator: Emulator) -> None:
    emulator.set_faults({**DRIP, "iam": True})
    cloud = short_budget_cloud(emulator, projects=False)
    error = outcome_within(NEVER, lambda: cloud.resolve_project(SOURCE))
    assert isinstance(error, TransientError), repr(error)
    assert "no whole answer" in str(error)


def test_a_dripped_answer_to_a_post_is_ambiguous(emulator: Emulator) -> None:
    emulator.set_faults({"operations": {"replicate_backup": DRIP}})
    cloud = short_budget_cloud(emulator)
    destination = Destination(DEST, emulator.project_id(DEST), emulator.vault_id(DEST, "web-dr"))

    def replicate() -> None:
        cloud.replicate_backup(
            SOURCE,
            emulator.project_id(SOURCE),
            emulator.backup_id("web-0"),
            destination,
            ReplicaSpec(name="copy", description=""),
        )

    error = outcome_within(NEVER, replicate)
    assert isinstance(error, AmbiguousError), repr(error)  # applied: reconcile before a retry


class DrippingReceiver(BaseHTTPRequestHandler):
    """Drips its answer a byte a second: the body after its headers, or (``DRIP_HEADERS``)
    the whole answer from its status line on."""

    DRIP_HEADERS = False

    def _drip(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b'{"ok": true, "padding": "' + b"x" * 600 + b'"}'
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        if not self.DRIP_HEADERS:
            self.wfile.write(head)
            head = b""
        pace = threading.Event()
        for byte in head + body:
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                return  # the client gave up: its deadline did it
            pace.wait(1.0)  # the receiver's pace (the server side), not a test waiting

    do_GET = do_POST = _drip

    def log_message(self, format: str, *args: Any) -> None:
        return


class DrippingHeaders(DrippingReceiver):
    DRIP_HEADERS = True


def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[str]:
    yield from serve(DrippingReceiver)


@pytest.fixture
def slow_headers() -> Iterator[str]:
    yield from serve(DrippingHeaders)


def test_a_webhook_receiver_dripping_its_body_is_over_at_the_timeout(receiver: str) -> None:
    client = WebhookClient(sleep=lambda seconds: None, tries=1)
    delivered: list[Any] = []

    def deliver() -> None:
        delivered.append(
            client.post_event(
                receiver, b"{}", secret=None, timeout=2.0, event="test", delivery_id="d1"
            )
        )

    assert outcome_within(NEVER, deliver) is None
    assert delivered[0].status == 200  # its answer came: delivered, the rest of the body unread


@pytest.mark.parametrize("kind", ["webhook", "heartbeat"])
def test_a_receiver_dripping_its_headers_fails_the_try_at_the_timeout(
    slow_headers: str, kind: str
) -> None:
    client = WebhookClient(sleep=lambda seconds: None, tries=1)
    results: list[Any] = []

    def send() -> None:
        if kind == "webhook":
            results.append(
                client.post_event(
                    slow_headers, b"{}", secret=None, timeout=2.0, event="t", delivery_id="d2"
                )
            )
        else:
            results.append(client.ping(slow_headers, timeout=2.0))

    assert outcome_within(NEVER, send) is None
    assert not results[0].ok
    assert "no whole answer within 2s" in (results[0].error or "")
