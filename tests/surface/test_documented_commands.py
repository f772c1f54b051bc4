"""Every command line README.md and docs/*.md show runs as written, as a user runs it: the
installed ``cbr-replicator`` in a shell, in a workspace holding a copy of ``config/``, against
the emulator started by the README's own ``cbr-replicator emulator ... &`` line. Each exits
with an expected code and never prints a traceback. A line that cannot run here (root,
systemd, a placeholder for elided options) is listed in EXCLUDED with the reason; a new line
in a document is run, or the test asks for it to be listed.

The runbook's ``cbr`` (the README's shell function: the CLI as the service's user through
systemd-run) is the installed CLI with the stand-alone config here; ``CONFIG``, ``BACKUP_ID``
and ``ID``, ``REGION`` are filled in with that config, a demo backup and its destination.
"""

from __future__ import annotations

import argparse
import re
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from daemon.cli.parser import build_parser
from daemon.emulator import build_parser as build_emulator_parser
from tests.surface.documents import Documented, documented_commands, synopsis_lines
from tests.surface.surface_support import (
    BIN,
    CLI,
    DEADLINE,
    DOCUMENTED_ADDRESS,
    STANDALONE,
    StandaloneEmulator,
    environment,
    make_workspace,
    no_traceback,
    point_config_at,
)

_SYSTEMD = "needs systemd and root: the units themselves are checked by tests/system"
_ROOT = "needs root (sudo): the install steps; the paths they use are checked by tests/system"
EXCLUDED: dict[str, str] = {
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && "
    ".venv/bin/python -m pytest -q -n 2": "the test suite itself (.ci/run runs it)",
    "cbr-replicator": "names the program (the daemon, which tests/service runs)",
    "cbr-replicator emulator": "names the command; the lines below run it",
    "cbr-replicator retry": "names the command; the runbook's `cbr retry ...` runs it",
    "cbr ...": "a pattern for the commands that follow, not a command",
    "cbr-replicator -c CONFIG ...": "a pattern, not a command",
    "cbr-replicator ...": "a pattern, not a command",
    "cbr replicate-backup BACKUP_ID ...": "its options are elided (...)",
    "sudo python3 -m venv /opt/cbr-replicator": _ROOT,
    "sudo /opt/cbr-replicator/bin/pip install . # from a clone of this repository": _ROOT,
    "sudo install -m 0644 systemd/cbr-replicator.sysusers "
    "/usr/lib/sysusers.d/cbr-replicator.conf": _ROOT,
    "sudo systemd-sysusers": _ROOT,
    "sudo install -m 0644 systemd/cbr-replicator.service /etc/systemd/system/": _ROOT,
    "sudo install -d -m 0750 -o root -g cbr-replicator /etc/cbr-replicator": _ROOT,
    "sudo install -m 0640 -o root -g cbr-replicator config/cbr-replicator.yaml "
    "/etc/cbr-replicator/config.yaml": _ROOT,
    "sudo install -d -m 0700 /etc/cbr-replicator/credentials": _ROOT,
    'sudo bash -c \'umask 077; read -rp "access key: " ak; read -rsp "secret key: " sk; '
    'echo printf %s "$ak" >/etc/cbr-replicator/credentials/ak; printf %s "$sk" '
    ">/etc/cbr-replicator/credentials/sk'": _ROOT,
    "cbr() { sudo systemd-run --quiet --pipe --wait --collect -p User=cbr-replicator "
    "-p LoadCredential=ak:/etc/cbr-replicator/credentials/ak "
    "-p LoadCredential=sk:/etc/cbr-replicator/credentials/sk "
    "-p Environment=HOME=/var/lib/cbr-replicator /opt/cbr-replicator/bin/cbr-replicator "
    '-c /etc/cbr-replicator/config.yaml "$@"; }': "defines `cbr` through sudo and systemd-run; "
    "this test defines it as the installed CLI with the stand-alone config",
    "sudo systemctl daemon-reload": _SYSTEMD,
    "sudo systemctl enable --now cbr-replicator": _SYSTEMD,
    'systemctl status cbr-replicator # Status: "idle; 0 queued, 0 in flight, no sweep yet"': (
        _SYSTEMD
    ),
    "sudo systemctl reload cbr-replicator": _SYSTEMD,
    "journalctl -u cbr-replicator -n 20 -o cat": _SYSTEMD,
    "journalctl -u cbr-replicator -f -o cat": _SYSTEMD,
    "journalctl -u cbr-replicator -o cat --since today | "
    "jq -cR 'fromjson? | select(.event == \"sweep_finished\")'": _SYSTEMD,
    "journalctl -u cbr-replicator -o cat | "
    'jq -cR \'fromjson? | select(.level == "warning" or .level == "error")\'': _SYSTEMD,
}
# Setting up the environment the test already runs in: the rest of the line runs.
SETUP = ("python3 -m venv .venv && .venv/bin/pip install -q -e . && ",)
# Exit codes other than 0 that a documented line may have here, and why.
EXPECTED_CODES: dict[str, tuple[set[int], str]] = {
    "cbr retry BACKUP_ID --to-region REGION": (
        {2, 3},
        "BACKUP_ID's job succeeded here: retry refuses a job that is not failed or given up",
    ),
}
BACKGROUND_STOP = "kill %1"  # stops the `... &` line's process: done last
PLACEHOLDER_BACKUP = "db-prod-2026-11-01"  # replicated by the stand-alone run
PLACEHOLDER_REGION = "cn-south-1"


@dataclass
class Workspace:
    directory: Path
    config: Path | None = None  # the stand-alone config, once its emulator runs
    emulator: StandaloneEmulator | None = None
    backup_id: str = ""


def runnable() -> list[Documented]:
    """Each documented line once (in document order), without the excluded ones."""
    seen: set[str] = set()
    lines = []
    for command in documented_commands():
        if command.text in EXCLUDED or command.text in seen:
            continue
        seen.add(command.text)
        lines.append(command)
    return lines


def test_every_documented_line_runs_or_is_excluded_with_a_reason() -> None:
    texts = {command.text for command in documented_commands()}
    stale = sorted(text for text in EXCLUDED if text not in texts)
    assert stale == [], "EXCLUDED lists lines no document shows any more"
    unknown = sorted(set(EXPECTED_CODES) - texts)
    assert unknown == [], "EXPECTED_CODES lists lines no document shows any more"
    assert len(runnable()) >= 20  # the documents' examples are found at all


def test_every_documented_command_line_runs_as_written(tmp_path: Path) -> None:
    workspace = Workspace(make_workspace(tmp_path))
    results: list[str] = []
    try:
        for command in runnable():
            if command.text == BACKGROUND_STOP:
                continue  # the emulator serves the commands of every document; stopped last
            results.append(_run(command, workspace))
    finally:
        if workspace.emulator is not None:
            code, stderr = workspace.emulator.stop(signal.SIGTERM)
            assert (code, no_traceback(stderr)) == (0, True), f"{BACKGROUND_STOP}: {stderr}"
    failures = [result for result in results if result]
    assert failures == [], "\n\n".join(failures)


def _run(command: Documented, workspace: Workspace) -> str:
    """Run one documented line; '' if it did as expected, else what went wrong."""
    text = command.text
    for prefix in SETUP:
        text = text.removeprefix(prefix)
    if text.endswith(" &"):
        _start_background(text.removesuffix(" &"), workspace)
        return ""
    script = _shell_script(text, workspace)
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        cwd=workspace.directory,
        capture_output=True,
        text=True,
        env=environment(workspace.config),
        timeout=DEADLINE,
        check=False,
    )
    codes, why = EXPECTED_CODES.get(command.text, ({0}, ""))
    if result.returncode in codes and no_traceback(result.stderr):
        return ""
    expected = f"exit {sorted(codes)}" + (f" ({why})" if why else "")
    return f"{command}\n  ran: {script}\n  exit {result.returncode}, {expected}\n{result.stderr}"


def _start_background(text: str, workspace: Workspace) -> None:
    """The README's ``cbr-replicator emulator ... &``: on a free port instead of the
    documented one, with the stand-alone config pointed at it."""
    assert DOCUMENTED_ADDRESS in text, text
    assert workspace.emulator is None, text
    command = _shell_words(text.replace(DOCUMENTED_ADDRESS, "127.0.0.1:0"))
    workspace.emulator = StandaloneEmulator(command, workspace.directory)
    workspace.config = point_config_at(workspace.directory, workspace.emulator)
    workspace.backup_id = workspace.emulator.backup_id(PLACEHOLDER_BACKUP)


def _shell_words(text: str) -> list[str]:
    words = shlex.split(text)
    return [_program(words[0]), *words[1:]]


def _program(word: str) -> str:
    return CLI if word in ("cbr-replicator", ".venv/bin/cbr-replicator") else word


def _shell_script(text: str, workspace: Workspace) -> str:
    config = workspace.config or workspace.directory / STANDALONE
    etc = workspace.directory / "etc"
    etc.mkdir(exist_ok=True)
    text = text.replace("/etc/cbr-replicator/", f"{etc}/")
    text = re.sub(r"\bCONFIG\b", str(config), text)
    text = re.sub(r"\b(BACKUP_ID|ID)\b", workspace.backup_id, text)
    text = re.sub(r"\bREGION\b", PLACEHOLDER_REGION, text)
    text = re.sub(r"(^|&& )\.venv/bin/", rf"\g<1>{BIN}/", text)
    cbr = f'cbr() {{ "{CLI}" -c "{config}" "$@"; }}'  # the README's function, without sudo
    return f"{cbr}\n{text}"


# -- --help and the synopsis ----------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_lines() -> list[list[str]]:
    """Every command and sub-command, as its words after ``cbr-replicator``."""
    lines: list[list[str]] = [[]]
    for name, parser in _subparsers(build_parser()).items():
        lines.append([name])
        lines += [[name, sub] for sub in _subparsers(parser)]
    return lines


def test_every_command_s_help_exits_0() -> None:
    words = _command_lines()
    assert ["emulator"] in words
    assert ["report", "traffic"] in words
    processes = {
        " ".join(line): subprocess.Popen(
            [CLI, *line, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        for line in [*words, ["emulator", "-h"]]
    }
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=DEADLINE)
        assert process.returncode == 0, (name, stderr)
        assert stdout.startswith("usage: cbr-replicator"), (name, stdout)
    usage = subprocess.run([CLI, "--help"], capture_output=True, text=True, check=True)
    assert "  4    --wait ran out" in usage.stdout  # the exit codes, in --help too


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The long form of every option but --help, with its action."""
    found = {}
    for action in parser._actions:
        longs = [flag for flag in action.option_strings if flag.startswith("--")]
        if longs and longs[0] != "--help":
            found[longs[0]] = action
    return found


def _shown(line: str) -> set[str]:
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))
    if re.search(r"\[-c CONFIG\]", line):
        flags.add("--config")
    return flags


def test_the_readme_synopsis_shows_every_option_of_every_command() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    parsers: dict[str, argparse.ArgumentParser] = {
        name: command for name, command in commands.items() if name not in ("report", "emulator")
    }
    parsers["report traffic"] = _subparsers(commands["report"])["traffic"]
    parsers["emulator"] = build_emulator_parser()
    lines = synopsis_lines()
    top_level: set[str] = set()
    for line in lines:
        words = line.split()
        assert words[0] == "cbr-replicator", line
        name = next((n for n in parsers if f" {n} " in f"{line} "), None)
        if name is None:
            top_level |= _shown(line)
            continue
        options = _options(parsers[name])
        shown = _shown(line.split(f" {name}", 1)[1]) | ({"--config"} & _shown(line))
        assert shown - {"--config"} == set(options), (line, sorted(options))
        for flag, action in options.items():
            if action.required:
                assert f"[{flag}" not in line, f"{flag} is required: {line}"
    assert top_level == set(_options(parser)), sorted(_options(parser))
    assert {line.split()[1] for line in lines if len(line.split()) > 1} >= {"schema", "emulator"}
    documented = {name for name in parsers if any(f" {name} " in f"{x} " for x in lines)}
    assert documented == set(parsers)


def test_the_synopsis_test_would_see_a_missing_option() -> None:
    line = "cbr-replicator [-c CONFIG] status"
    assert _shown(line) == {"--config"}
    assert _shown("cbr-replicator schema [--policies-file | --markdown]") == {
        "--policies-file",
        "--markdown",
    }
