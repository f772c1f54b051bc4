"""No log line, JSON or console, carries the access key or the secret key: not in a message,
not in a field, not in an exception's text or traceback, not from the SDK's own loggers."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import structlog

from daemon import observe
from tests.engine.harness import policy
from tests.service.support import Service

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
    observe.register_secrets([ACCESS_KEY, SECRET_KEY])
    observe.configure_logging(fmt, "info", stream=stream)
    log_everything_that_could_leak()
    output = stream.getvalue()
    assert ACCESS_KEY not in output
    assert SECRET_KEY not in output
    assert "RuntimeError: IAM refused access key ****" in output  # the exception is there
    assert "ValueError: signature mismatch for ****" in output  # so is the SDK's
    assert "request with" not in output
    assert output.count(observe.MASK) >= 8


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
