"""The checks of tests/system/boot_check.sh: cbr-replicator under a real systemd.

Run on the host (standard library only) against a booted container whose PID 1 is
``--leader``; every command goes in through ``nsenter``. The steps come from the README's
"Running as a systemd service" section, read at run time (``sudo`` dropped: we are root), so
the README and this check cannot drift apart. The CBR emulator runs in the container as a unit
of its own and the config points the ``huaweicloud`` provider at it.

Each check prints one ``PASS name: detail`` or ``FAIL name: detail`` line; the exit code is 1
when any failed. Later checks build on the state earlier ones leave (the daemon running, a
config installed): a failure early may fail later checks too, each with its own reason.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"
UNIT = "cbr-replicator"
SWEEP_UNIT = "cbr-replicator-sweep"
EMULATOR_UNIT = "cbr-emulator"
VENV = "/opt/cbr-replicator"
CONFIG = "/etc/cbr-replicator/config.yaml"
LEDGER = "/var/lib/cbr-replicator/ledger.db"
DROP_INS = f"/etc/systemd/system/{UNIT}.service.d"
EMULATOR = "http://127.0.0.1:8180"
ACCESS_KEY, SECRET_KEY = "demo-access-key", "demo-secret-key"  # the demo cloud's keys
SOURCE, SOUTH, APAC = "cn-north-4", "cn-south-1", "ap-southeast-1"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# How `status_line` words the daemon's status: "idle; 0 queued, 0 in flight, no sweep yet".
STATUS_SHAPE = re.compile(r"^[^;]+; \d+ queued, \d+ in flight, (no sweep yet|last sweep .+)$")


class CheckFailed(Exception):
    """A check's assertion failed; the message says what was expected and what was seen."""


def expect(condition: bool, detail: str) -> None:
    if not condition:
        raise CheckFailed(detail)


def wait_for(what: str, condition: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; CheckFailed after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not seen within {timeout:.0f}s")
        time.sleep(every)


# -- the container -------------------------------------------------------------------------


class Container:
    """Commands inside the booted tree, as root, with a clean environment."""

    def __init__(self, leader: int) -> None:
        self.leader = leader

    def sh(
        self, script: str, *, stdin: str | None = None, timeout: float = 300, cwd: str = "/root"
    ) -> subprocess.CompletedProcess[str]:
        command = [
            "nsenter", "-t", str(self.leader), "-a", "--",
            "env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb",
            "SYSTEMD_PAGER=", "bash", "-c", f"cd {shlex.quote(cwd)} && {script}",
        ]  # fmt: skip
        return subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )

    def ok(self, script: str, **kwargs: Any) -> str:
        """stdout of a script that must succeed."""
        done = self.sh(script, **kwargs)
        expect(
            done.returncode == 0,
            f"`{script}` exited {done.returncode}: {(done.stderr or done.stdout).strip()[-600:]}",
        )
        return done.stdout

    def write(self, path: str, text: str, mode: str = "0644", owner: str = "root:root") -> None:
        user, group = owner.split(":")
        quoted = shlex.quote(path)
        self.ok(
            f"mkdir -p $(dirname {quoted}) && cat > {quoted}.new && "
            f"install -m {mode} -o {user} -g {group} {quoted}.new {quoted} && rm {quoted}.new",
            stdin=text,
        )

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.ok(f"systemctl show -p {','.join(properties)} {unit}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def cursor(self) -> str:
        """The journal's newest entry: later reads start after it."""
        out = self.ok("journalctl -n 1 -o json --no-pager")
        return str(json.loads(out.splitlines()[-1])["__CURSOR"])

    def entries(self, unit: str, after: str | None = None) -> list[dict[str, Any]]:
        """What `journalctl -u UNIT` shows, after a cursor. Not `-u` with --after-cursor:
        systemd 252 then drops the first matching entry when the cursor's own entry does not
        match (it skips one entry past the seek), so the unit's fields are matched here."""
        if after is None:
            out = self.ok(f"journalctl -u {unit} -o json --no-pager")
            return [json.loads(line) for line in out.splitlines() if line.strip()]
        out = self.ok(f"journalctl -o json --no-pager --after-cursor={shlex.quote(after)}")
        name = f"{unit}.service" if "." not in unit else unit
        fields = ("_SYSTEMD_UNIT", "UNIT", "OBJECT_SYSTEMD_UNIT")
        entries = (json.loads(line) for line in out.splitlines() if line.strip())
        return [e for e in entries if any(e.get(f) == name for f in fields)]

    def events(self, unit: str, after: str | None = None) -> list[dict[str, Any]]:
        """The daemon's JSON log lines among the unit's journal entries."""
        return [e for e in map(parsed, self.entries(unit, after)) if e is not None]

    def emulator(self, method: str, name: str, data: Any = None) -> Any:
        """The emulator's admin API (its port is on the container's loopback only)."""
        body = json.dumps(data) if data is not None else ""
        script = (
            "import json, sys, urllib.request\n"
            "body = sys.stdin.read().encode() or None\n"
            f"request = urllib.request.Request({EMULATOR!r} + '/__emulator__/' + {name!r},"
            f" data=body, method={method!r})\n"
            "with urllib.request.urlopen(request, timeout=30) as answer:\n"
            "    print(answer.read().decode())\n"
        )
        return json.loads(self.ok(f"python3 -c {shlex.quote(script)}", stdin=body))

    def ledger(self, query: str) -> Any:
        """One read of the ledger through SQLite, as the service user, closed at once (what
        `status` or any other reader does)."""
        script = (
            "import json, sqlite3, sys\n"
            f"connection = sqlite3.connect({LEDGER!r}, timeout=10)\n"
            "try:\n"
            "    rows = connection.execute(sys.argv[1]).fetchall()\n"
            "finally:\n"
            "    connection.close()\n"
            "print(json.dumps(rows))\n"
        )
        out = self.ok(
            f"runuser -u cbr-replicator -- python3 -c {shlex.quote(script)} {shlex.quote(query)}"
        )
        return json.loads(out)


def message(entry: dict[str, Any]) -> str:
    text = entry.get("MESSAGE", "")
    if isinstance(text, list):  # journald gives non-UTF-8 messages as byte arrays
        return bytes(text).decode("utf-8", "replace")
    return str(text)


def parsed(entry: dict[str, Any]) -> dict[str, Any] | None:
    text = message(entry)
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- the README ----------------------------------------------------------------------------


@dataclass
class Readme:
    """The code blocks and inline commands of the README's service section."""

    section: str
    blocks: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path = README) -> Readme:
        text = path.read_text(encoding="utf-8")
        start = text.index("## Running as a systemd service")
        end = text.index("\n## ", start + 1)
        section = text[start:end]
        blocks = re.findall(r"^```[a-z]*\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
        return cls(section, blocks)

    def block(self, marker: str) -> str:
        found = [block for block in self.blocks if marker in block]
        if len(found) != 1:
            raise CheckFailed(f"README: {len(found)} code blocks contain {marker!r}, want one")
        return found[0]

    def lines(self, marker: str) -> list[str]:
        """The block's commands, one per line, with their comments and continuations."""
        joined = self.block(marker).replace("\\\n", " ")
        return [line for line in joined.splitlines() if line.strip()]

    def inline(self, pattern: str) -> str:
        """An inline `command` of the prose, matched with its line breaks as spaces."""
        prose = re.sub(r"\s+", " ", self.section)
        found = re.search(r"`(" + pattern + r")`", prose)
        if found is None:
            raise CheckFailed(f"README: no inline command matching {pattern!r}")
        return found.group(1)

    def status_comment(self) -> str:
        found = re.search(r'# Status: "([^"]+)"', self.block("enable --now"))
        if found is None:
            raise CheckFailed("README: the first-start block documents no Status line")
        return found.group(1)

    def pipelines(self) -> list[str]:
        """The journald examples that filter the log with jq."""
        return [line for line in self.lines("journalctl -u cbr-replicator -f") if "| jq" in line]


def without_sudo(command: str) -> str:
    return re.sub(r"\bsudo\s+", "", command)


# -- configs -------------------------------------------------------------------------------


def policy(name: str, region: str, vault: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"region": SOURCE, "vaults": ["web-prod"]},
        "destination": {"region": region, "vault": vault},
        **more,
    }


def settings_for(*policies: dict[str, Any], every: str = "3s") -> dict[str, Any]:
    """What the test adds to the README's config: the emulator as the cloud's endpoints, a
    schedule short enough to see sweeps, the policies."""
    return {
        "cloud": {
            "endpoints": {"iam": EMULATOR, "cbr": dict.fromkeys((SOURCE, SOUTH, APAC), EMULATOR)},
        },
        "defaults": {"schedule": {"interval": every}, "retry": {"initial_backoff": "10s"}},
        "policies": list(policies),
    }


SOUTH_POLICY = policy("web-to-south", SOUTH, "web-dr")
APAC_POLICY = policy("web-to-apac", APAC, "apac-dr")
TYPO_POLICY = {k: v for k, v in APAC_POLICY.items() if k != "destination"} | {
    "name": "typo",
    "destinaton": {"region": APAC, "vault": "apac-dr"},
}
BASE = settings_for(SOUTH_POLICY)
QUIET = settings_for(SOUTH_POLICY, every="1h")  # no work item for a while
GROWN = settings_for(SOUTH_POLICY, APAC_POLICY)
BROKEN = settings_for(SOUTH_POLICY, TYPO_POLICY)

# Runs in the container with the installed venv's PyYAML: the README's config block with the
# test's settings merged in (mappings key by key, the rest replaced).
MERGE = """
import json, sys, yaml
def merge(base, extra):
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(base.get(key), value)
        return out
    return extra
base = yaml.safe_load(open(sys.argv[1]))
print(yaml.safe_dump(merge(base, json.loads(sys.argv[2])), sort_keys=False))
"""

EMULATOR_SERVICE = f"""\
# System test only: the CBR emulator standing in for the cloud.
[Unit]
Description=CBR emulator (cbr-replicator system test)
Before={UNIT}.service

[Service]
ExecStart={VENV}/bin/python -m daemon.emulator --time-scale 30 \\
  --scenario /root/cbr-replicator/config/demo-cloud.yaml --listen {EMULATOR.removeprefix("http://")}
"""

# -- the run -------------------------------------------------------------------------------


@dataclass
class Run:
    box: Container
    readme: Readme
    source: str
    wheelhouse: str
    results: list[tuple[str, bool, str, float]] = field(default_factory=list)
    backups_added: int = 0
    start_cursor: str | None = None  # the journal before the first start
    tracked: bool = False  # the syscall run saw a replication tracked to its end

    # helpers --------------------------------------------------------------------------
    def install_config(self, settings: dict[str, Any]) -> None:
        merged = self.box.ok(
            f"{VENV}/bin/python -c {shlex.quote(MERGE)} /root/readme-config.yaml "
            f"{shlex.quote(json.dumps(settings))}"
        )
        self.box.write(CONFIG, merged, mode="0640", owner="root:cbr-replicator")

    def main_pid(self) -> int:
        return int(self.box.show(UNIT, "MainPID")["MainPID"])

    def restart(self, *, must_succeed: bool = True) -> subprocess.CompletedProcess[str]:
        """A deliberate (re)start: the start limit (5 in 10 min) counts ours too."""
        self.box.ok(f"systemctl reset-failed {UNIT} 2>/dev/null || true")
        done = self.box.sh(f"systemctl restart {UNIT}")
        if must_succeed:
            expect(done.returncode == 0, f"systemctl restart: {done.stderr.strip()}")
        return done

    def wait_event(
        self,
        after: str,
        event: str,
        timeout: float = 60,
        unit: str = UNIT,
        count: int = 1,
        **fields: Any,
    ) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]]:
            hits = [
                e
                for e in self.box.events(unit, after)
                if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            ]
            return hits if len(hits) >= count else []

        what = f"{count} x {event} {fields or ''} in the journal of {unit}"
        return list(wait_for(what, found, timeout))

    def add_backup(self, vault: str = "web-prod") -> str:
        """A new eligible backup (in the policies' source vault: the next sweeps must
        replicate it)."""
        self.backups_added += 1
        answer = self.box.emulator(
            "POST",
            "backups",
            {
                "vault": vault,
                "name": f"web-prod-system-test-{self.backups_added}",
                "resource_name": f"web-system-test-{self.backups_added}",
                "extend_info": {"contain_system_disk": True},
            },
        )
        return str(answer["backup"]["id"])

    # the checks -----------------------------------------------------------------------
    def check(self, name: str, step: Callable[[], str]) -> bool:
        started = time.monotonic()
        try:
            since: str | None = self.box.cursor()
        except CheckFailed:
            since = None
        try:
            detail, ok = step(), True
        except CheckFailed as error:
            detail, ok = str(error), False
        except (subprocess.SubprocessError, OSError, ValueError, KeyError) as error:
            detail, ok = f"{error.__class__.__name__}: {error}", False
        seconds = time.monotonic() - started
        self.results.append((name, ok, detail, seconds))
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail} ({seconds:.1f}s)", flush=True)
        if not ok:
            self.show_journal(since)
        return ok

    def show_journal(self, since: str | None, most: int = 60) -> None:
        """Under a failure, for its reason: the daemon's journal since the check began, less
        the sweeps that found nothing to do (counted)."""
        try:
            entries = self.box.entries(UNIT, since)
        except CheckFailed as error:
            print(f"    | (no journal: {error})")
            return
        idle = 0
        shown = []
        for entry in entries:
            event = parsed(entry) or {}
            quiet = not any(event.get(k) for k in ("enqueued", "adopted", "submitted", "error"))
            if event.get("event") == "sweep_finished" and quiet:
                idle += 1
                continue
            shown.append(message(entry))
        for line in shown[-most:]:
            print(f"    | {line[:400]}")
        older = max(0, len(shown) - most)
        print(f"    | ({idle} sweeps with nothing to do left out, {older} older lines)")

    def install(self) -> str:
        """The README's install and config steps, as written, minus sudo."""
        began = time.monotonic()
        pip = f"PIP_NO_INDEX=1 PIP_FIND_LINKS={self.wheelhouse}"
        for line in self.readme.lines("python3 -m venv"):
            self.box.ok(f"export {pip} && {without_sudo(line)}", cwd=self.source)
        installed = time.monotonic() - began
        keys = f"{ACCESS_KEY}\n{SECRET_KEY}\n"  # answers the block's two prompts
        self.box.ok(without_sudo(self.readme.block("read -rp")), stdin=keys, cwd=self.source)
        self.box.write("/root/readme-config.yaml", self.readme.block("ledger: {url:"))
        self.install_config(BASE)
        version = self.box.ok(f"{VENV}/bin/cbr-replicator --version").strip()
        user = self.box.ok("id cbr-replicator").strip()
        modes = self.box.ok(f"stat -c '%a %U:%G %n' {CONFIG} /etc/cbr-replicator/credentials/*")
        expect("600 root:root" in modes, f"credential files not root-only: {modes}")
        return f"{version}, pip install . from the wheelhouse in {installed:.0f}s; {user}"

    def emulator_unit(self) -> str:
        self.box.write(f"/etc/systemd/system/{EMULATOR_UNIT}.service", EMULATOR_SERVICE)
        self.box.ok(f"systemctl daemon-reload && systemctl start {EMULATOR_UNIT}")

        def healthy() -> Any:
            try:
                return self.box.emulator("GET", "health")
            except CheckFailed:
                return None

        wait_for("the emulator answering", healthy, 60)
        return f"{EMULATOR_UNIT}.service answers on {EMULATOR}"

    def first_start(self) -> str:
        """`systemctl start` returns after READY=1: the status the daemon sends with READY
        is already there when it returns (Type=simple would return before it)."""
        documented = self.readme.status_comment()
        self.start_cursor = self.box.cursor()
        seen: dict[str, str] = {}
        status_output = ""
        for line in self.readme.lines("enable --now"):
            command = without_sudo(line.split("#")[0]).strip()
            done = self.box.sh(command)
            expect(done.returncode == 0, f"`{command}` exited {done.returncode}: {done.stderr}")
            if "enable --now" in command:
                seen = self.box.show(UNIT, "ActiveState", "SubState", "StatusText", "MainPID")
            if command.startswith("systemctl status"):
                status_output = done.stdout
        expect(
            (seen.get("ActiveState"), seen.get("SubState")) == ("active", "running"),
            f"after start returned: {seen}",
        )
        # READY=1 carries the documented line; an interval policy's first sweep (right after
        # READY, as the README says) may have replaced its activity by then.
        _, _, counts = documented.partition("; ")
        status = seen.get("StatusText", "")
        expect(
            status == documented
            or re.fullmatch(rf"sweeping \S+; {re.escape(counts)}", status) is not None,
            f"status right after start {status!r}, README says {documented!r} (or sweeping NAME)",
        )
        expect(
            STATUS_SHAPE.match(seen["StatusText"]) is not None,
            f"status {seen['StatusText']!r} not of the documented shape",
        )
        expect('Status: "' in status_output, "`systemctl status` shows no Status: line")
        self.wait_event(self.start_cursor, "daemon_started", timeout=30)
        return f"active/running when start returned, Status: {seen['StatusText']!r}"

    def sweep(self) -> str:
        (event,) = self.wait_event(self.start_cursor, "sweep_finished", policy="web-to-south")
        expect(event.get("error") is None, f"the sweep failed: {event}")
        expect(event.get("seen", 0) > 0, f"the sweep saw no backup: {event}")
        return (
            f"sweep_finished: seen {event['seen']}, submitted {event.get('submitted')}, "
            f"adopted {event.get('adopted')}, error none"
        )

    def credentials(self) -> str:
        """Read through LoadCredential: in $CREDENTIALS_DIRECTORY, not in the environment,
        the command line or the config; the emulator accepted the signatures (the sweep)."""
        pid = self.main_pid()
        environ = self.box.ok(f"tr '\\0' '\\n' < /proc/{pid}/environ")
        cmdline = self.box.ok(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
        directory = dict(
            line.split("=", 1) for line in environ.splitlines() if line.startswith("CRED")
        ).get("CREDENTIALS_DIRECTORY", "")
        expect(directory != "", "no CREDENTIALS_DIRECTORY in the daemon's environment")
        listing = self.box.ok(f"ls {shlex.quote(directory)}").split()
        expect(sorted(listing) == ["ak", "sk"], f"{directory} holds {listing}")
        config = self.box.ok(f"cat {CONFIG}")
        for secret in (ACCESS_KEY, SECRET_KEY):
            expect(secret not in environ, "a key is in the daemon's environment")
            expect(secret not in cmdline, "a key is on the daemon's command line")
            expect(secret not in config, "a key is in the config")
        expect("${CREDENTIALS_DIRECTORY}/sk" in config, "the config names no credential file")
        requests = self.box.emulator("GET", "requests")["requests"]
        expect(len(requests) > 0, "the emulator saw no signed request")
        return (
            f"{directory} holds ak, sk; {len(requests)} signed requests accepted; "
            "no key in the environment, command line or config"
        )

    def metrics(self) -> str:
        script = (
            "import urllib.request\n"
            "print(urllib.request.urlopen('http://127.0.0.1:9687/metrics', timeout=10)"
            ".read().decode())"
        )
        text = self.box.ok(f"python3 -c {shlex.quote(script)}")
        line = next(
            (x for x in text.splitlines() if x.startswith("cbr_replicator_sweeps_total")), ""
        )
        expect(line != "", "no cbr_replicator_sweeps_total on the README's metrics.listen")
        return f"127.0.0.1:9687: {line}"

    def security(self) -> str:
        out = self.box.ok(f"systemd-analyze security --no-pager {UNIT}.service")
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
        expect(found is not None, f"no overall exposure level in: {out[-300:]}")
        assert found is not None
        score = float(found.group(1))
        expect(score <= 1.5, f"exposure {score} > 1.5 on the live unit")
        return f"exposure {score} on the live unit (<= 1.5)"

    def cbr(self, arguments: str) -> str:
        """``cbr ARGUMENTS`` with the README's cbr() shell function (minus sudo)."""
        definition = without_sudo(self.readme.lines("cbr() {")[0])
        done = self.box.sh(f"{definition}\ncbr {arguments}", timeout=120)
        expect(
            done.returncode == 0,
            f"`cbr {arguments}` exited {done.returncode}: {(done.stderr or done.stdout)[-500:]}",
        )
        return done.stdout

    def cbr_helper(self) -> str:
        """The README's cbr() helper and its example, as written."""
        example = without_sudo(self.readme.lines("cbr() {")[1].split("#")[0]).strip()
        expect(example.startswith("cbr "), f"README: the cbr() example is {example!r}")
        outputs = [self.cbr(example.removeprefix("cbr ")), self.cbr("status")]
        expect("web-to-south" in outputs[1], f"`cbr status` names no policy: {outputs[1][:300]}")
        return f"`{example}` and `cbr status` exit 0 through systemd-run with the credentials"

    def stop(self) -> str:
        """Clean: exit 0, the daemon's own stop lines, no stop timeout, no SIGKILL."""
        after = self.box.cursor()
        began = time.monotonic()
        self.box.ok(f"systemctl stop {UNIT}")
        seconds = time.monotonic() - began
        state = self.box.show(UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
        expect(state["ActiveState"] == "inactive", f"after stop: {state}")
        expect(state["Result"] == "success", f"stop result {state['Result']} (not success)")
        expect(state["ExecMainStatus"] == "0", f"the daemon exited {state['ExecMainStatus']}")
        events = [e.get("event") for e in self.box.events(UNIT, after)]
        expect("daemon_stopped" in events, f"no daemon_stopped line (saw {events})")
        expect("stop_timeout" not in events, "the daemon hit its stop timeout")
        killed = [m for m in map(message, self.box.entries(UNIT, after)) if "SIGKILL" in m]
        expect(not killed, f"systemd had to kill: {killed}")
        return (
            f"stopped in {seconds:.1f}s, exit 0, daemon_stopping/daemon_stopped logged, no SIGKILL"
        )

    def reload_broken(self) -> str:
        """A config with an error: refused, the old one kept, the refusal logged and shown."""
        self.install_config(QUIET)
        started = self.box.cursor()
        self.restart()
        self.wait_event(started, "daemon_started", timeout=30)
        pid = self.main_pid()
        self.install_config(BROKEN)
        after = self.box.cursor()
        self.box.ok(f"systemctl reload {UNIT}")
        self.wait_event(after, "reload_rejected", timeout=60)
        problems = [
            e for e in self.box.events(UNIT, after) if e["event"] == "reload_config_problem"
        ]
        expect(problems != [], "no reload_config_problem line before reload_rejected")
        text = json.dumps(problems)
        expect(CONFIG in text and "destinaton" in text, f"the problem names no file/key: {text}")
        status = self.box.show(UNIT, "StatusText", "ActiveState")
        expect(
            "reload failed, running the previous config" in status["StatusText"],
            f"status after the refused reload: {status['StatusText']!r}",
        )
        expect(self.main_pid() == pid, "the daemon was restarted")
        return (
            f"reload_config_problem: {problems[0].get('problem')!r}; reload_rejected; "
            f"status {status['StatusText']!r}; same pid"
        )

    def reload_good(self) -> str:
        """The README's reload block with a grown config: rescheduled, the new policy sweeps."""
        pid = self.main_pid()
        self.install_config(GROWN)
        after = self.box.cursor()
        shown = ""
        for line in self.readme.lines("systemctl reload"):
            shown = self.box.ok(without_sudo(line))
        (finished,) = self.wait_event(after, "reload_finished", timeout=60)
        # systemd 252 has no Type=notify-reload: `systemctl reload` returns once the signal is
        # sent, so the README's journalctl right after it may show the reload unfinished.
        at_once = "reload_finished" in shown
        expect(
            finished.get("rescheduled") == ["web-to-apac", "web-to-south"],
            f"reload_finished: {finished}",
        )
        self.wait_event(after, "sweep_finished", policy="web-to-apac", timeout=60)
        expect(self.main_pid() == pid, "the daemon was restarted")
        return (
            f"reload_finished rescheduled {finished['rescheduled']}; web-to-apac swept; same pid; "
            f"the README's journalctl just after reload {'showed' if at_once else 'did not show'}"
            " reload_finished"
        )

    def reload_then_reader(self) -> str:
        """Issue 18 item 1: after a reload, another process opens and closes the ledger; every
        sweep and job the daemon writes afterwards must be in the ledger, and it must be whole."""
        expect(self.main_pid() != 0, "the daemon is not running")
        # A reader that reads a table: one that touches no page never takes SQLite's locks,
        # and its close would not checkpoint and delete the daemon's -wal and -shm.
        reader_time, _ = self.box.ledger(
            "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now'), COUNT(*) FROM sweeps"
        )[0]
        after = self.box.cursor()
        backup = self.add_backup()
        for region in (SOUTH, APAC):
            self.wait_event(after, "replication_submitted", backup=backup, region=region)
        sweeps = self.wait_event(after, "sweep_finished", count=4)
        logged = len([e for e in self.box.events(UNIT, after) if e["event"] == "sweep_finished"])
        saved = self.box.ledger(
            f"SELECT COUNT(*) FROM sweeps WHERE finished_at >= '{reader_time}'"
        )[0][0]
        jobs = self.box.ledger(
            f"SELECT destination_region, state FROM jobs WHERE source_backup_id = '{backup}'"
        )
        integrity = self.box.ledger("PRAGMA integrity_check")
        problems = []
        if saved < logged:
            problems.append(f"{logged} sweeps logged since the reader, {saved} in the ledger")
        if sorted(region for region, _ in jobs) != sorted((SOUTH, APAC)):
            problems.append(f"jobs of the new backup in the ledger: {jobs} (2 submitted)")
        if integrity != [["ok"]]:
            problems.append(f"integrity_check: {integrity}")
        state = self.box.show(UNIT, "ActiveState", "NRestarts")
        if state["ActiveState"] != "active":
            problems.append(f"daemon {state}")
        expect(not problems, "; ".join(problems))
        return (
            f"{logged} sweeps logged and {saved} saved since the reader, both jobs of the new "
            f"backup saved ({len(sweeps)}+ sweeps waited), integrity ok"
        )

    def watchdog(self) -> str:
        """A frozen daemon (SIGSTOP) is killed by the watchdog and restarted (test drop-in:
        WatchdogSec=3s instead of 2 min)."""
        self.box.write(f"{DROP_INS}/test-watchdog.conf", "[Service]\nWatchdogSec=3s\n")
        try:
            self.box.ok("systemctl daemon-reload")
            self.restart()
            before = self.box.show(UNIT, "MainPID", "NRestarts")
            after = self.box.cursor()
            self.box.ok(f"kill -STOP {before['MainPID']}")

            def restarted() -> dict[str, str]:
                now = self.box.show(UNIT, "MainPID", "NRestarts", "SubState")
                moved = now["MainPID"] not in ("0", before["MainPID"])
                return now if moved and now["SubState"] == "running" else {}

            now = wait_for("a new daemon after the watchdog", restarted, 90)
            lines = [message(e) for e in self.box.entries(UNIT, after)]
            expect(any("Watchdog timeout" in m for m in lines), "no 'Watchdog timeout' line")
            expect(int(now["NRestarts"]) == int(before["NRestarts"]) + 1, f"{before} -> {now}")
            killed = next(m for m in lines if "Killing process" in m or "Watchdog" in m)
        finally:
            self.box.ok(f"rm -f {DROP_INS}/test-watchdog.conf && systemctl daemon-reload")
        return f"{killed.strip()}; restarted: pid {before['MainPID']} -> {now['MainPID']}"

    def exit_78(self) -> str:
        """A config error at start: exit 78, the unit failed, no restart scheduled."""
        self.install_config(BROKEN)
        try:
            after = self.box.cursor()
            done = self.restart(must_succeed=False)
            expect(done.returncode != 0, "systemctl restart succeeded with a broken config")
            state = self.box.show(
                UNIT, "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts"
            )
            expect(state["ExecMainStatus"] == "78", f"exit status {state['ExecMainStatus']}")
            # A restart would show as SubState auto-restart: RestartPreventExitStatus says no.
            expect(
                (state["ActiveState"], state["SubState"]) == ("failed", "failed"),
                f"after exit 78: {state}",
            )
            # A deliberate start resets the counter; an automatic restart would count 1.
            expect(state["NRestarts"] == "0", f"restarted: {state}")
            said = [m for m in map(message, self.box.entries(UNIT, after)) if "destinaton" in m]
            expect(said != [], "the journal does not say what is wrong")
        finally:
            self.install_config(GROWN)
            self.restart()
        state_text = f"{state['ActiveState']}/{state['SubState']}"
        return f"exit 78, {state_text}, not restarted; journal: {said[0][:120]!r}"

    def syscalls(self) -> str:
        """With SystemCallErrorNumber=kill (test drop-in), a blocked system call kills the
        daemon: start, sweeps, a submission, tracking, a reload and stop must not."""
        control = self.box.sh(
            "systemd-run --quiet --wait --pipe -p SystemCallFilter=@system-service "
            "-p SystemCallFilter=~@privileged -p SystemCallErrorNumber=kill "
            "python3 -c 'import os; os.chroot(\"/\")'"
        )
        expect(control.returncode != 0, "control: a blocked chroot was not killed")
        self.box.write(f"{DROP_INS}/test-syscalls.conf", "[Service]\nSystemCallErrorNumber=kill\n")
        try:
            self.box.ok("systemctl daemon-reload")
            after = self.box.cursor()
            self.restart()
            pid = self.main_pid()
            self.wait_event(after, "sweep_finished")
            backup = self.add_backup()
            self.wait_event(after, "replication_submitted", backup=backup, region=SOUTH)
            tracked = self._tracked()
            reload_after = self.box.cursor()
            self.box.ok(f"systemctl reload {UNIT}")
            self.wait_event(reload_after, "reload_finished")
            self.wait_event(reload_after, "sweep_finished")
            expect(self.main_pid() == pid, "the daemon was restarted")
            self.box.ok(f"systemctl stop {UNIT}")
            state = self.box.show(UNIT, "Result", "ExecMainStatus", "NRestarts")
            lines = [message(e) for e in self.box.entries(UNIT, after)]
            blocked = [m for m in lines if "SYS" in m and "status=" in m]
            expect(not blocked, f"killed by the filter: {blocked}")
            expect((state["Result"], state["ExecMainStatus"]) == ("success", "0"), f"{state}")
        finally:
            self.box.ok(f"rm -f {DROP_INS}/test-syscalls.conf && systemctl daemon-reload")
            self.restart()
        return (
            "control chroot killed; daemon ran start, sweeps, a submission, "
            f"{'tracking to success' if tracked else 'NO tracking to success (see item 2)'}, "
            "a reload and stop with no blocked call"
        )

    def _tracked(self) -> bool:
        """Whether the daemon's tracker follows a manual replication (`cbr replicate-backup`
        without --wait, of a backup no policy sweeps: only the tracker can finish its job)
        to its end within a minute (the emulator replicates in ~2 s); for the tracker check."""
        backup = self.add_backup(vault="db-prod")
        self.cbr(f"replicate-backup {backup} --to-region {SOUTH} --to-vault web-dr")

        def done() -> bool:
            rows = self.box.ledger(f"SELECT state FROM jobs WHERE source_backup_id = '{backup}'")
            return rows == [["succeeded"]]

        try:
            wait_for("the job tracked to succeeded", done, 60, every=1.0)
        except CheckFailed:
            self.tracked = False
        else:
            self.tracked = True
        return self.tracked

    def tracker(self) -> str:
        """Seen in the syscall run: while policies sweep every 3 s, the tracker still follows
        a manual replication to its end (issue 18 item 2 is the same with 1-minute sweeps)."""
        expect(self.tracked, "a `cbr replicate-backup` job stayed unfinished for 60s")
        return "a `cbr replicate-backup` job was tracked to succeeded while policies swept every 3s"

    def timer(self) -> str:
        """The README's switch to the timer, one run of it, and Conflicts= both ways."""
        self.box.ok(
            "install -m 0644 systemd/cbr-replicator-sweep.service "
            "systemd/cbr-replicator-sweep.timer /etc/systemd/system/",
            cwd=self.source,
        )
        switch = self.readme.inline(r"sudo systemctl disable --now cbr-replicator; [^`]+")
        self.box.ok(without_sudo(switch))
        expect(self.box.show(UNIT, "ActiveState")["ActiveState"] == "inactive", "daemon still on")
        timer = self.box.show(f"{SWEEP_UNIT}.timer", "ActiveState", "NextElapseUSecRealtime")
        expect(timer["ActiveState"] == "active", f"timer: {timer}")
        after = self.box.cursor()
        self.box.ok(f"systemctl start {SWEEP_UNIT}.service", timeout=300)
        run = self.box.show(f"{SWEEP_UNIT}.service", "Result", "ExecMainStatus", "ActiveState")
        expect(
            (run["Result"], run["ExecMainStatus"], run["ActiveState"])
            == ("success", "0", "inactive"),
            f"the sweep unit: {run}",
        )
        swept = {
            e["policy"]
            for e in self.box.events(SWEEP_UNIT, after)
            if e["event"] == "sweep_finished"
        }
        expect(swept == {"web-to-south", "web-to-apac"}, f"the run swept {swept}")
        self.box.ok(f"systemctl reset-failed {UNIT} 2>/dev/null || true; systemctl start {UNIT}")
        timer_after = self.box.show(f"{SWEEP_UNIT}.timer", "ActiveState")["ActiveState"]
        expect(timer_after == "inactive", f"daemon started, timer still {timer_after}")
        self.box.ok(f"systemctl start {SWEEP_UNIT}.timer")
        # The timer's start job ends before the daemon's stop (queued with it) has.
        wait_for(
            "the daemon stopped by the timer's start",
            lambda: self.box.show(UNIT, "ActiveState")["ActiveState"] == "inactive",
            120,
        )
        self.box.ok(f"systemctl stop {SWEEP_UNIT}.timer")
        self.box.ok(f"systemctl reset-failed {UNIT} 2>/dev/null; systemctl start {UNIT}")
        return (
            f"next run {timer['NextElapseUSecRealtime']}; one run swept {sorted(swept)}, exit 0; "
            "starting the daemon stopped the timer and starting the timer stopped the daemon"
        )

    def pipelines(self) -> str:
        """The README's journald examples on this real journal: systemd's own lines and the
        plain-text exit-78 message are in it, and the examples must still find the JSON."""
        entries = self.box.entries(UNIT)
        plain = [e for e in entries if parsed(e) is None]
        expect(len(plain) > 0, "the journal has no non-JSON line: the check would prove nothing")
        details = []
        for pipeline in self.readme.pipelines():
            wanted = wanted_by(pipeline)
            # --since today: from the container's midnight (a run may straddle one).
            since = 0
            if "--since today" in pipeline:
                since = int(self.box.ok("date -d 'today 00:00' +%s")) * 1_000_000

            def count(wanted: Callable[[dict[str, Any]], bool] = wanted, since: int = since) -> int:
                return sum(
                    1
                    for e in self.box.entries(UNIT)
                    if int(e["__REALTIME_TIMESTAMP"]) >= since and wanted(parsed(e) or {})
                )

            before = count()
            done = self.box.sh(without_sudo(pipeline))
            after = count()
            lines = [line for line in done.stdout.splitlines() if line.strip()]
            expect(
                done.returncode == 0, f"`{pipeline}` exited {done.returncode}: {done.stderr[:200]}"
            )
            shown = [json.loads(line) for line in lines]
            expect(all(wanted(e) for e in shown), f"`{pipeline}` printed other lines")
            expect(
                0 < before <= len(shown) <= after,
                f"`{pipeline}` printed {len(shown)} lines, the journal has {before}",
            )
            details.append(f"{len(shown)} lines")
        return f"{', '.join(details)} from a journal with {len(plain)} non-JSON lines"

    def no_secret_logged(self) -> str:
        out = self.box.ok("journalctl -o cat --no-pager")
        for secret in (ACCESS_KEY, SECRET_KEY):
            expect(secret not in out, "a key is in the journal")
        return f"neither key in {len(out.splitlines())} journal lines"

    def no_duplicates(self) -> str:
        duplicates = self.box.emulator("GET", "duplicates")["duplicates"]
        expect(duplicates == [], f"duplicate replicas: {duplicates}")
        return "no backup replicated twice to a region, across restarts, reloads and kills"


def wanted_by(pipeline: str) -> Callable[[dict[str, Any]], bool]:
    """What a README jq filter selects, evaluated here on the parsed line."""
    if '.event == "sweep_finished"' in pipeline:
        return lambda e: e.get("event") == "sweep_finished"
    if '.level == "warning" or .level == "error"' in pipeline:
        return lambda e: e.get("level") in ("warning", "error")
    raise CheckFailed(f"README pipeline this check does not know: {pipeline}")


def checks(run: Run) -> Iterator[tuple[str, Callable[[], str]]]:
    yield "install as the README says (minus sudo)", run.install
    yield "emulator unit up", run.emulator_unit
    yield "first start returns after READY with the documented status", run.first_start
    yield "a sweep's sweep_finished in the journal", run.sweep
    yield "credentials read through LoadCredential", run.credentials
    yield "metrics on the README's metrics.listen", run.metrics
    yield "systemd-analyze security on the live unit <= 1.5", run.security
    yield "the README's cbr() helper", run.cbr_helper
    yield "stop is clean and fast", run.stop
    yield "reload with a broken config: refused, old config kept, logged", run.reload_broken
    yield "reload with a good config (README's reload block)", run.reload_good
    yield (
        "reload, then another process reads the ledger: nothing lost (item 1)",
        run.reload_then_reader,
    )
    yield "watchdog kills a frozen daemon and systemd restarts it", run.watchdog
    yield "exit 78 on a bad config is not restarted", run.exit_78
    yield "no blocked system call with SystemCallErrorNumber=kill", run.syscalls
    yield "the tracker finishes a manual replication while policies sweep", run.tracker
    yield "timer variant runs once and conflicts with the daemon", run.timer
    yield "README journald pipelines on the real journal (item 3)", run.pipelines
    yield "no key in the journal", run.no_secret_logged
    yield "no duplicate replica", run.no_duplicates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leader", type=int, required=True, help="the container's PID 1")
    parser.add_argument("--source", required=True, help="the work tree's copy, in the container")
    parser.add_argument("--wheelhouse", required=True, help="the wheelhouse, in the container")
    args = parser.parse_args(argv)
    run = Run(Container(args.leader), Readme.load(), args.source, args.wheelhouse)
    for name, step in checks(run):
        run.check(name, step)
    failed = [name for name, ok, _, _ in run.results if not ok]
    print(f"{len(run.results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
