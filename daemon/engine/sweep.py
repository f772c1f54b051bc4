"""One pass of one policy: resolve it against the cloud, keep its vault bindings, scan its
vaults page by page, decide per backup, record the decisions, then submit due work.

Per page there is one ledger read (the jobs of that page's backups) and one ledger write, so
memory stays flat however many backups a vault holds (docs/design.md §4). Up to
``engine.worker_threads`` threads list different vaults at once (``engine.concurrency``
requests on the wire), or one thread lists the whole source project (``source.listing:
project``); the pages are decided and recorded in the sweeping thread, one batch at a time,
so the ledger has one user per sweep.
"""

from __future__ import annotations

import time
from dataclasses import replace

import structlog

from daemon.core import alerts
from daemon.core.errors import CloudError, EndpointError, PermissionDeniedError, RefusedError
from daemon.core.model import LEASED, SweepReport
from daemon.core.policy import Policy
from daemon.engine.bindings import keep_bindings
from daemon.engine.context import Engine
from daemon.engine.lease import LeaseKeeper, LeaseLostError
from daemon.engine.resolve import ResolvedPolicy, resolve_policy
from daemon.engine.scan import DecisionSink, ScanHook, Tally, scan_vaults
from daemon.engine.submit import submit_due

log = structlog.get_logger("cbr_replicator")


def _nothing() -> None:
    pass


def sweep_policy(
    engine: Engine,
    policy: Policy,
    *,
    dry_run: bool = False,
    sink: DecisionSink | None = None,
    submit: bool = True,
    on_scanned: ScanHook | None = None,
) -> tuple[SweepReport, ResolvedPolicy | None]:
    """Sweep one policy under its ledger lease. Refusals and cloud errors end up in the
    report (``error``/``error_reason``); PermissionDeniedError propagates (stop everything)."""
    started = engine.now()
    lease_name = f"sweep:{policy.name}"
    # Renewed every quarter of its length while the sweep runs (LeaseKeeper): another
    # instance takes the policy over at most one lease after this one stopped renewing.
    lease_length = engine.lease
    if not dry_run and not engine.ledger.acquire_lease(
        lease_name,
        owner=engine.owner,
        now=started,
        until=started + lease_length,
        holder_gone=engine.owner_gone,
    ):
        holder = engine.ledger.lease_holder(lease_name, started) or "another process"
        report = SweepReport(policy=policy.name, started_at=started, finished_at=engine.now())
        skipped = f"held by {holder}: another process is sweeping this policy"
        return replace(report, error=skipped, error_reason=LEASED), None

    keeper = None if dry_run else LeaseKeeper(engine, lease_name, lease_length)
    renew = keeper.check if keeper is not None else _nothing
    sweep_id = None if dry_run else engine.ledger.start_sweep(policy.name, started)
    tally = Tally()
    submitted = 0
    error: str | None = None
    error_reason: str | None = None
    resolved: ResolvedPolicy | None = None
    monotonic_start = time.monotonic()
    try:
        if keeper is not None:
            keeper.start()
        resolved = resolve_policy(engine, policy)
        keep_bindings(engine, resolved, dry_run=dry_run)
        failed = scan_vaults(
            engine,
            resolved,
            tally,
            dry_run=dry_run,
            sink=sink,
            renew=renew,
            on_scanned=on_scanned,
        )
        if submit and not dry_run:
            renew()
            submitted = submit_due(engine, resolved.target).submitted
        if failed:
            raise failed[0]  # reported as the sweep's error, once the other vaults are done
    except RefusedError as refusal:
        error, error_reason = str(refusal), refusal.reason
    except LeaseLostError as lost:
        error, error_reason = str(lost), "lease_lost"
    except Exception as failure:
        if isinstance(failure, PermissionDeniedError | EndpointError) or not isinstance(
            failure, CloudError
        ):
            raise
        error, error_reason = str(failure), failure.code or failure.__class__.__name__
    finally:
        if keeper is not None:
            keeper.stop()  # before the release: a late renewal would take the lease again
        if not dry_run:
            engine.ledger.release_lease(lease_name, owner=engine.owner)
    report = SweepReport(
        policy=policy.name,
        started_at=started,
        finished_at=engine.now(),
        backups_seen=tally.backups_seen,
        reasons=dict(tally.reasons or {}),
        enqueued=tally.enqueued,
        adopted=tally.adopted,
        submitted=submitted,
        error=error,
        error_reason=error_reason,
    )
    if sweep_id is not None:
        engine.ledger.finish_sweep(sweep_id, report)
    log.info(
        "sweep_finished",
        policy=policy.name,
        seen=report.backups_seen,
        enqueued=report.enqueued,
        adopted=report.adopted,
        submitted=report.submitted,
        error_reason=error_reason,
        error=error,
        seconds=round(time.monotonic() - monotonic_start, 3),
        **_rpo_fields(engine, policy, dry_run=dry_run),
    )
    return report, resolved


def _rpo_fields(engine: Engine, policy: Policy, *, dry_run: bool) -> dict[str, object]:
    """The policy's RPO figures for the sweep's log line (none on a dry run)."""
    if dry_run:
        return {}
    window = engine.ledger.replication_window(policy.name)
    return alerts.rpo_log_fields(alerts.rpo_status(window, policy.rpo, engine.now()))
