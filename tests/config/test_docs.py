"""The documentation cannot drift: the option reference is the models' (generated), and the
README names every reason code and exit code; the IAM policy is the least-privilege one."""

from __future__ import annotations

import json
import re
from pathlib import Path

from daemon.config.reference import config_reference
from daemon.core import exitcodes
from daemon.core.model import Reason
from daemon.core.policy import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_option_reference_is_generated_from_the_models() -> None:
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == config_reference(), (
        "docs/configuration.md is out of date: run "
        "`cbr-replicator schema --markdown > docs/configuration.md`"
    )


def test_the_reference_lists_every_option_of_every_model() -> None:
    options = set(re.findall(r"^\| `([^`]+)` \|", config_reference(), re.MULTILINE))
    assert {"cloud.timeout", "policies[].rpo", "policies[].stuck_after"} <= options
    assert {"notify.webhook.secret", "notify.webhook.secret_file"} <= options
    assert "policies[].notify.heartbeat.url" in options
    sections = {option.split(".")[0].split("[")[0] for option in options}
    assert sections == set(Settings.model_fields)


def test_the_readme_names_every_reason_code_and_exit_code() -> None:
    missing = [reason.value for reason in Reason if f"`{reason.value}`" not in README]
    assert missing == []
    codes = [
        value
        for name, value in vars(exitcodes).items()
        if name.isupper() and isinstance(value, int)
    ]
    exit_codes = README[README.index("Exit codes:") :].split("\n\n", 2)[1]  # the list
    assert [code for code in codes if not re.search(rf"\b{code}\b", exit_codes)] == []


def test_the_iam_policy_grants_the_least_privilege_of_reliability_section_5() -> None:
    policy = json.loads((ROOT / "docs" / "iam-policy.json").read_text())
    [statement] = policy["Statement"]
    assert statement["Effect"] == "Allow"
    actions = set(statement["Action"])
    assert actions == {
        "cbr:vaults:list",
        "cbr:vaults:get",
        "cbr:backups:list",
        "cbr:backups:get",
        "cbr:backups:replicate",
        "cbr:vaults:replicate",
        "cbr:tasks:list",
        "cbr:tasks:get",
        "cbr:backups:queryReplicationCapability",
        "iam:projects:listProjects",
    }
    assert not [a for a in actions if re.search(r"delete|update|restore|create", a, re.I)]
    assert all(f"`{action}`" in README for action in actions)
