"""The command line's grammar: every command, option and its checks (durations, limits, ids),
and the help text with the exit codes.
"""

from __future__ import annotations

import argparse
import os
from datetime import date, timedelta
from typing import Any

from daemon import __version__

DEFAULT_CONFIG = "/etc/cbr-replicator/config.yaml"
NO_POLICIES = (
    "{path}: no enabled policy: the daemon and --run-once sweep nothing; add one under "
    "policies: (or in policies_dir), or set enabled: true"
)
CONFIG_ENV = "CBR_REPLICATOR_CONFIG"


EXIT_CODES_HELP = """exit codes (README.md, "Exit codes"):
  0    ok
  1    a replication failed or was given up; a policy stopped on an error
  2    usage
  3    refused by a replication rule (nothing was sent)
  4    --wait ran out (--wait-timeout) with replications unfinished, none failed
  75   cloud unreachable or throttled after retries
  77   authentication or permission denied
  78   configuration or ledger error
  130  stopped by SIGINT (143 SIGTERM, 129 SIGHUP), after printing what it knows
  141  stdout closed before the output was written (a pipe into head)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbr-replicator",
        description="Replicate Huawei Cloud CBR server backups to other regions, by policy. "
        "Without a command or --run-once it runs the daemon.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cbr-replicator {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get(CONFIG_ENV, DEFAULT_CONFIG),
        help=f"main config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})",
    )
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default=None)
    _add_run_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser("check-config", help="validate the config; print the policies")
    check.add_argument(
        "--cloud", action="store_true", help="also resolve projects, vaults and capabilities"
    )
    status = commands.add_parser(
        "status", help="policies (RPO, stuck, traffic), jobs, vault bindings and alerts"
    )
    status.add_argument("--json", action="store_true")
    history = commands.add_parser("history", help="submission attempts, newest first")
    history.add_argument("--backup", type=_backup_id)
    history.add_argument("--policy")
    history.add_argument("--limit", type=_limit, default=50, help="at most this many (1-100000)")
    history.add_argument("--json", action="store_true")
    _add_replicate_backup(commands)
    _add_replicate_vault(commands)
    retry = commands.add_parser("retry", help="re-queue a failed or given-up job")
    retry.add_argument("backup_id", metavar="BACKUP_ID", type=_backup_id)
    retry.add_argument("--to-region", required=True)
    _add_report(commands)
    schema = commands.add_parser(
        "schema", help="print the JSON Schema of the config file (for editor validation)"
    )
    shown = schema.add_mutually_exclusive_group()
    shown.add_argument(
        "--policies-file",
        action="store_true",
        help="the schema of a policies_dir file (a list of policies) instead",
    )
    shown.add_argument(
        "--markdown", action="store_true", help="every option as a Markdown reference instead"
    )
    # The emulator parses its own options (``cbr-replicator emulator --help`` shows them):
    # main() passes it every argument after the command.
    commands.add_parser(
        "emulator",
        help="run the local CBR + IAM emulator: --scenario F [--listen HOST:PORT] ...",
        add_help=False,
    )
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-once", action="store_true", help="sweep the policies once and exit")
    parser.add_argument(
        "--policy", action="append", metavar="NAME", help="only this policy (repeatable)"
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait for this run's replications to finish"
    )
    parser.add_argument(
        "--wait-timeout",
        type=_duration,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="stop waiting after this long: 90s, 30m, 2h (default 1h); exit 4 if work is "
        "unfinished",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="decide and print; change nothing, send nothing"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _add_destination(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to-region", required=True)
    parser.add_argument("--to-vault", required=True, help="replication vault name or id")
    parser.add_argument("--to-project", help="destination project name or id")
    parser.add_argument("--source-region")
    parser.add_argument("--wait", action="store_true")
    parser.add_argument(
        "--wait-timeout",
        type=_duration,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="stop waiting after this long (default 1h); exit 4 if a replication is unfinished",
    )
    parser.add_argument("--json", action="store_true")


# Longer spans than a century are typos; they would also overflow the date arithmetic.
LONGEST_DURATION = timedelta(days=36500)
MAX_HISTORY_LIMIT = 100_000


def _duration(text: str) -> timedelta:
    """A duration as in the config (``90s``, ``30m``, ``2h``) or a number of seconds."""
    value = _parsed_duration(text)
    if value is None or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m or 2h")
    return _bounded(text, value)


def _parsed_duration(text: str) -> timedelta | None:
    from daemon.core.units import parse_duration

    try:
        value = parse_duration(text)
    except ValueError:
        return None
    return value if isinstance(value, timedelta) and value >= timedelta(0) else None


def _bounded(text: str, value: timedelta) -> timedelta:
    if value > LONGEST_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than 36500d; write a shorter one")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_HISTORY_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of entries from 1 to {MAX_HISTORY_LIMIT}"
        )
    return value


def _add_report(commands: Any) -> None:
    report = commands.add_parser("report", help="reports from the ledger")
    kinds = report.add_subparsers(dest="report", metavar="REPORT", required=True)
    traffic = kinds.add_parser("traffic", help="bytes replicated, as CBR bills them")
    traffic.add_argument(
        "--since",
        type=_since,
        default=timedelta(days=30),
        metavar="D",
        help="a date (2026-11-01, UTC) or a duration back from now (7d, 12h); default 30d",
    )
    traffic.add_argument("--by", choices=("day", "policy", "region"), default="day")
    traffic.add_argument("--json", action="store_true")


def _backup_id(text: str) -> str:
    """A backup id goes into a request path: ``.``, ``..``, ``a/b`` or an empty id would
    name another resource (``..`` the project itself, an empty one every backup)."""
    odd = any(not c.isprintable() or c.isspace() or c in "/?#%\\" for c in text)
    if odd or text in ("", ".", ".."):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a backup id; give the id CBR shows (e.g. from history or status)"
        )
    return text


def _since(text: str) -> date | timedelta:
    """``--since``: a calendar date (UTC) or a duration counted back from now (``0d``: now)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    value = _parsed_duration(text)
    if value is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a date (2026-11-01) nor a duration (7d, 12h)"
        )
    return _bounded(text, value)


def _add_replicate_backup(commands: Any) -> None:
    parser = commands.add_parser("replicate-backup", help="replicate one backup now")
    parser.add_argument("backup_id", metavar="BACKUP_ID", type=_backup_id)
    _add_destination(parser)
    parser.add_argument("--name", help="replica name (1-64 of A-Z a-z 0-9 _ -)")
    parser.add_argument("--description", help="replica description (at most 255)")


def _add_replicate_vault(commands: Any) -> None:
    parser = commands.add_parser(
        "replicate-vault", help="replicate a whole vault to a region (once per region, ever)"
    )
    parser.add_argument("vault", metavar="VAULT", help="source vault name or id")
    _add_destination(parser)
