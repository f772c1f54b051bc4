"""Every kind of bad config exits 78 with FILE:LINE: field.path: problem; fix. No traceback."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.config import files

Check = Callable[[Path], tuple[int, str, str]]
Write = Callable[..., Path]


def assert_config_error(result: tuple[int, str, str], path: Path, *needles: str) -> str:
    code, out, err = result
    assert code == 78, (out, err)
    assert "Traceback" not in out + err
    assert path.name in err
    for needle in needles:
        assert needle in err, err
    return err


def policy(config: dict[str, Any], index: int = 0) -> dict[str, Any]:
    entry: dict[str, Any] = config["policies"][index]
    return entry


def second_policy(config: dict[str, Any], **changes: Any) -> None:
    other = dict(policy(config), name="db-dr")
    other.update(changes)
    config["policies"].append(other)


# (id, mutation of the base config, field path expected in the message, other needle)
CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    (
        "unknown_key",
        lambda c: c["cloud"].update(timout="30s"),
        "cloud.timout",
        "did you mean timeout",
    ),
    (
        "wrong_type",
        lambda c: c["cloud"].update(concurrency="many"),
        "cloud.concurrency",
        "whole number",
    ),
    (
        "missing_required",
        lambda c: policy(c).pop("destination"),
        "policies[0].destination",
        "missing",
    ),
    (
        "invalid_cron",
        lambda c: policy(c)["schedule"].update(cron="61 * * * *"),
        "policies[0].schedule.cron",
        "outside 0-59",
    ),
    (
        "cron_with_both_days",
        lambda c: policy(c)["schedule"].update(cron="0 0 1 * MON"),
        "policies[0].schedule.cron",
        "not both",
    ),
    (
        "cron_and_interval",
        lambda c: policy(c)["schedule"].update(interval="6h"),
        "policies[0].schedule",
        "exactly one",
    ),
    (
        "duplicate_name",
        lambda c: second_policy(
            c, name="web-dr", source={"region": "cn-north-4", "vaults": ["db"]}
        ),
        "policies[1].name",
        "duplicate",
    ),
    (
        "same_vault_and_region",
        second_policy,
        "policies[1].source.vaults",
        "also replicated by policy 'web-dr'",
    ),
    (
        "bad_policy_name",
        lambda c: policy(c).update(name="web dr"),
        "policies[0].name",
        "1-64 letters",
    ),
    (
        "long_policy_name",
        lambda c: policy(c).update(name="x" * 65),
        "policies[0].name",
        "1-64 letters",
    ),
    (
        "bad_name_template_char",
        lambda c: policy(c).update(replica={"name": "{backup_name}.copy"}),
        "policies[0].replica.name",
        "'.'",
    ),
    (
        "unknown_placeholder",
        lambda c: policy(c).update(replica={"name": "{host}"}),
        "policies[0].replica.name",
        "unknown placeholder {host}",
    ),
    (
        "long_name_template",
        lambda c: policy(c).update(replica={"name": "n" * 65}),
        "policies[0].replica.name",
        "65 characters",
    ),
    (
        "long_description",
        lambda c: policy(c).update(replica={"description": "d" * 256}),
        "policies[0].replica.description",
        "keep it to 255",
    ),
    (
        "zero_limit",
        lambda c: policy(c).update(max_in_flight=0),
        "policies[0].max_in_flight",
        "greater than 0",
    ),
    (
        "negative_limit",
        lambda c: c["cloud"].update(concurrency=-1),
        "cloud.concurrency",
        "greater than 0",
    ),
    (
        "zero_duration",
        lambda c: c["cloud"].update(timeout="0s"),
        "cloud.timeout",
        "longer than zero",
    ),
    (
        "bad_duration",
        lambda c: policy(c)["schedule"].update(jitter="5 minutes"),
        "policies[0].schedule.jitter",
        "not a duration",
    ),
    (
        "bad_size",
        lambda c: policy(c).update(traffic_budget_per_day="2 tera"),
        "policies[0].traffic_budget_per_day",
        "not a size",
    ),
    (
        "unknown_provider",
        lambda c: c["cloud"].update(provider="aws"),
        "cloud.provider",
        "'huaweicloud' or 'emulator'",
    ),
    (
        "credentials_missing",
        lambda c: c["cloud"].update(provider="huaweicloud"),
        "cloud.credentials",
        "required for provider huaweicloud",
    ),
    (
        "tls_off_without_bundle",
        lambda c: c["cloud"].update(verify_tls=False),
        "cloud.verify_tls",
        "ca_bundle",
    ),
    (
        "lease_too_short",
        lambda c: c["cloud"].update(lease="40s"),
        "cloud.lease",
        "must exceed connect_timeout + timeout (40s)",
    ),
    (
        "unknown_timezone",
        lambda c: policy(c)["schedule"].update(timezone="Mars/Olympus"),
        "policies[0].schedule.timezone",
        "unknown time zone",
    ),
    (
        "same_region",
        lambda c: policy(c)["destination"].update(region="cn-north-4"),
        "policies[0].destination",
        "equals the source region",
    ),
    (
        "empty_vaults",
        lambda c: policy(c)["source"].update(vaults=[]),
        "policies[0].source.vaults",
        "list at least one",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field", "needle"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_config_is_reported_with_file_and_field(
    base: dict[str, Any],
    write: Write,
    check: Check,
    *,
    mutate: Callable[[dict[str, Any]], None],
    field: str,
    needle: str,
) -> None:
    mutate(base)
    path = write(base)
    err = assert_config_error(check(path), path, f": {field}: ", needle)
    assert err.startswith(f"{path}:")


def test_yaml_syntax_error_names_the_line(write: Write, check: Check) -> None:
    path = write("cloud:\n  provider: emulator\npolicies: [\n  {name: x\n")
    err = assert_config_error(check(path), path, "invalid YAML")
    assert err.startswith(f"{path}:")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("cloud:\n  provider: *missing\n", ":2: invalid YAML: found undefined alias 'missing'"),
        ("cloud:\n\t provider: emulator\n", "found character '\\t' that cannot start any token"),
    ],
    ids=["alias", "tab"],
)
def test_yaml_syntax_error_says_what_it_found(
    write: Write, check: Check, text: str, needle: str
) -> None:
    """The file is read with libyaml where PyYAML has it, whose messages leave out the alias
    and the character: a file it refuses is read again in pure Python for the message."""
    path = write(text)
    assert_config_error(check(path), path, needle)


def test_unknown_key_points_at_its_line(write: Write, check: Check) -> None:
    path = write("cloud:\n  provider: emulator\n  proxxy: http://p:3128\n")
    assert_config_error(
        check(path), path, f"{path}:3: cloud.proxxy: unknown key; did you mean proxy?"
    )


def test_python_tag_is_refused(write: Write, check: Check) -> None:
    path = write("cloud:\n  provider: !!python/object:os.system emulator\n")
    assert_config_error(check(path), path, f"{path}:2: cloud.provider: YAML tag !!python/object")


def test_missing_config_file(config_dir: Path, check: Check) -> None:
    path = config_dir / "absent.yaml"
    assert_config_error(check(path), path, "cannot read", "check the path")


def test_file_over_one_mebibyte_is_not_parsed(write: Write, check: Check) -> None:
    path = write("cloud: {provider: emulator}\n" + "#" * (1 << 20) + "\n")
    assert_config_error(check(path), path, "limited to 1 MiB")


def test_world_writable_config_file(base: dict[str, Any], write: Write, check: Check) -> None:
    path = write(base)
    path.chmod(0o666)
    assert_config_error(check(path), path, "mode 0666", f"chmod 640 {path}")


def test_missing_environment_variable(base: dict[str, Any], write: Write, check: Check,
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("CBR_TEST_AK", raising=False)
    base["cloud"]["credentials"] = {"access_key": "${CBR_TEST_AK}", "secret_key": "s3cr3t-value"}
    path = write(base)
    assert_config_error(
        check(path),
        path,
        "cloud.credentials.access_key: environment variable CBR_TEST_AK is not set",
    )


def secret_config(base: dict[str, Any], secret: Path) -> dict[str, Any]:
    base["cloud"]["credentials"] = {"access_key": "AKID", "secret_key_file": str(secret)}
    return base


def test_missing_secret_file(base: dict[str, Any], write: Write, check: Check,
                             config_dir: Path) -> None:  # fmt: skip
    path = write(secret_config(base, config_dir / "nope"))
    assert_config_error(check(path), path, "cloud.credentials.secret_key_file: secret file", "nope")


def test_a_secret_path_with_a_line_break_stays_one_line(
    base: dict[str, Any], write: Write, check: Check, config_dir: Path
) -> None:
    # Found by the config fuzzer (T4): the path was quoted raw and split the message in two.
    path = write(secret_config(base, config_dir / "\n\n"))
    code, _out, err = check(path)
    assert code == 78
    problems = [line for line in err.splitlines() if "secret_key_file" in line]
    assert len(problems) == 1
    assert problems[0].startswith(str(path))
    assert "\\n" in problems[0]


def test_secret_file_readable_by_group(base: dict[str, Any], write: Write, check: Check) -> None:
    secret = write("sk-value-123\n", "sk")
    secret.chmod(0o640)
    path = write(secret_config(base, secret))
    err = assert_config_error(
        check(path), path, "secret_key_file", "mode 0640", f"chmod 600 {secret}"
    )
    assert "sk-value-123" not in err


def test_symlinked_secret_file(base: dict[str, Any], write: Write, check: Check,
                               config_dir: Path) -> None:  # fmt: skip
    target = write("sk-value-123\n", "real-sk")
    link = config_dir / "sk"
    link.symlink_to(target)
    path = write(secret_config(base, link))
    assert_config_error(check(path), path, "secret_key_file", "is a symlink")


def test_secret_in_writable_directory(base: dict[str, Any], write: Write, check: Check,
                                      config_dir: Path) -> None:  # fmt: skip
    secret = write("sk-value-123\n", "shared/sk")
    secret.parent.chmod(0o777)
    path = write(secret_config(base, secret))
    assert_config_error(
        check(path), path, "secret_key_file", "not sticky", f"chmod go-w {secret.parent}"
    )


def test_sticky_directory_is_accepted(base: dict[str, Any], write: Write, check: Check) -> None:
    secret = write("sk-value-123\n", "tmp/sk")
    secret.parent.chmod(0o1777)
    code, _out, err = check(write(secret_config(base, secret)))
    assert code == 0, err


def test_error_in_policies_dir_file_names_that_file(base: dict[str, Any], write: Write,
                                                     check: Check) -> None:  # fmt: skip
    base["policies_dir"] = "policies.d"
    path = write(base)
    bad = write(
        "- name: db-dr\n  source: {region: cn-north-4, vaults: [db]}\n"
        "  destination: {region: cn-south-1, vault: db-dr}\n  schedule: {interval: 6h}\n"
        "  max_in_flight: -3\n",
        "policies.d/db.yaml",
    )
    assert_config_error(check(path), bad, f"{bad}:5: policies[0].max_in_flight: ")


def test_policies_dir_file_must_hold_a_list(
    base: dict[str, Any], write: Write, check: Check
) -> None:
    base["policies_dir"] = "policies.d"
    path = write(base)
    bad = write("name: db-dr\n", "policies.d/db.yaml")
    assert_config_error(check(path), bad, "must be a YAML list of policies")


def test_all_problems_are_reported_at_once(write: Write, check: Check) -> None:
    path = write(
        "cloud:\n"
        "  provider: emulator\n"
        "  concurrency: 0\n"
        "policies:\n"
        "  - name: web dr\n"
        "    source: {region: cn-north-4, vaults: [web-prod]}\n"
        "    destination: {region: cn-south-1, vault: web-dr}\n"
        '    schedule: {cron: "0 25 * * *"}\n'
    )
    err = assert_config_error(check(path), path)
    problems = [line for line in err.splitlines() if "problem(s)" not in line]
    assert problems == [
        f"{path}:3: cloud.concurrency: Input should be greater than 0; use a larger value",
        f"{path}:5: policies[0].name: has the wrong format; use 1-64 letters, digits, '_' or '-'",
        f"{path}:8: policies[0].schedule.cron: hour field: '25' is outside 0-23",
    ]


def test_error_in_inherited_default_points_at_defaults(write: Write, check: Check) -> None:
    path = write(
        "cloud: {provider: emulator}\n"
        "defaults:\n"
        "  retry: {max_attempts: 0}\n"
        "policies:\n"
        "  - name: web-dr\n"
        "    source: {region: cn-north-4, vaults: [web-prod]}\n"
        "    destination: {region: cn-south-1, vault: web-dr}\n"
        "    schedule: {interval: 1h}\n"
    )
    err = assert_config_error(check(path), path, f"{path}:3: defaults.retry.max_attempts: ")
    assert err.count("max_attempts") == 1  # once, not once more per policy


def test_secret_values_never_appear_in_errors(base: dict[str, Any], write: Write, check: Check,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("CBR_TEST_SK", "very-secret-sk-9")
    base["cloud"]["credentials"] = {"access_key": "AKID", "secret_key": "${CBR_TEST_SK}", "x": 1}
    base["cloud"]["concurrency"] = "${CBR_TEST_SK}"
    path = write(base)
    err = assert_config_error(check(path), path, "cloud.credentials.x", "cloud.concurrency")
    assert "very-secret-sk-9" not in err
    assert os.environ["CBR_TEST_SK"] == "very-secret-sk-9"


def test_unknown_key_in_policy_suggests_the_field(
    base: dict[str, Any], write: Write, check: Check
) -> None:
    policy(base)["max_inflight"] = 3
    path = write(base)
    assert_config_error(
        check(path), path, "policies[0].max_inflight: unknown key; did you mean max_in_flight?"
    )


def test_secret_file_key_must_be_a_path(base: dict[str, Any], write: Write, check: Check) -> None:
    base["cloud"]["credentials"] = {"access_key_file": 5, "secret_key": "x"}
    path = write(base)
    err = assert_config_error(
        check(path), path, "cloud.credentials.access_key_file: write the path"
    )
    assert "missing" not in err


def test_a_config_the_service_user_cannot_read_says_so_and_how_to_let_it(
    write: Write, check: Check, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root reads any file, so the refusal an operator meets as the service's user is made here.
    path = write({"cloud": {"provider": "emulator"}, "policies": []})
    real_read = files.read_bounded_file

    def read_bounded(where: Path, **options: Any) -> bytes:
        if where == path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(where, **options)

    monkeypatch.setattr(files, "read_bounded_file", read_bounded)
    err = assert_config_error(check(path), path, "permission denied", f"chmod 640 {path}")
    assert "UTF-8" not in err


def test_a_url_with_a_password_in_another_field_is_quoted_without_it(
    base: dict[str, Any], write: Write, check: Check
) -> None:
    policy(base)["traffic_budget_per_day"] = "http://ops:hunter2pass@[::1/x"
    path = write(base)
    err = assert_config_error(check(path), path, "traffic_budget_per_day", "http://ops:****@")
    assert "hunter2pass" not in err
