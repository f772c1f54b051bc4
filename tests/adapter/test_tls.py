"""TLS: the adapter verifies the endpoint's certificate unless told not to, and trusts a
private CA given as ``ca_bundle``. The emulator serves HTTPS with a certificate from a
throwaway CA (trustme), so the SDK's real TLS code path runs."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from huaweicloudsdkcore.exceptions import exceptions as sdk_errors

from daemon.adapters.cloud.classify import classify_error, untrusted_endpoint
from daemon.core import exitcodes
from daemon.core.errors import AmbiguousError, ConfigError, TransientError
from daemon.emulator import Emulator
from tests.adapter.test_cloud_contract import SOURCE, make_cloud
from tests.engine.harness import policy, write_config

SCENARIO = {
    "regions": {
        SOURCE: {"vaults": [{"name": "web-prod"}]},
    }
}


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_emulator(authority: trustme.CA) -> Iterator[Emulator]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    with Emulator(SCENARIO, clock="manual", tls=context) as running:
        assert running.url.startswith("https://")
        yield running


def test_an_untrusted_certificate_is_refused_with_a_clear_error(
    https_emulator: Emulator,
) -> None:
    """A configuration problem (the fix is cloud.ca_bundle or the endpoint), not a passing
    one: retrying cannot help, so it is no TransientError (exit 75) either."""
    cloud = make_cloud(https_emulator)
    with pytest.raises(ConfigError) as refused:
        cloud.resolve_project(SOURCE)
    assert "cloud.ca_bundle" in str(refused.value)
    assert "certificate" in str(refused.value).lower()
    assert https_emulator.requests() == []  # nothing was answered over the untrusted link


def test_run_once_against_an_untrusted_endpoint_exits_78(
    https_emulator: Emulator, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "config.yaml", https_emulator, [policy("web", ["web-prod"], "cn-south-1", "x")]
    )
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "-c", str(config), "--run-once"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == exitcodes.CONFIG, result.stderr
    assert "cloud.ca_bundle" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_tls_failure_that_is_no_certificate_problem_is_transient() -> None:
    reset = sdk_errors.SslHandShakeException("SSLEOFError: EOF occurred in violation of protocol")
    assert untrusted_endpoint(reset) is None
    assert isinstance(classify_error(reset, mutating=False), TransientError)
    assert isinstance(classify_error(reset, mutating=True), AmbiguousError)


def test_a_private_ca_bundle_is_trusted(
    https_emulator: Emulator, authority: trustme.CA, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    cloud = make_cloud(https_emulator, ca_bundle=str(bundle))
    assert cloud.resolve_project(SOURCE) == https_emulator.project_id(SOURCE)
    vault = cloud.find_vault(SOURCE, cloud.resolve_project(SOURCE), "web-prod")
    assert vault.name == "web-prod"


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verification_can_be_switched_off_explicitly(https_emulator: Emulator) -> None:
    cloud = make_cloud(https_emulator, verify_tls=False)
    assert cloud.resolve_project(SOURCE) == https_emulator.project_id(SOURCE)
