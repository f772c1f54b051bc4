"""What the engine runs with: the ports, the clock and the settings (``Engine``), one
policy's destination (``Target``), and the named crash points the reliability tests kill a
process at.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from daemon.core import retrying
from daemon.core.model import Destination, Job
from daemon.core.ports import Cloud, Ledger

log = structlog.get_logger("cbr_replicator")

CRASH_ENV = "CBR_REPLICATOR_TEST_CRASH_AT"  # test-only: kill this process at a named point
RECHECK_MARGIN = timedelta(seconds=5)


def ambiguous_recheck(connect_timeout: timedelta, read_timeout: timedelta) -> timedelta:
    """How soon a job whose POST may have been applied is reconciled again. The reconcile
    read must come after anything the POST could still do: the request may be in flight for
    up to connect + read timeout, and the margin lets the service finish one that reached it
    just before our timeout. Sooner, a read could miss a replication about to start."""
    return connect_timeout + read_timeout + RECHECK_MARGIN


# The default config's (10 s connect, 30 s read); the composition root derives its own.
AMBIGUOUS_RECHECK = ambiguous_recheck(timedelta(seconds=10), timedelta(seconds=30))


@dataclass(frozen=True)
class Engine:
    """What the services share: ports, clock, randomness and this process's identity."""

    cloud: Cloud
    ledger: Ledger
    clock: Callable[[], datetime]
    owner: str
    lease: timedelta = timedelta(minutes=2)
    max_in_flight_per_region: int | None = None
    rng: random.Random = field(default_factory=random.Random)
    concurrency: int = 8
    # Does this lease owner (another process's ``owner``) no longer run? Lets a policy's
    # sweep lease be taken over at once from a killed process; never by default.
    owner_gone: Callable[[str], bool] = field(default=lambda _owner: False)
    # How soon a ``submitting`` job is reconciled again (``ambiguous_recheck``).
    recheck: timedelta = AMBIGUOUS_RECHECK

    def now(self) -> datetime:
        return self.clock()

    @property
    def worker_threads(self) -> int:
        """Threads that make API calls: as many as the calls in flight. Twice as many kept
        the slots fuller while some threads signed or parsed, but the process is bound by one
        core (the GIL) in a catch-up, and the extra threads' contention cost more than they
        gained: 10-15 % more CPU and a catch-up ratio of 1.52-1.55 against 1.38-1.42 (1,000
        vaults, 10,000 POSTs, one batch)."""
        return self.concurrency


@dataclass(frozen=True)
class Target:
    """A resolved destination of one policy: what every job of that policy needs."""

    policy: str
    source_region: str
    source_project_id: str
    destination: Destination
    retry: retrying.RetryPolicy
    name_template: str
    description_template: str
    enable_acceleration: bool
    max_in_flight: int
    traffic_budget_per_day: int | None = None  # bytes; None: no budget
    timezone: str = "UTC"  # the day of the traffic budget is a day of this zone


def crash_point(name: str) -> None:
    """Test-only: die like ``kill -9`` at a named point of the protocol (docs/design.md §13)."""
    wanted = os.environ.get(CRASH_ENV)
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


def job_log(job: Job, policy: str | None) -> Any:
    """The engine's logger bound to one job: its policy, source backup and destination region."""
    return log.bind(policy=policy, backup=job.source_backup_id, region=job.destination_region)
