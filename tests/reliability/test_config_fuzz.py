"""T4 (docs/design.md §13): hypothesis-generated configs never crash the loader.

Each example starts from a valid config (main file, a ``policies_dir`` file and a secret file)
and spoils it: values of the wrong type, unknown or missing keys, huge numbers, unsafe or
broken YAML tags, anchors and aliases (an alias bomb, a recursive alias), deep nesting, syntax
errors, bytes that are not UTF-8, group- or world-writable files and directories, symlinks.
The property: ``load_settings`` either returns settings or raises ``ConfigError`` whose every
problem is one line naming the file it is about; any other exception is a bug. The bulk runs
in-process; a sample runs the real ``cbr-replicator check-config`` (exit 78, no traceback).

Reloading a broken config while the daemon runs (the old config stays) is the SIGHUP tests'
business (tests/service), not this file's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from daemon.config.load import load_settings
from daemon.core.errors import ConfigError
from tests.reliability.reliability_support import scratch_directory

CLI = str(Path(sys.executable).parent / "cbr-replicator")
SECRET = "SKt4-canary-secret-value"
ACCESS = "AKt4-canary-access-key"
SET_VARIABLE = "CBR_T4_SET"
ENVIRONMENT = {SET_VARIABLE: "from-the-environment", "PATH": os.environ.get("PATH", "")}
PLACEHOLDER = "T4PLACEHOLDER"
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when built in: faster
TIME_LIMIT = 10.0  # seconds per load: an alias bomb must be refused, not expanded


def valid_config() -> dict[str, Any]:
    """A config using most sections (docs/design.md §8), valid as it is."""
    return {
        "ledger": {"url": "sqlite:///state/ledger.db"},
        "cloud": {
            "provider": "emulator",
            "credentials": {"access_key": ACCESS, "secret_key_file": "sk", "domain_id": "d0"},
            "endpoints": {
                "iam": "https://iam.example.internal",
                "cbr": {"cn-north-4": "https://cbr.example.internal"},
            },
            "projects": {"cn-north-4": "0123abcd"},
            "verify_tls": True,
            "timeout": "30s",
            "requests_per_second": 10,
            "concurrency": 8,
            "lease": "2m",
        },
        "defaults": {
            "schedule": {"cron": "0 * * * *"},
            "retry": {"max_attempts": 6, "initial_backoff": "5m", "max_backoff": "6h"},
            "max_in_flight": 10,
        },
        "metrics": {"listen": "127.0.0.1:9687"},
        "log": {"format": "auto", "level": "info"},
        "policies_dir": "policies.d",
        "policies": [
            {
                "name": "web-dr",
                "enabled": True,
                "source": {"region": "cn-north-4", "vaults": ["web-prod"]},
                "destination": {"region": "cn-south-1", "vault": "web-dr"},
                "schedule": {"cron": "30 */6 * * *", "timezone": "UTC", "jitter": "5m"},
                "replica": {"name": "{backup_name}", "description": "DR copy of {backup_id}"},
                "max_in_flight": 4,
                "traffic_budget_per_day": "2TiB",
                "rpo": "12h",
            },
            {
                "name": "db-dr",
                "source": {"region": "cn-north-4", "vaults": ["db-prod"]},
                "destination": {"region": "ap-southeast-1", "vault": "db-dr"},
            },
        ],
    }


def valid_policy_file() -> list[dict[str, Any]]:
    return [
        {
            "name": "files-dr",
            "source": {"region": "cn-north-4", "vaults": ["files"]},
            "destination": {"region": "cn-south-1", "vault": "files-dr"},
            "schedule": {"interval": "6h"},
        }
    ]


# -- values and mutations -----------------------------------------------------------------

# Lone surrogates cannot be written as UTF-8 at all: not a config anyone can save.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
NASTY_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-1",
        "30s",
        "-5m",
        "0s",
        "1e9h",
        "99999999999999999999d",
        "999999999999999999999999999999999999s",
        "1.5.5m",
        "1TiB",
        "-1TiB",
        "999999999999999999999999YiB",
        "61 * * * *",
        "*/0 * * * *",
        "0 0 31 2 *",
        "${CBR_T4_UNSET}",
        f"${{{SET_VARIABLE}}}",
        "${",
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql+psycopg://user:hunter2pass@db/cbr",
        "http://",
        "::1:99999",
        "http://h:hunter2pass@[::1/x",
        "https://[zz::1]/ping",
        "http://proxy:99999",
        "https://host:0/",
        "99999999d",
        "367d",
        "a\x00b",
        "/",
        ".",
        "..",
        "x" * 300,
        "name with spaces",
        "{unknown_placeholder}",
        "<script>",
        "Europe/Nowhere",
        "cn-north-4",
        "web-dr",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**63, 2**64 + 1, 10**100, -(10**30)]),
    st.floats(),
    TEXT,
    NASTY_STRINGS,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)
KEYS = st.one_of(
    TEXT,
    st.sampled_from(["timout", "polices", "nmae", "sk", "secret_key", "<<", "enabled", "x"]),
)

# YAML that ``safe_dump`` never writes: tags, aliases, flow oddities, broken syntax.
INLINE_SNIPPETS = [
    "!!python/object:os.system emulator",
    '!!python/object/apply:os.system ["true"]',
    "!!python/name:os.system ''",
    "!!python/tuple [1, 2]",
    "!!binary aGVsbG8=",
    "!!set {a: null}",
    "!!omap [{a: 1}]",
    "!!pairs [{a: 1}]",
    "!custom value",
    "!<tag:example.com,2000:thing> value",
    "!!int abc",
    "!!int [1]",
    "!!float x",
    "!!bool maybe",
    "!!timestamp yesterday",
    "!!null x",
    "!!map [1, 2]",
    "!!seq {a: 1}",
    "!!str [1]",
    "!!merge x",
    "*undefined_alias",
    "&lonely 5",
    "[unclosed",
    "{a: 1",
    "'unterminated",
    '"bad \\q escape"',
    "a: b: c",
    "- 1\n- 2",
    "1e999",
    ".inf",
    "-.inf",
    ".nan",
    "0x7fffffffffffffffffffffff",
    "0o777",
    "0b1010",
    "1_000",
    "1:30",
    "2026-01-01",
    "2026-01-01 10:00:00",
    "yes",
    "off",
    "~",
    "@reserved",
    "`reserved",
    "% percent",
    "[" * 60 + "]" * 60,
    "[" * 200 + "]" * 200,
    "{a: " * 100 + "1" + "}" * 100,
]
# Beyond the YAML composer's recursion: seconds each, so only in the explicit tests below.
DEEP_SNIPPETS = ["[" * 700 + "]" * 700, "{a: " * 700 + "1" + "}" * 700]


def alias_bomb(levels: int) -> str:
    """``levels`` anchors, each a list of nine aliases of the one before: 9**levels values."""
    lines = ["a1: &a1 [x, x, x, x, x, x, x, x, x]"]
    for n in range(2, levels + 1):
        lines.append(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]")
    return "\n".join(lines)


BIG_ALIAS_BOMB = alias_bomb(7)  # 4.8 million values if anything expanded it
TOP_LEVEL_SNIPPETS = [
    alias_bomb(4),  # 6,561 values: under the loader's bound, expanded and refused as keys
    "loop: &loop [*loop]",
    "loop: &loop {again: *loop}",
    "merged: &m {<<: *m}",
    "base: &base {provider: emulator}\nother: {<<: *base, concurrency: 2}",
    "? [a, b]\n: complex key",
    "? {a: 1}\n: complex key",
    "---\nsecond: document",
    "cloud: {provider: emulator}",  # a key given twice
    "\ttab: indented",
    "...",
    "%YAML 1.1",
    "- a list\n- at the top",
]
FILE_MODES = st.sampled_from([0o600, 0o600, 0o600, 0o640, 0o644, 0o660, 0o666, 0o602, 0o400])
DIRECTORY_MODES = st.sampled_from([0o700, 0o700, 0o750, 0o755, 0o770, 0o777, 0o1777])


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into nested mappings and lists (the root excluded)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from paths_of(item, (*prefix, index))


def parent_of(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        document = document[part]
    return document


@st.composite
def spoiled(draw: st.DrawFn, document: Any) -> tuple[Any, list[str]]:
    """``document`` with 1-4 mutations; also the inline snippets to put at placeholders."""
    snippets: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        paths = list(paths_of(document))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = parent_of(document, path)
        key = path[-1]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add", "snippet", "wrap"]))
        if action == "replace":
            parent[key] = draw(VALUES)
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(KEYS)] = draw(VALUES)
        elif action == "snippet" and len(snippets) < 2:
            parent[key] = f"{PLACEHOLDER}{len(snippets)}"
            snippets.append(draw(st.sampled_from(INLINE_SNIPPETS)))
        elif action == "wrap":
            parent[key] = [parent[key]]
    return document, snippets


def render(document: Any, snippets: list[str], top: list[str]) -> str:
    text = yaml.dump(document, Dumper=DUMPER, sort_keys=False, allow_unicode=True)
    for index, snippet in enumerate(snippets):
        text = text.replace(f"{PLACEHOLDER}{index}", snippet)
    return text + "".join(f"{block}\n" for block in top)


@dataclass
class Case:
    """One generated config directory, described before it is written."""

    main: str | bytes
    policy_file: str | bytes | None
    main_mode: int = 0o600
    policy_mode: int = 0o600
    secret_mode: int = 0o600
    directory_mode: int = 0o700
    secret_kind: str = "file"  # file, symlink, directory, missing, binary, stray_newline
    main_is_symlink: bool = False
    oversize: bool = False
    notes: list[str] = field(default_factory=list)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["structured"] * 6 + ["raw_text", "raw_bytes", "files"]))
    if kind == "raw_text":
        return Case(main=draw(st.text(max_size=200).map(_encodable)), policy_file=None)
    if kind == "raw_bytes":
        return Case(main=draw(st.binary(max_size=200)), policy_file=None)
    document, snippets = draw(spoiled(valid_config()))
    top = draw(st.lists(st.sampled_from(TOP_LEVEL_SNIPPETS), max_size=1))
    policy_file: str | None = yaml.safe_dump(valid_policy_file(), sort_keys=False)
    if draw(st.integers(0, 4)) == 0:
        policies, policy_snippets = draw(spoiled(valid_policy_file()))
        policy_file = render(policies, policy_snippets, [])
    case = Case(main=render(document, snippets, top), policy_file=policy_file)
    if kind == "files" or draw(st.integers(0, 5)) == 0:
        case.main_mode = draw(FILE_MODES)
        case.policy_mode = draw(FILE_MODES)
        case.secret_mode = draw(FILE_MODES)
        case.directory_mode = draw(DIRECTORY_MODES)
        case.secret_kind = draw(
            st.sampled_from(
                ["file", "file", "symlink", "directory", "missing", "binary", "stray_newline"]
            )
        )
        case.main_is_symlink = draw(st.booleans())
        case.oversize = draw(st.integers(0, 9)) == 0
    return case


def _encodable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


# -- writing and checking -----------------------------------------------------------------


@contextlib.contextmanager
def written(case: Case) -> Iterator[tuple[Path, Path]]:
    """The case as files in a fresh directory: (the path to load, the config directory)."""
    root = Path(tempfile.mkdtemp(prefix="cbr-t4-", dir=scratch_directory()))
    directory = root / "etc"
    directory.mkdir(mode=0o700)
    try:
        main = directory / "config.yaml"
        content = case.main.encode() if isinstance(case.main, str) else case.main
        if case.oversize:
            content += b"\n#" + b"x" * (1 << 20) + b"\n"
        main.write_bytes(content)
        main.chmod(case.main_mode)
        if case.policy_file is not None:
            policies = directory / "policies.d"
            policies.mkdir(mode=0o700)
            extra = policies / "extra.yaml"
            text = case.policy_file
            extra.write_bytes(text.encode() if isinstance(text, str) else text)
            extra.chmod(case.policy_mode)
        _write_secret(directory, case)
        path = main
        if case.main_is_symlink:
            path = directory / "config-link.yaml"
            path.symlink_to(main)
        directory.chmod(case.directory_mode)
        yield path, directory
    finally:
        directory.chmod(0o700)
        shutil.rmtree(root, ignore_errors=True)


def _write_secret(directory: Path, case: Case) -> None:
    secret = directory / "sk"
    if case.secret_kind == "missing":
        return
    if case.secret_kind == "directory":
        secret.mkdir(mode=0o700)
        return
    target = directory / ("sk-target" if case.secret_kind == "symlink" else "sk")
    content = {"binary": b"\xff\xfe" + SECRET.encode(), "stray_newline": SECRET.encode() + b"\n\n"}
    target.write_bytes(content.get(case.secret_kind, SECRET.encode() + b"\n"))
    target.chmod(case.secret_mode)
    if case.secret_kind == "symlink":
        secret.symlink_to(target)


class TooSlow(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the loader does not finish in time."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TooSlow(f"the loader took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load(path: Path) -> list[str] | None:
    """None when the config loads; else its problems, checked for form."""
    try:
        with time_limit(TIME_LIMIT):
            load_settings(path, environ=ENVIRONMENT)
    except ConfigError as error:
        failure = error
    else:
        return None
    problems = failure.problems
    assert problems, "a ConfigError without a problem"
    assert str(failure) == "\n".join(problems)
    for line in problems:
        check_problem_line(line, path)
    return problems


def check_problem_line(line: str, path: Path) -> None:
    """One line, starting with the file it is about (the config, or a file in its
    directory), saying what is wrong; never a secret or a traceback."""
    assert line.strip(), "an empty problem line"
    assert "\n" not in line, f"a problem spans lines: {line!r}"
    assert "\r" not in line, f"a problem spans lines: {line!r}"
    assert line.startswith(str(path.parent)), f"the problem does not name the file: {line!r}"
    assert SECRET not in line, f"a secret leaked: {line!r}"
    assert "hunter2pass" not in line, f"a password leaked: {line!r}"
    assert "Traceback" not in line
    assert len(line) < 2000, f"a problem line of {len(line)} characters"


# -- the tests ----------------------------------------------------------------------------

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_the_unspoiled_config_is_valid() -> None:
    case = Case(
        main=yaml.safe_dump(valid_config(), sort_keys=False),
        policy_file=yaml.safe_dump(valid_policy_file(), sort_keys=False),
    )
    with written(case) as (path, _):
        assert load(path) is None


@FUZZ
@given(case=cases())
def test_generated_configs_load_or_fail_with_one_line_per_problem(case: Case) -> None:
    with written(case) as (path, _):
        problems = load(path)
    event("loaded" if problems is None else "refused")
    for line in problems or ():
        event("problem: " + _kind_of_problem(line))


def _kind_of_problem(line: str) -> str:
    """The gist of a problem line, for hypothesis' statistics."""
    for marker in ("invalid YAML", "YAML tag", "YAML alias", "nested", "writable", "secret file"):
        if marker in line:
            return marker
    return "field"


CLI_SAMPLE = 20


def test_check_config_exits_78_without_a_traceback() -> None:
    """The real CLI on a sample of generated configs: exit 0 exactly when the loader accepts
    the config, else 78 with the loader's problems on stderr; never a traceback. The
    processes run a few at a time (each spends most of its time starting Python)."""
    sample: list[Case] = []

    @settings(
        max_examples=CLI_SAMPLE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases())
    def draw(case: Case) -> None:
        sample.append(case)

    draw()
    assert len(sample) == CLI_SAMPLE
    with contextlib.ExitStack() as stack:
        paths = [stack.enter_context(written(case))[0] for case in sample]
        expected = [load(path) for path in paths]
        results = run_all([[CLI, "-c", str(path), "check-config"] for path in paths])
    for problems, (code, out, err) in zip(expected, results, strict=True):
        assert "Traceback" not in out + err
        assert SECRET not in out + err
        if problems is None:
            assert code == 0, err
        else:
            assert code == 78, err
            assert err.splitlines() == problems


def run_all(commands: list[list[str]], at_once: int = 4) -> list[tuple[int, str, str]]:
    """Run the commands, ``at_once`` at a time: (exit code, stdout, stderr) of each."""
    results: list[tuple[int, str, str]] = []
    for start in range(0, len(commands), at_once):
        running = [
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=ENVIRONMENT,
            )
            for command in commands[start : start + at_once]
        ]
        for process in running:
            out, err = process.communicate(timeout=60)
            results.append((process.returncode, out, err))
    return results


@pytest.mark.parametrize("snippet", [*TOP_LEVEL_SNIPPETS, BIG_ALIAS_BOMB])
def test_every_top_level_snippet(snippet: str) -> None:
    """Each hand-written YAML oddity at least once, whatever hypothesis draws."""
    text = yaml.safe_dump(valid_config(), sort_keys=False) + snippet + "\n"
    with written(Case(main=text, policy_file=None)) as (path, _):
        load(path)


@pytest.mark.parametrize("snippet", INLINE_SNIPPETS + DEEP_SNIPPETS)
def test_every_inline_snippet(snippet: str) -> None:
    document = valid_config()
    document["cloud"]["concurrency"] = f"{PLACEHOLDER}0"
    text = render(document, [snippet], [])
    with written(Case(main=text, policy_file=None)) as (path, _):
        load(path)


def spoil(path: tuple[Any, ...], value: Any) -> str:
    document = valid_config()
    parent_of(document, path)[path[-1]] = value
    return yaml.safe_dump(document, sort_keys=False)


# Configs that made the loader raise something else than ConfigError before it was fixed.
REGRESSIONS = {
    "a vault given as a list": spoil(("policies", 0, "source", "vaults"), [["web-prod"]]),
    "a duration past timedelta": spoil(("cloud", "timeout"), 10**30),
    "a duration string past timedelta": spoil(("cloud", "lease"), "99999999999999999999d"),
    "a size past float": spoil(("policies", 0, "traffic_budget_per_day"), "9" * 400 + "TiB"),
    "a key with a line break": yaml.safe_dump(valid_config()) + "? '\n\n  '\n: null\n",
    "a control character": "\x1f",
    "an int tag on text": spoil(("cloud", "concurrency"), PLACEHOLDER + "0").replace(
        PLACEHOLDER + "0", "!!int abc"
    ),
    "an invalid date": spoil(("cloud", "timeout"), PLACEHOLDER + "0").replace(
        PLACEHOLDER + "0", "2026-13-45"
    ),
    "a recursive alias": yaml.safe_dump(valid_config()) + "loop: &loop [*loop]\n",
    "a complex key": yaml.safe_dump(valid_config()) + "? [a, b]\n: complex key\n",
    # Loaded, then crashed the daemon or the run: refused at load now.
    "an interval past any use": spoil(("policies", 0, "schedule"), {"interval": "99999999d"}),
    "a lease past any use": spoil(("cloud", "lease"), "99999999d"),
    "a heartbeat URL that does not parse": spoil(
        ("notify",), {"heartbeat": {"url": "https://[zz::1]/"}}
    ),
    "a proxy port past 65535": spoil(("cloud", "proxy"), "http://proxy:99999"),
    "an IAM endpoint that does not parse": spoil(("cloud", "endpoints", "iam"), "http://[::1"),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_configs_that_once_crashed_the_loader(name: str) -> None:
    with written(Case(main=REGRESSIONS[name], policy_file=None)) as (path, _):
        problems = load(path)
    assert problems is not None
