"""No log line, JSON or console, carries the access key or the secret key: not in a message,
not in a field, not in an exception's text or traceback, not from the SDK's own loggers."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from urllib.parse import quote, quote_plus

import pytest
import structlog

from daemon.adapters import logs as observe
from daemon.core import redaction
from tests.engine.harness import Deployment, deploy, policy
from tests.engine.webhooks import receiving
from tests.service.support import Service

__all__ = ["deploy"]  # the fixture

ACCESS_KEY = "AKTESTACCESSKEY0001"
SECRET_KEY = "sk-test-Secret/Key+0123456789"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    observe.reset_logging()


def log_everything_that_could_leak() -> None:
    log = structlog.get_logger("cbr_replicator")
    log.info("login", detail=f"using {ACCESS_KEY}", secret_key="anything", nested={"sk": "x"})
    log.warning(f"request signed with {SECRET_KEY}", headers=[f"Access={ACCESS_KEY}"])
    try:
        raise RuntimeError(f"IAM refused access key {ACCESS_KEY} with secret {SECRET_KEY}")
    except RuntimeError:
        log.exception("cloud_call_failed")
    sdk = logging.getLogger("HuaweiCloud-SDK-CbrClient")
    sdk.info("request with %s", SECRET_KEY)  # below WARNING: not logged at all
    try:
        raise ValueError(f"signature mismatch for {SECRET_KEY}")
    except ValueError:
        sdk.exception("SDK error for %s", ACCESS_KEY)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_log_line_holds_a_key_even_in_an_exception(fmt: str, restore_logging: None) -> None:
    stream = io.StringIO()
    redaction.register_secrets([ACCESS_KEY, SECRET_KEY])
    observe.configure_logging(fmt, "info", stream=stream)
    log_everything_that_could_leak()
    output = stream.getvalue()
    assert ACCESS_KEY not in output
    assert SECRET_KEY not in output
    assert "RuntimeError: IAM refused access key ****" in output  # the exception is there
    assert "ValueError: signature mismatch for ****" in output  # so is the SDK's
    assert "request with" not in output
    assert output.count(redaction.MASK) >= 8


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_daemon_masks_keys_that_reach_its_error_messages(service: Service, fmt: str) -> None:
    access_key, secret_key = service.secrets()
    # Vaults named like the keys: "vault '<key>' not found" ends up in the sweep's log line.
    service.write_config(
        [
            policy("leak-ak", [access_key], "cn-south-1", "web-dr", schedule={"interval": "1s"}),
            policy("leak-sk", [secret_key], "cn-south-1", "web-dr", schedule={"interval": "1s"}),
        ]
    )
    daemon, _ = service.start_ready(log_format=fmt)
    for name in ("leak-ak", "leak-sk"):
        line = daemon.wait_line(lambda text, name=name: "sweep_finished" in text and name in text)
        assert "vault '****' not found" in line
    assert access_key not in daemon.output
    assert secret_key not in daemon.output


# A registered secret with a line break, a tab and a trailing space: messages quote such a
# value escaped (repr, JSON), so the raw value alone is not enough to find it.
CANARY = "Zq7canary\tWEBHOOK\n secret "
CANARY_CORE = "Zq7canary"


def test_a_secret_with_whitespace_is_masked_in_every_form() -> None:
    redaction.register_secrets([CANARY])
    try:
        for form in (CANARY, repr(CANARY), json.dumps(CANARY), json.dumps(repr(CANARY))):
            assert CANARY_CORE not in redaction.redact_text(f"error: {form}!"), form
        assert CANARY_CORE not in redaction.redact_text(quote(CANARY, safe=""))
        assert CANARY_CORE not in redaction.redact_text(quote_plus(CANARY))
        assert redaction.redact_text(f"vault {CANARY!r} not found") == "vault '****' not found"
    finally:
        redaction.clear_registered_secrets()


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)  # the dump reads SQLite
def test_a_secret_canary_reaches_no_sink(deploy: Callable[..., Deployment]) -> None:
    """The canary is the webhook's key and, as an attacker could arrange, the name of a vault:
    the sweep fails with "vault '<canary, escaped>' not found". Neither the log, nor the
    ledger (sweeps.error, notifications), nor the webhook body, nor ``status`` holds it."""
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(contextlib.contextmanager(receiving)())
        hook = {"url": f"{receiver.url}/hook", "secret": CANARY}
        deployment = deploy(
            [policy("leaky", [CANARY], "cn-south-1", "web-dr")], notify={"webhook": hook}
        )
        run = deployment.cli("--run-once")
        status = deployment.cli("status")
        status_json = deployment.cli("status", "--json")
        bodies = [post.body.decode() for post in receiver.posts()]
    assert run.returncode != 0
    assert "vault '****' not found" in run.stderr, run.stderr
    assert len(bodies) == 1
    assert "vault '****' not found" in bodies[0]
    with contextlib.closing(
        sqlite3.connect(deployment.workdir / "state" / "ledger.db")
    ) as database:
        dump = "\n".join(database.iterdump())
    assert "vault ''****'' not found" in dump  # as SQL quotes it: in sweeps, notifications
    for sink in (run.stdout, run.stderr, dump, *bodies, status.stdout, status_json.stdout):
        assert CANARY_CORE not in sink


def test_the_systemd_status_line_masks_a_secret() -> None:
    """STATUS= is shown by ``systemctl status`` to any user: it may quote an error."""
    from daemon.service.work import notify_quietly

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[dict[str, str | int]] = []

        def notify(self, **fields: str | int) -> None:
            self.sent.append(fields)

    recorder = Recorder()
    redaction.register_secrets([CANARY])
    try:
        notify_quietly(recorder, STATUS=f"failed to start: {CANARY!r}", READY=1)
    finally:
        redaction.clear_registered_secrets()
    assert recorder.sent == [{"STATUS": "failed to start: '****'", "READY": 1}]
