"""The operator's view of the real API's answers: exit codes and messages of the CLI for a
gateway 404, a host whose clock is off, and the endpoints ``check-config --cloud`` resolved."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.emulator import Emulator
from tests.engine.harness import Deployment, rules_scenario, write_config
from tests.engine.test_run_once import WEB_SOUTH, backup_ids


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """On SQLite only: these are about the cloud's answers, not the ledger."""
    emulator = Emulator(rules_scenario(), clock="manual")
    emulator.start()
    config = write_config(tmp_path / "config.yaml", emulator, [WEB_SOUTH])
    yield Deployment(emulator=emulator, config=config, workdir=tmp_path)
    emulator.stop()


def test_a_gateway_404_is_a_configuration_error_naming_the_endpoint(
    deployment: Deployment,
) -> None:
    """The replica's look-up in cn-south-1 answers ``404 APIGW.0101`` (an API not published
    at that endpoint): exit 78 naming it, and no replication on the strength of it."""
    deployment.emulator.set_gateway({"unpublished": ["show_backup@cn-south-1"]})
    backup = backup_ids(deployment)["web-done"]
    result = deployment.cli(
        "replicate-backup", backup, "--to-region", "cn-south-1", "--to-vault", "web-dr"
    )
    assert result.returncode == 78, result.stderr
    assert "APIGW.0101" in result.stderr
    assert deployment.emulator.url in result.stderr
    assert "Traceback" not in result.stderr
    assert deployment.replicate_calls() == []


def test_a_host_whose_clock_is_off_is_told_to_check_it(deployment: Deployment) -> None:
    deployment.emulator.set_gateway({"clock_offset_seconds": -7200})
    result = deployment.cli("--run-once")
    assert result.returncode == 77, result.stderr
    assert "check this host's clock" in result.stderr
    assert "2 h 0 min ahead of the gateway's" in result.stderr
    # the two project look-ups leave together; after their 401s nothing more is sent
    requests = deployment.emulator.requests()
    assert [call["status"] for call in requests] == [401, 401]
    assert {call["operation"] for call in requests} == {"list_projects"}


def test_check_config_cloud_prints_the_endpoints_it_resolved(deployment: Deployment) -> None:
    result = deployment.cli("check-config", "--cloud")
    assert result.returncode == 0, result.stderr
    url = deployment.emulator.url
    assert f"resolved endpoint iam: {url}" in result.stdout
    assert f"resolved endpoint cn-north-4: {url}" in result.stdout
    assert f"resolved endpoint cn-south-1: {url}" in result.stdout


def test_check_config_cloud_prints_the_sites_endpoints(deployment: Deployment) -> None:
    """``cloud.site: europe`` with the IAM and source endpoints given, the destination's
    left to the site: its endpoint is the site's pattern (not reachable from a test)."""
    emulator = deployment.emulator
    write_config(
        deployment.config,
        emulator,
        [WEB_SOUTH],
        cloud={
            "site": "europe",
            "endpoints": {"iam": emulator.url, "cbr": {"cn-north-4": emulator.url}},
        },
    )
    result = deployment.cli("check-config", "--cloud")
    assert f"resolved endpoint iam: {emulator.url}" in result.stdout
    assert (
        "resolved endpoint cn-south-1: none (no CBR endpoint known for region 'cn-south-1' on "
        in (result.stdout)
    )
    assert "cloud.site 'international'" in result.stdout
