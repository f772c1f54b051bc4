"""Command line: argparse, commands, human and JSON output, exit codes (docs/design.md §8).

Reports go to stdout; errors, refusals and log lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from daemon.cli.exits import (
    discard_closed_output,
    err,
    err_quietly,
    errors_as_exit_codes,
    redacted_output,
)
from daemon.cli.parser import NO_POLICIES, build_parser
from daemon.core import exitcodes
from daemon.core.errors import Interrupted, LedgerError

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
        err_quietly(f"cbr-replicator: stopped by {signal.Signals(signum).name}")
        return exitcodes.signalled(signum)
    except BrokenPipeError:
        discard_closed_output()
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
        redacted_output(),
        errors_as_exit_codes(as_json=bool(getattr(args, "json", False))) as result,
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
        err_quietly(f"cbr-replicator: stopped by {signal.Signals(stop.signum).name} at start")
        return exitcodes.OK
    _restore_signals(previous_signals)
    with errors_as_exit_codes() as result:
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
        err(f"note: ledger: {missing}; deciding as its first run would")
        app = build_app(loaded, open_cloud=cloud, ledger=open_scratch_ledger())
    try:
        yield app
    finally:
        app.close()


# -- commands ------------------------------------------------------------------------------


def command_check_config(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.config.describe import describe_settings

    # The authority on the config reads the credentials too, whether or not it calls the
    # cloud: a key file missing here would stop the daemon.
    loaded = _load(config_path)
    print(describe_settings(loaded))
    if not any(policy.enabled for policy in loaded.settings.policies):
        err(f"warning: {NO_POLICIES.format(path=loaded.path)}")
    for warning in loaded.warnings:
        err(f"warning: {warning}")
    if not args.cloud:
        return exitcodes.OK
    from daemon.cli.check import check_cloud

    with _app(config_path, args.log_format) as app:
        return check_cloud(app)


def command_run_once(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.run_once import run_once

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
        err(f"ledger: {error}")


def command_status(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.status import status

    with _app(config_path, args.log_format, cloud=False, create_ledger=False) as app:
        return status(app, as_json=args.json)


def command_history(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.status import history

    with _app(config_path, args.log_format, cloud=False, create_ledger=False) as app:
        return history(
            app, backup=args.backup, policy=args.policy, limit=args.limit, as_json=args.json
        )


def command_replicate_backup(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.manual import replicate_backup

    with _app(config_path, args.log_format) as app:
        return replicate_backup(app, args)


def command_replicate_vault(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.manual import replicate_vault

    with _app(config_path, args.log_format) as app:
        return replicate_vault(app, args)


def command_retry(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.manual import retry

    with _app(config_path, args.log_format, cloud=False, create_ledger=False) as app:
        return retry(app, args.backup_id, args.to_region)


def command_report(args: argparse.Namespace, config_path: Path) -> int:
    from daemon.cli.status import report_traffic

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
