"""Command line: argparse, commands, human and JSON output, exit codes (DESIGN.md §8).

Reports go to stdout; errors, refusals and log lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from daemon import __version__, exitcodes
from daemon.errors import (
    AmbiguousError,
    CloudError,
    ConfigError,
    LedgerError,
    LedgerUnavailableError,
    PermissionDeniedError,
    RefusedError,
    TransientError,
)
from daemon.policy import parse_duration

DEFAULT_CONFIG = "/etc/cbr-replicator/config.yaml"
CONFIG_ENV = "CBR_REPLICATOR_CONFIG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbr-replicator",
        description="Replicate Huawei Cloud CBR server backups to other regions, by policy.",
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
    history.add_argument("--backup")
    history.add_argument("--policy")
    history.add_argument("--limit", type=int, default=50)
    history.add_argument("--json", action="store_true")
    _add_replicate_backup(commands)
    _add_replicate_vault(commands)
    retry = commands.add_parser("retry", help="re-queue a failed or given-up job")
    retry.add_argument("backup_id", metavar="BACKUP_ID")
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
    emulator = commands.add_parser(
        "emulator", help="run the local CBR + IAM emulator", add_help=False
    )
    emulator.add_argument("emulator_args", nargs=argparse.REMAINDER)
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
        help="give up waiting after this long: 90s, 30m, 2h (default 1h)",
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
        "--wait-timeout", type=_duration, default=timedelta(hours=1), metavar="DURATION"
    )
    parser.add_argument("--json", action="store_true")


def _duration(text: str) -> timedelta:
    """A duration as in the config (``90s``, ``30m``, ``2h``) or a number of seconds."""
    value = parse_duration(text)
    if not isinstance(value, timedelta) or value.total_seconds() <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m or 2h")
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


def _since(text: str) -> date | timedelta:
    """``--since``: a calendar date (UTC) or a duration counted back from now."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return _duration(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a date (2026-11-01) nor a duration (7d, 12h)"
        ) from None


def _add_replicate_backup(commands: Any) -> None:
    parser = commands.add_parser("replicate-backup", help="replicate one backup now")
    parser.add_argument("backup_id", metavar="BACKUP_ID")
    _add_destination(parser)
    parser.add_argument("--name", help="replica name (1-64 of A-Z a-z 0-9 _ -)")
    parser.add_argument("--description", help="replica description (at most 255)")


def _add_replicate_vault(commands: Any) -> None:
    parser = commands.add_parser(
        "replicate-vault", help="replicate a whole vault to a region (once per region, ever)"
    )
    parser.add_argument("vault", metavar="VAULT", help="source vault name or id")
    _add_destination(parser)


# -- entry ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "emulator":
        from daemon.emulator import main as emulator_main

        return emulator_main(list(args.emulator_args))
    if args.command == "schema":
        return command_schema(args)
    config_path = Path(args.config)
    handlers: dict[str | None, Callable[[argparse.Namespace, Path], int]] = {
        "check-config": command_check_config,
        "status": command_status,
        "history": command_history,
        "replicate-backup": command_replicate_backup,
        "replicate-vault": command_replicate_vault,
        "retry": command_retry,
        "report": command_report,
    }
    handler = handlers.get(args.command)
    if handler is None:
        if not args.run_once:
            run_only = [
                flag for flag in ("policy", "wait", "dry_run", "json") if getattr(args, flag)
            ]
            if run_only:
                parser.print_usage(sys.stderr)
                print(
                    f"cbr-replicator: --{run_only[0].replace('_', '-')} needs --run-once "
                    "(without a command or --run-once, cbr-replicator runs the daemon)",
                    file=sys.stderr,
                )
                return exitcodes.USAGE
            from daemon.service import run_daemon

            with _errors_as_exit_codes() as result:
                result.code = run_daemon(config_path, log_format=args.log_format)
            return result.code
        handler = command_run_once
    with _errors_as_exit_codes() as result:
        result.code = handler(args, config_path)
    return result.code


class _Result:
    code: int = exitcodes.OK


@contextmanager
def _errors_as_exit_codes() -> Iterator[_Result]:
    """Every anticipated failure becomes one stderr line and its exit code; no traceback."""
    result = _Result()
    try:
        yield result
    except ConfigError as error:
        for problem in error.problems:
            _err(problem)
        result.code = exitcodes.CONFIG
    except LedgerUnavailableError as error:  # a database that does not answer: retried later
        _err(f"ledger: {error}")
        result.code = exitcodes.UNAVAILABLE
    except LedgerError as error:
        _err(f"ledger: {error}")
        result.code = exitcodes.CONFIG
    except RefusedError as error:
        _err(f"refused: {error}")
        result.code = exitcodes.REFUSED
    except PermissionDeniedError as error:
        _err(
            f"permission denied by the cloud: {error}; check the access key, secret key "
            "and the IAM permissions listed in the README"
        )
        result.code = exitcodes.NO_PERMISSION
    except (TransientError, AmbiguousError) as error:
        _err(f"cloud unreachable or throttled after retries: {error}")
        result.code = exitcodes.UNAVAILABLE
    except CloudError as error:
        _err(f"cloud error: {error}")
        result.code = exitcodes.REPLICATION_FAILED
    except (ValueError, LookupError) as error:
        _err(f"cbr-replicator: {error}")
        result.code = exitcodes.USAGE


def _err(message: str) -> None:
    from daemon.observe import redact_text

    print(redact_text(message), file=sys.stderr)


def _load(config_path: Path) -> Any:
    from daemon.config import load_settings

    return load_settings(config_path)


@contextmanager
def _app(config_path: Path, log_format: str | None = None) -> Iterator[Any]:
    from daemon.app import build_app
    from daemon.observe import configure_logging

    loaded = _load(config_path)
    settings = loaded.settings
    configure_logging(log_format or settings.log.format, settings.log.level)
    app = build_app(loaded)
    try:
        yield app
    finally:
        app.close()


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str, sort_keys=True))


# -- commands ------------------------------------------------------------------------------


def command_check_config(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.config import describe_settings

    loaded = _load(config_path)
    print(describe_settings(loaded))
    if not args.cloud:
        return exitcodes.OK
    from daemon.commands import check_cloud

    with _app(config_path, args.log_format) as app:
        return check_cloud(app)


def command_run_once(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.commands import run_once

    with _app(config_path, args.log_format) as app:
        return run_once(
            app,
            policies=args.policy,
            dry_run=args.dry_run,
            wait=args.wait,
            wait_timeout=args.wait_timeout,
            as_json=args.json,
        )


def command_status(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.commands import status

    with _app(config_path, args.log_format) as app:
        return status(app, as_json=args.json)


def command_history(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.commands import history

    with _app(config_path, args.log_format) as app:
        return history(
            app, backup=args.backup, policy=args.policy, limit=args.limit, as_json=args.json
        )


def command_replicate_backup(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.commands import replicate_backup

    with _app(config_path, args.log_format) as app:
        return replicate_backup(app, args)


def command_replicate_vault(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.commands import replicate_vault

    with _app(config_path, args.log_format) as app:
        return replicate_vault(app, args)


def command_retry(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.commands import retry

    with _app(config_path, args.log_format) as app:
        return retry(app, args.backup_id, args.to_region)


def command_report(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.commands import report_traffic

    with _app(config_path, args.log_format) as app:
        since = args.since
        if isinstance(since, timedelta):
            start = app.engine.now() - since
        else:
            start = datetime.combine(since, time.min, tzinfo=UTC)
        return report_traffic(app, since=start, by=args.by, as_json=args.json)


def command_schema(args: argparse.Namespace) -> int:
    from daemon.config import policies_file_json_schema, settings_json_schema

    if args.markdown:
        from daemon.reference import config_reference

        print(config_reference(), end="")
        return exitcodes.OK
    schema = policies_file_json_schema() if args.policies_file else settings_json_schema()
    print(json.dumps(schema, indent=2, sort_keys=False))
    return exitcodes.OK
