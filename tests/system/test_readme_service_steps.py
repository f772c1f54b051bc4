"""The README steps the system test (boot_check.sh) runs are where it looks for them, and the
README's journald pipelines find the JSON lines of a journal that also holds plain ones."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import pytest

from tests.system.boot_check import STATUS_SHAPE, Readme, wanted_by, without_sudo

# A unit's journal as `journalctl -o cat` prints it: systemd's own lines and a configuration
# error's plain text between the daemon's JSON lines.
JOURNAL = [
    "Starting cbr-replicator.service - cbr-replicator: replicate Huawei Cloud CBR backups...",
    json.dumps({"event": "daemon_started", "level": "info"}),
    json.dumps({"event": "sweep_finished", "level": "info", "policy": "web"}),
    "cbr-replicator.service: Main process exited, code=exited, status=78/CONFIG",
    "/etc/cbr-replicator/config.yaml:7: policies[0].destinaton: unknown key",
    json.dumps({"event": "rpo_breached", "level": "error", "policy": "web"}),
    json.dumps({"event": "sweep_finished", "level": "warning", "policy": "web"}),
    "",
]


def test_every_step_the_system_test_runs_is_in_the_readme() -> None:
    readme = Readme.load()
    for marker in ("python3 -m venv", "read -rp", "ledger: {url:", "cbr() {", "systemctl reload"):
        assert readme.block(marker)
    assert STATUS_SHAPE.match(readme.status_comment())
    assert readme.inline(r"sudo systemctl disable --now cbr-replicator; [^`]+").endswith(
        "enable --now cbr-replicator-sweep.timer"
    )
    assert len(readme.pipelines()) == 2


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
@pytest.mark.parametrize("pipeline", Readme.load().pipelines())
def test_a_readme_pipeline_prints_every_wanted_line_of_a_mixed_journal(pipeline: str) -> None:
    jq = shlex.split(without_sudo(pipeline).split("|", 1)[1])
    done = subprocess.run(jq, input="\n".join(JOURNAL), capture_output=True, text=True, check=False)
    wanted = wanted_by(pipeline)
    expected = [line for line in JOURNAL if line.startswith("{") and wanted(json.loads(line))]
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        json.loads(line) for line in expected
    ]
