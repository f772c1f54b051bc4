"""Command line: argparse, commands, human and JSON output, exit codes (docs/design.md §8).

Reports go to stdout; errors, refusals and log lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from daemon import __version__
from daemon.core import exitcodes
from daemon.core.errors import (
    AmbiguousError,
    CloudError,
    ConfigError,
    EndpointError,
    Interrupted,
    LedgerError,
    LedgerUnavailableError,
    PermissionDeniedError,
    RefusedError,
    TransientError,
)

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


# -- entry ---------------------------------------------------------------------------------


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point. Stop signals are handled from here on, before the heavy imports
    (each command imports what it needs): INT, TERM and HUP unwind the command like Ctrl-C,
    it prints what it knows and exits 128 + the signal (130, 143, 129). A closed stdout
    (``status | head -1``) ends the command quietly with 141, as SIGPIPE would."""
    previous = _stop_on_signals()
    try:
        return _main(argv, previous)
    except KeyboardInterrupt as stop:
        signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
        _err_quietly(f"cbr-replicator: stopped by {signal.Signals(signum).name}")
        return exitcodes.signalled(signum)
    except BrokenPipeError:
        _discard_closed_output()
        return exitcodes.STDOUT_CLOSED
    finally:
        _restore_signals(previous)


def _main(argv: Sequence[str] | None, previous_signals: dict[int, Any]) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "emulator":
        from daemon.emulator import main as emulator_main

        return emulator_main(extra, prog="cbr-replicator emulator")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
            return _daemon(config_path, args.log_format, previous_signals)
        handler = command_run_once
    with (
        _redacted_output(),
        _errors_as_exit_codes(as_json=bool(getattr(args, "json", False))) as result,
    ):
        result.code = handler(args, config_path)
    return result.code


def _daemon(config_path: Path, log_format: str | None, previous_signals: dict[int, Any]) -> int:
    """The daemon handles its own signals once it serves (TERM and INT stop it, exit 0; HUP
    reloads). A stop during its imports is the same clean stop; a HUP then is moot (the
    config is read after them)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        from daemon.service.daemon import run_daemon
    except Interrupted as stop:
        _err_quietly(f"cbr-replicator: stopped by {signal.Signals(stop.signum).name} at start")
        return exitcodes.OK
    _restore_signals(previous_signals)
    with _errors_as_exit_codes() as result:
        result.code = run_daemon(config_path, log_format=log_format)
    return result.code


def _stop_on_signals() -> dict[int, Any]:
    """Install the stop handlers; return the handlers they replace (none off the main
    thread, where Python allows no handler)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.signal(number, _raise_interrupted) for number in STOP_SIGNALS}


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    # A second signal of the same kind ends the process at once, as it would have.
    signal.signal(signum, signal.SIG_DFL)
    raise Interrupted(signum)


def _restore_signals(previous: dict[int, Any]) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler)


def _discard_closed_output() -> None:
    """Point stdout (and stderr, when it is the closed pipe too) at /dev/null, so the
    interpreter's last flush at exit finds nowhere to fail (the Python docs' recipe for
    SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        if stream is sys.stdout or _reader_gone(fd):
            os.dup2(devnull, fd)
    os.close(devnull)


def _reader_gone(fd: int) -> bool:
    """Is ``fd`` a pipe whose reading end is closed? (poll reports POLLERR on Linux)"""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _err_quietly(message: str) -> None:
    """One line on stderr, unless stderr itself is gone."""
    with suppress(OSError):
        print(message, file=sys.stderr, flush=True)


class _Redacting:
    """A text stream whose writes pass through the secret redaction of the log: what a
    command prints (a report quoting a ledger error, a message quoting an exception) is
    masked like a log line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        from daemon.core.redaction import redact_text

        self._stream.write(redact_text(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, ...
        return getattr(self._stream, name)


@contextmanager
def _redacted_output() -> Iterator[None]:
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Redacting(stdout), _Redacting(stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr


class _Result:
    code: int = exitcodes.OK


@contextmanager
def _errors_as_exit_codes(*, as_json: bool = False) -> Iterator[_Result]:
    """Every anticipated failure becomes one stderr line and its exit code; no traceback.
    With ``as_json`` the failure is also a JSON object on stdout: ``{"error": {"reason",
    "message", "exit_code"}}`` (``reason``: a refusal's reason code, or the kind of error)."""
    result = _Result()
    failure: tuple[str, list[str]] | None = None
    try:
        yield result
    except ConfigError as error:
        failure, result.code = ("config", list(error.problems)), exitcodes.CONFIG
    except LedgerUnavailableError as error:  # the database did not answer: retried later
        failure, result.code = ("ledger_unavailable", [str(error)]), exitcodes.UNAVAILABLE
    except LedgerError as error:  # its message names the ledger
        failure, result.code = ("ledger", [str(error)]), exitcodes.CONFIG
    except RefusedError as error:
        failure, result.code = (error.reason, [f"refused: {error}"]), exitcodes.REFUSED
    except EndpointError as error:
        failure, result.code = ("endpoint", [f"cloud endpoint: {error}"]), exitcodes.CONFIG
    except PermissionDeniedError as error:
        message = (
            f"permission denied by the cloud: {error}; check the access key, secret key "
            "and the IAM permissions listed in the README"
        )
        failure, result.code = ("permission_denied", [message]), exitcodes.NO_PERMISSION
    except (TransientError, AmbiguousError) as error:
        message = f"cloud unreachable or throttled after retries: {error}"
        failure, result.code = ("cloud_unavailable", [message]), exitcodes.UNAVAILABLE
    except CloudError as error:
        failure = ("cloud_error", [f"cloud error: {error}"])
        result.code = exitcodes.REPLICATION_FAILED
    except (ValueError, LookupError) as error:
        failure, result.code = ("usage", [f"cbr-replicator: {error}"]), exitcodes.USAGE
    if failure is None:
        return
    reason, lines = failure
    for line in lines:
        _err(line)
    if as_json:
        from daemon.core.redaction import redact_text

        message = redact_text("\n".join(lines))
        error_document = {"reason": reason, "message": message, "exit_code": result.code}
        print(json.dumps({"error": error_document}, indent=2, sort_keys=True), flush=True)


def _err(message: str) -> None:
    from daemon.core.redaction import redact_text

    print(redact_text(message), file=sys.stderr)


def _load(config_path: Path, *, cloud: bool = True) -> Any:
    """The config; the credentials are read only for a command that calls the ``cloud``."""
    from daemon.config.load import load_settings

    return load_settings(config_path, need_credentials=cloud)


@contextmanager
def _app(
    config_path: Path,
    log_format: str | None = None,
    *,
    cloud: bool = True,
    create_ledger: bool = True,
    scratch_ledger: bool = False,
) -> Iterator[Any]:
    """The app of one command: ``cloud`` for the commands that call it (credentials read,
    embedded emulator started); ``create_ledger`` for those that write the ledger (the
    readers report a missing one instead of making an empty one); ``scratch_ledger``: a
    missing one is replaced by an empty one in memory (a dry run before the first run)."""
    from daemon.adapters.ledger import open_scratch_ledger
    from daemon.adapters.logs import configure_logging
    from daemon.app import build_app
    from daemon.core.errors import LedgerMissingError

    loaded = _load(config_path, cloud=cloud)
    settings = loaded.settings
    configure_logging(log_format or settings.log.format, settings.log.level)
    try:
        app = build_app(loaded, open_cloud=cloud, create_ledger=create_ledger)
    except LedgerMissingError as missing:
        if not scratch_ledger:
            raise
        _err(f"note: ledger: {missing}; deciding as its first run would")
        app = build_app(loaded, open_cloud=cloud, ledger=open_scratch_ledger())
    try:
        yield app
    finally:
        app.close()


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str, sort_keys=True))


# -- commands ------------------------------------------------------------------------------


def command_check_config(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.config.describe import describe_settings

    # The authority on the config reads the credentials too, whether or not it calls the
    # cloud: a key file missing here would stop the daemon.
    loaded = _load(config_path)
    print(describe_settings(loaded))
    if not any(policy.enabled for policy in loaded.settings.policies):
        _err(f"warning: {NO_POLICIES.format(path=loaded.path)}")
    for warning in loaded.warnings:
        _err(f"warning: {warning}")
    if not args.cloud:
        return exitcodes.OK
    from daemon.cli.commands import check_cloud

    with _app(config_path, args.log_format) as app:
        return check_cloud(app)


def command_run_once(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.commands import run_once

    with _app(
        config_path,
        args.log_format,
        create_ledger=not args.dry_run,
        scratch_ledger=args.dry_run,
    ) as app:
        try:
            return run_once(
                app,
                policies=args.policy,
                dry_run=args.dry_run,
                wait=args.wait,
                wait_timeout=args.wait_timeout,
                as_json=args.json,
            )
        finally:
            if not args.dry_run:  # the run's row in status' instances goes with it
                _forget_instance(app)


def _forget_instance(app: Any) -> None:
    try:
        app.ledger.forget_instance(app.engine.owner)
    except LedgerError as error:
        _err(f"ledger: {error}")


def command_status(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.commands import status

    with _app(config_path, args.log_format, cloud=False, create_ledger=False) as app:
        return status(app, as_json=args.json)


def command_history(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.commands import history

    with _app(config_path, args.log_format, cloud=False, create_ledger=False) as app:
        return history(
            app, backup=args.backup, policy=args.policy, limit=args.limit, as_json=args.json
        )


def command_replicate_backup(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.commands import replicate_backup

    with _app(config_path, args.log_format) as app:
        return replicate_backup(app, args)


def command_replicate_vault(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.commands import replicate_vault

    with _app(config_path, args.log_format) as app:
        return replicate_vault(app, args)


def command_retry(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.commands import retry

    with _app(config_path, args.log_format, cloud=False, create_ledger=False) as app:
        return retry(app, args.backup_id, args.to_region)


def command_report(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.commands import report_traffic

    with _app(config_path, args.log_format, cloud=False, create_ledger=False) as app:
        since = args.since
        if isinstance(since, timedelta):
            start = app.engine.now() - since
        else:
            start = datetime.combine(since, time.min, tzinfo=UTC)
        return report_traffic(app, since=start, by=args.by, as_json=args.json)


def command_schema(args: argparse.Namespace) -> int:
    from daemon.config.export import policies_file_json_schema, settings_json_schema

    if args.markdown:
        from daemon.config.reference import config_reference

        print(config_reference(), end="")
        return exitcodes.OK
    schema = policies_file_json_schema() if args.policies_file else settings_json_schema()
    print(json.dumps(schema, indent=2, sort_keys=False))
    return exitcodes.OK
