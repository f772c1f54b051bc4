"""Loading valid configs: inheritance, policies_dir, secrets, paths, the shipped examples."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.config.describe import describe_settings
from daemon.config.export import settings_json_schema
from daemon.config.load import load_settings
from daemon.core.errors import ConfigError

Check = Callable[[Path], tuple[int, str, str]]
Write = Callable[..., Path]
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "cbr-replicator.yaml"
DEMO = REPO / "config" / "demo.yaml"
CLOUD_ENV = {"HUAWEICLOUD_SDK_AK": "AKEXAMPLE0000", "HUAWEICLOUD_SDK_SK": "sk-example-secret-1"}


def test_policy_inherits_defaults_and_overrides_them(write: Write) -> None:
    path = write(
        "cloud: {provider: emulator}\n"
        "defaults:\n"
        "  schedule: {cron: '0 * * * *', jitter: 1m}\n"
        "  retry: {max_attempts: 3, initial_backoff: 1m}\n"
        "  max_in_flight: 7\n"
        "  traffic_budget_per_day: 1TiB\n"
        "policies:\n"
        "  - name: inherits\n"
        "    source: {region: cn-north-4, vaults: [a]}\n"
        "    destination: {region: cn-south-1, vault: a-dr}\n"
        "  - name: overrides\n"
        "    source: {region: cn-north-4, vaults: [b]}\n"
        "    destination: {region: cn-south-1, vault: b-dr}\n"
        "    schedule: {interval: 6h}\n"
        "    retry: {max_backoff: 2h}\n"
        "    max_in_flight: 2\n"
    )
    inherits, overrides = load_settings(path).settings.policies
    assert inherits.schedule.cron == "0 * * * *"
    assert inherits.schedule.jitter == timedelta(minutes=1)
    assert inherits.retry.max_attempts == 3
    assert inherits.max_in_flight == 7
    assert inherits.traffic_budget_per_day == 2**40
    assert inherits.rpo == timedelta(hours=2)  # twice the cron's period
    # A policy naming its schedule kind drops the default's kind but keeps its jitter.
    assert overrides.schedule.cron is None
    assert overrides.schedule.interval == timedelta(hours=6)
    assert overrides.schedule.jitter == timedelta(minutes=1)
    assert overrides.retry.max_attempts == 3  # mappings merge key by key
    assert overrides.retry.max_backoff == timedelta(hours=2)
    assert overrides.max_in_flight == 2
    assert overrides.rpo == timedelta(hours=12)


def test_policies_dir_files_are_merged_in_name_order(base: dict[str, Any], write: Write) -> None:
    base["policies_dir"] = "policies.d"
    path = write(base)
    for name, vault in (("b.yaml", "b"), ("a.yaml", "a")):
        write(
            [
                {
                    "name": f"from-{vault}",
                    "source": {"region": "cn-north-4", "vaults": [vault]},
                    "destination": {"region": "ap-southeast-1", "vault": "dr"},
                    "schedule": {"interval": "1h"},
                }
            ],
            f"policies.d/{name}",
        )
    write("# no policies yet\n", "policies.d/empty.yaml")
    write("not: yaml-policies\n", "policies.d/ignored.yml")  # only *.yaml is read
    loaded = load_settings(path)
    names = [policy.name for policy in loaded.settings.policies]
    assert names == ["web-dr", "from-a", "from-b"]
    assert loaded.settings.policies_dir == path.parent / "policies.d"
    assert [file.name for file in loaded.files] == ["config.yaml", "a.yaml", "b.yaml", "empty.yaml"]


def test_relative_paths_resolve_against_the_config_directory(
    base: dict[str, Any], write: Write
) -> None:
    ca = write("-----BEGIN CERTIFICATE-----\n", "ca.pem")
    base["ledger"] = {"url": "sqlite:///state/ledger.db"}
    base["cloud"].update(
        ca_bundle="ca.pem", verify_tls=False, emulator={"scenario": "s.yaml", "state": "st.json"}
    )
    settings = load_settings(write(base)).settings
    directory = ca.parent
    assert settings.ledger.url == f"sqlite:///{directory}/state/ledger.db"
    assert settings.cloud.ca_bundle == ca
    assert settings.cloud.emulator.scenario == directory / "s.yaml"
    assert settings.cloud.emulator.state == directory / "st.json"


def test_absolute_and_memory_sqlite_urls_are_kept(base: dict[str, Any], write: Write) -> None:
    for url in ("sqlite:////var/lib/x.db", "sqlite:///:memory:", "postgresql+psycopg://h/db"):
        base["ledger"] = {"url": url}
        assert load_settings(write(base)).settings.ledger.url == url


def test_secrets_from_files_and_environment(base: dict[str, Any], write: Write) -> None:
    write("AK-from-file\n", "ak")
    base["cloud"]["credentials"] = {"access_key_file": "ak", "secret_key": "${SK}"}
    base["notify"] = {"webhook": {"url": "https://hooks.example/x", "secret": "hook-secret-1"}}
    loaded = load_settings(write(base), environ={"SK": "sk-from-env-1"})
    credentials = loaded.settings.cloud.credentials
    assert credentials is not None
    assert credentials.access_key.get_secret_value() == "AK-from-file"
    assert credentials.secret_key.get_secret_value() == "sk-from-env-1"
    assert set(loaded.secrets) == {"AK-from-file", "sk-from-env-1", "hook-secret-1"}
    described = describe_settings(loaded)
    for secret in loaded.secrets:
        assert secret not in described
    assert "access_key ****" in described


def test_secret_given_twice_is_an_error(base: dict[str, Any], write: Write) -> None:
    write("AK\n", "ak")
    base["cloud"]["credentials"] = {"access_key": "x", "access_key_file": "ak", "secret_key": "y"}
    with pytest.raises(ConfigError) as caught:
        load_settings(write(base))
    assert "give access_key or access_key_file, not both" in str(caught.value)


def test_ledger_password_is_masked_and_registered(base: dict[str, Any], write: Write) -> None:
    base["ledger"] = {"url": "postgresql+psycopg://cbr:pg-pass-77@db/cbr"}
    loaded = load_settings(write(base))
    assert "pg-pass-77" in loaded.secrets
    assert "pg-pass-77" not in describe_settings(loaded)


def test_example_config_validates_with_credentials_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CLOUD_ENV.items():
        monkeypatch.setenv(name, value)
    loaded = load_settings(EXAMPLE)
    assert [policy.name for policy in loaded.settings.policies] == ["web-dr", "db-to-apac-ops"]
    assert loaded.settings.policies[1].destination.project == "ap-southeast-1_ops"
    assert loaded.settings.policies[1].schedule.interval == timedelta(hours=12)
    assert set(CLOUD_ENV.values()) <= set(loaded.secrets)


def test_example_config_without_credentials_names_the_variables(
    check: Check, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in CLOUD_ENV:
        monkeypatch.delenv(name, raising=False)
    code, _out, err = check(EXAMPLE)
    assert code == 78
    assert "cloud.credentials.access_key: environment variable HUAWEICLOUD_SDK_AK is not set" in err
    assert "cloud.credentials.secret_key: environment variable HUAWEICLOUD_SDK_SK is not set" in err
    assert "Traceback" not in err


def test_demo_config_validates(check: Check) -> None:
    code, out, err = check(DEMO)
    assert code == 0, err
    settings = load_settings(DEMO).settings
    assert settings.cloud.provider == "emulator"
    assert settings.cloud.emulator.scenario == DEMO.parent / "demo-cloud.yaml"
    assert settings.ledger.url == f"sqlite:///{DEMO.parent}/../.demo/ledger.db"
    assert settings.policies_dir is None
    destinations = {p.name: (p.destination.region, p.destination.vault, p.destination.project)
                    for p in settings.policies}  # fmt: skip
    assert destinations == {
        "web-to-south": ("cn-south-1", "web-dr", None),
        "db-to-south-ops": ("cn-south-1", "ops-dr", "cn-south-1_ops"),
        "web-to-apac": ("ap-southeast-1", "apac-dr", None),
    }
    assert "demo-secret-key" not in out


def test_every_field_has_a_description() -> None:
    schema = settings_json_schema()
    models = {"Settings": schema, **schema["$defs"]}
    missing = [
        f"{model}.{name}"
        for model, definition in models.items()
        for name, field in definition.get("properties", {}).items()
        if not field.get("description")
    ]
    assert missing == []


def test_installed_entry_point_checks_the_example_config() -> None:
    executable = shutil.which("cbr-replicator") or str(
        Path(sys.executable).parent / "cbr-replicator"
    )
    environment = {**os.environ, **CLOUD_ENV}
    result = subprocess.run(
        [executable, "-c", str(EXAMPLE), "check-config"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "policy web-dr (enabled)" in result.stdout
    assert "policy db-to-apac-ops (enabled)" in result.stdout
    for secret in CLOUD_ENV.values():
        assert secret not in result.stdout + result.stderr
