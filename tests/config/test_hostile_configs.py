"""Configs an attacker or a bad day writes: keys with stray whitespace, binary secret files,
durations past any use, URLs that do not parse, files that are not config text. Each is one
problem line naming the file and the field, exit 78, and never echoes a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

Check = Callable[[Path], tuple[int, str, str]]
Write = Callable[..., Path]

CANARY = "AKcanary0123456789"


def refused(result: tuple[int, str, str], path: Path, *needles: str) -> str:
    code, out, err = result
    assert code == 78, (out, err)
    assert "Traceback" not in out + err
    assert err.startswith(str(path.parent)), err
    for needle in needles:
        assert needle in err, err
    return err


# -- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (f"{CANARY}\n\n", "a line break at character 19 of 19"),
        (f"{CANARY}\r\n\r\n", "a carriage return at character 19 of 20"),
        (f"{CANARY} \n", "a space at character 19 of 19"),
        (f"AK\t{CANARY}", "a tab at character 3"),
        (f"{CANARY}\x00", "a whitespace or control character"),
    ],
)
def test_a_key_file_with_stray_whitespace_is_refused_naming_the_file(
    base: dict[str, Any], write: Write, check: Check, content: str, what: str
) -> None:
    secret = write(content, "ak")
    base["cloud"]["credentials"] = {"access_key_file": str(secret), "secret_key": "s3cr3t-sk"}
    path = write(base)
    err = refused(check(path), path, "cloud.credentials.access_key_file", str(secret), what)
    assert CANARY not in err


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_one_trailing_line_break_of_a_key_file_is_not_part_of_the_key(
    base: dict[str, Any], write: Write, ending: str
) -> None:
    from daemon.config.load import load_settings

    secret = write(CANARY + ending, "ak")
    base["cloud"]["credentials"] = {"access_key_file": str(secret), "secret_key": "s3cr3t-sk"}
    credentials = load_settings(write(base)).settings.cloud.credentials
    assert credentials is not None
    assert credentials.access_key.get_secret_value() == CANARY


@pytest.mark.parametrize("key", ["access_key", "secret_key", "security_token"])
def test_a_key_from_the_environment_with_a_line_break_is_refused(
    base: dict[str, Any],
    write: Write,
    check: Check,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
) -> None:
    monkeypatch.setenv("CBR_TEST_KEY", CANARY + "\n")
    base["cloud"]["credentials"] = {"access_key": "AKID", "secret_key": "s3cr3t-sk"}
    base["cloud"]["credentials"][key] = "${CBR_TEST_KEY}"
    path = write(base)
    err = refused(check(path), path, f"cloud.credentials.{key}: holds a line break")
    assert CANARY not in err


def test_a_binary_secret_file_is_refused_naming_the_file(
    base: dict[str, Any], write: Write, check: Check, config_dir: Path
) -> None:
    secret = config_dir / "whsecret"
    secret.write_bytes(b"\xff\xfe binary")
    secret.chmod(0o600)
    base["notify"] = {"webhook": {"url": "https://hooks.example/x", "secret_file": str(secret)}}
    path = write(base)
    refused(check(path), path, "notify.webhook.secret_file", str(secret), "not UTF-8 text")


# -- bounds ---------------------------------------------------------------------------------


def _set(config: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        config = config.setdefault(part, {}) if isinstance(part, str) else config[part]
    config[path[-1]] = value


@pytest.mark.parametrize(
    ("path", "value", "allowed"),
    [
        (("policies", 0, "schedule"), {"interval": "99999999d"}, "up to 366d"),
        (("cloud", "lease"), "99999999d", "up to 1d"),
        (("cloud", "timeout"), "99999999d", "up to 1h"),
        (("cloud", "connect_timeout"), "2h", "up to 1h"),
        (("policies", 0, "schedule", "jitter"), "99999999d", "from 0s up to 366d"),
        (("policies", 0, "rpo"), "99999999d", "up to 3660d"),
        (("policies", 0, "stuck_after"), "99999999d", "up to 3660d"),
        (("policies", 0, "retry"), {"initial_backoff": "99999d", "max_backoff": "99999d"}, "30d"),
        (("notify", "webhook"), {"url": "https://h.example/x", "timeout": "99999999d"}, "1h"),
        (("policies", 0, "traffic_budget_per_day"), "9999999PiB", "up to 1PiB"),
        (("cloud", "concurrency"), 10**30, "less than or equal to 256"),
        (("cloud", "requests_per_second"), ".inf", "less than or equal to 1000000"),
        (("policies", 0, "retry", "multiplier"), 1e300, "less than or equal to 100"),
        (("policies", 0, "max_in_flight"), 10**30, "less than or equal to 1000000"),
    ],
)
def test_durations_sizes_and_counts_past_their_range_are_refused_with_the_range(
    base: dict[str, Any],
    write: Write,
    check: Check,
    *,
    path: tuple[Any, ...],
    value: Any,
    allowed: str,
) -> None:
    _set(base, path, value)
    text = yaml.safe_dump(base, sort_keys=False).replace("'.inf'", ".inf")
    config = write(text)
    refused(check(config), config, allowed)


def test_every_duration_at_its_maximum_schedules_and_computes_without_overflow(
    base: dict[str, Any], write: Write
) -> None:
    """The ceilings are low enough for what is computed from them: the daemon's trigger,
    a lease's end, a retry's backoff (each overflowed at 99999999d)."""
    from datetime import UTC, datetime

    from daemon.config.load import load_settings
    from daemon.service.scheduling import make_trigger

    base["cloud"].update(lease="1d", timeout="1h", connect_timeout="1h")
    policy = base["policies"][0]
    policy["schedule"] = {"interval": "366d", "jitter": "365d"}
    policy["retry"] = {"initial_backoff": "30d", "max_backoff": "30d", "multiplier": 100}
    policy.update(rpo="3660d", stuck_after="3660d", traffic_budget_per_day="1PiB")
    settings = load_settings(write(base)).settings
    now = datetime(2026, 12, 4, tzinfo=UTC)
    fire = make_trigger(settings.policies[0].schedule).get_next_fire_time(None, now)
    assert fire is not None
    assert fire > now
    assert now + settings.cloud.lease + settings.policies[0].rpo > now


# -- URLs -----------------------------------------------------------------------------------

BAD_URLS = [
    (("notify", "webhook"), {"url": "http://h:pw-canary-1@[::1/x"}, "notify.webhook.url", "host"),
    (("notify", "heartbeat"), {"url": "https://[zz::1]/ping"}, "notify.heartbeat.url", "host"),
    (("cloud", "endpoints"), {"iam": "http://[::1"}, "cloud.endpoints.iam", "host"),
    (
        ("cloud", "endpoints"),
        {"cbr": {"cn-north-4": "ftp://x"}},
        "endpoints.cbr.cn-north-4",
        "http",
    ),
    (("cloud", "proxy"), "http://u:pw-canary-1@proxy:99999", "cloud.proxy", "port"),
    (("cloud", "proxy"), "http://proxy :3128", "cloud.proxy", "space"),
    (("ledger", "url"), "postgresql+psycopg://u:pw-canary-1@db:99999/x", "ledger.url", "port"),
    (("ledger", "url"), "postgresql://u:pw-canary-1@[::1/x", "ledger.url", "host"),
]


@pytest.mark.parametrize("command", [["check-config"], ["--run-once", "--dry-run"]])
@pytest.mark.parametrize(("path", "value", "field", "what"), BAD_URLS)
def test_every_url_is_parsed_at_load_and_never_echoed(
    base: dict[str, Any],
    write: Write,
    capsys: pytest.CaptureFixture[str],
    *,
    command: list[str],
    path: tuple[Any, ...],
    value: Any,
    field: str,
    what: str,
) -> None:
    from daemon.cli.entry import main

    _set(base, path, value)
    config = write(base)
    code = main(["-c", str(config), *command])
    captured = capsys.readouterr()
    err = refused((code, captured.out, captured.err), config, field, what)
    assert "pw-canary" not in captured.out + err


def test_a_postgresql_ledger_through_a_socket_directory_names_no_host_and_is_fine(
    base: dict[str, Any], write: Write
) -> None:
    from daemon.config.load import load_settings

    base["ledger"] = {"url": "postgresql+psycopg://cbr@/cbr?host=/run/postgresql"}
    assert load_settings(write(base)).settings.ledger.url.endswith("/run/postgresql")


# -- what the config path names ------------------------------------------------------------

SHADOW = (
    "root:$6$Zsalt9q$Zhash0123456789abcdef:20228:0:99999:7:::\n"
    "daemon:*:20228:0:99999:7:::\n"
    "cbr:$6$Zsalt8r$Zhash9876543210fedcba:20228:0:99999:7:::\n"
)


def test_a_config_symlinked_to_a_foreign_file_is_not_quoted_back(
    write: Write, check: Check, config_dir: Path
) -> None:
    shadow = write(SHADOW, "shadow")
    shadow.chmod(0o640)
    link = config_dir / "config.yaml"
    link.symlink_to(shadow)
    err = refused(check(link), link, "it is not a cbr-replicator config")
    assert "Zsalt" not in err
    assert "Zhash" not in err
    assert "20228" not in err


def test_an_unknown_key_is_quoted_at_most_40_characters(
    base: dict[str, Any], write: Write, check: Check
) -> None:
    base["cloud"]["Zsecretish" + "x" * 100] = 1
    path = write(base)
    err = refused(check(path), path, "unknown key")
    assert "Zsecretish" + "x" * 27 + "..." in err
    assert "x" * 31 not in err


def run_check_config(path: Path) -> tuple[int, str, str]:
    """In a process of its own: a config that hangs the reader must not hang the suite."""
    cli = str(Path(sys.executable).parent / "cbr-replicator")
    done = subprocess.run(
        [cli, "-c", str(path), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/urandom", "directory"])
def test_a_config_that_is_no_regular_file_is_refused_without_reading_it(
    config_dir: Path, kind: str
) -> None:
    path = config_dir / "config.yaml"
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        path.mkdir(mode=0o700)
    else:
        path.symlink_to(kind)
    what = {"fifo": "a FIFO", "directory": "a directory"}.get(kind, "a device")
    refused(run_check_config(path), path, f"is {what}, not a regular file")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")


@needs_root
def test_a_config_owned_by_another_user_is_refused(
    base: dict[str, Any], write: Write, check: Check
) -> None:
    path = write(base)
    os.chown(path, 4242, -1)
    refused(check(path), path, "is owned by uid 4242, neither root nor", "chown root")


@needs_root
def test_a_secret_file_owned_by_another_user_is_refused(
    base: dict[str, Any], write: Write, check: Check
) -> None:
    secret = write("s3cr3t-sk\n", "sk")
    os.chown(secret, 4242, -1)
    base["cloud"]["credentials"] = {"access_key": "AKID", "secret_key_file": str(secret)}
    path = write(base)
    refused(check(path), path, f"secret file {secret} is owned by uid 4242")


# -- warnings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "warned"),
    [
        ("0.0.0.0:9687", True),
        ("[::]:9687", True),
        ("10.1.2.3:9687", True),
        ("metrics.example:9687", True),
        ("127.0.0.1:9687", False),
        ("[::1]:9687", False),
        ("localhost:9687", False),
    ],
)
def test_metrics_listening_beyond_this_host_is_warned_about(
    base: dict[str, Any], write: Write, check: Check, listen: str, warned: bool
) -> None:
    base["metrics"] = {"listen": listen}
    path = write(base)
    code, _out, err = check(path)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert bool(warnings) is warned, err
    if warned:
        assert warnings[0].startswith(f"warning: {path}:")
        assert "metrics.listen: serves the metrics beyond this host" in warnings[0]


def test_a_config_with_misspelt_sections_only_still_gets_its_suggestions(
    write: Write, check: Check
) -> None:
    path = write("clod: {provider: emulator}\npolices: []\n")
    refused(check(path), path, "did you mean cloud?", "did you mean policies?")
