"""The manual commands: ``replicate-backup``, ``replicate-vault`` and ``retry``; waiting for
their jobs and reporting them.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from daemon.app import App
from daemon.cli.output import out, print_json_document
from daemon.core import exitcodes
from daemon.core.errors import CloudError, Interrupted, LedgerError, PermissionDeniedError
from daemon.core.model import TERMINAL_STATES, Job, JobState
from daemon.engine import manual, track

# -- manual commands -----------------------------------------------------------------------


def _source_region(app: App, given: str | None) -> str:
    if given:
        return given
    regions = {policy.source.region for policy in app.settings.policies}
    if len(regions) == 1:
        return regions.pop()
    raise ValueError(
        "--source-region is required: the policies use "
        + (", ".join(sorted(regions)) if regions else "no source region")
    )


def _request(app: App, args: argparse.Namespace) -> manual.ManualRequest:
    return manual.ManualRequest(
        source_region=_source_region(app, args.source_region),
        destination_region=args.to_region,
        destination_vault=args.to_vault,
        destination_project=args.to_project,
    )


def replicate_backup(app: App, args: argparse.Namespace) -> int:
    result = manual.replicate_backup(
        app.engine,
        _request(app, args),
        args.backup_id,
        name=args.name,
        description=args.description,
    )
    return _finish_manual(app, result, args)


def replicate_vault(app: App, args: argparse.Namespace) -> int:
    result = manual.replicate_vault(app.engine, _request(app, args), args.vault)
    return _finish_manual(app, result, args)


def _finish_manual(app: App, result: manual.ManualResult, args: argparse.Namespace) -> int:
    jobs = list(result.jobs)
    stopped: int | None = None  # the signal that stopped the wait
    if args.wait:
        try:
            jobs = _wait_jobs(app, jobs, args.wait_timeout)
        except KeyboardInterrupt as stop:
            stopped = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
            jobs = _jobs_now(app, jobs)
    if args.json:
        print_json_document({"message": result.message, "jobs": [_job_dict(job) for job in jobs]})
    else:
        out(result.message)
        for job in jobs:
            out(
                f"  {job.source_backup_id} -> {job.destination_region}: {job.state}"
                f"{' (' + str(job.last_error_code) + ')' if job.last_error_code else ''}"
            )
    if stopped is not None:
        print(
            f"cbr-replicator: stopped waiting ({signal.Signals(stopped).name}); the "
            "replications go on in the cloud, and status or the next run follows them",
            file=sys.stderr,
            flush=True,
        )
        return exitcodes.signalled(stopped)
    if any(job.state in (JobState.FAILED, JobState.GIVEN_UP) for job in jobs):
        return exitcodes.REPLICATION_FAILED
    if args.wait and any(job.state not in TERMINAL_STATES for job in jobs):
        return exitcodes.WAIT_TIMED_OUT
    return exitcodes.OK


def _jobs_now(app: App, jobs: Iterable[Job]) -> list[Job]:
    """The jobs as the ledger has them (the last known state where it cannot be read)."""
    try:
        current = [(job, app.ledger.get_job(*job.key)) for job in jobs]
    except LedgerError:
        return list(jobs)
    return [now or before for before, now in current]


def _job_dict(job: Job) -> dict[str, Any]:
    return {
        "source_backup_id": job.source_backup_id,
        "destination_region": job.destination_region,
        "state": str(job.state),
        "replication_record_id": job.replication_record_id,
        "replica_backup_id": job.replica_backup_id,
        "replica_name": job.replica_name,
        "last_error_code": job.last_error_code,
    }


def _wait_jobs(app: App, jobs: Iterable[Job], timeout: timedelta) -> list[Job]:
    """Poll the manual jobs until they succeed or fail, or the timeout passes."""
    deadline = time.monotonic() + timeout.total_seconds()
    keys = [job.key for job in jobs]
    while True:
        current = [app.ledger.get_job(*key) for key in keys]
        live = [job for job in current if job is not None]
        if all(job.state != JobState.REPLICATING for job in live) or time.monotonic() >= deadline:
            return live
        try:
            track.track_jobs(app.engine, live, track.MANUAL_RETRY)
        except PermissionDeniedError:
            raise
        except CloudError as error:
            print(f"waiting: {error}", file=sys.stderr)
        time.sleep(1.0)


def retry(app: App, backup_id: str, region: str) -> int:
    job = manual.retry_job(app.engine, backup_id, region)
    out(f"backup {backup_id} -> {region}: {job.state}; the next run submits it")
    return exitcodes.OK
