"""The lease that keeps one sweeper per policy: renewed on its own thread while the sweep
runs; a sweep that lost it stops at its next check.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import structlog

from daemon.core.errors import LedgerError
from daemon.engine.context import Engine

log = structlog.get_logger("cbr_replicator")


# -- one sweep -----------------------------------------------------------------------------


class LeaseLostError(Exception):
    """Another process holds the lease this one was working under."""


class LeaseKeeper:
    """Keeps a named ledger lease while a long piece of work runs: a thread of its own renews
    it every quarter of its length, whatever the work is doing (a slow page, a long
    submission pass), so it never runs out under a live holder. ``check()`` raises
    LeaseLostError once the lease is lost: a renewal was refused (another process took it
    over, this one having stalled for a whole lease), or the ledger could not be reached for
    a whole lease (another may have taken it by now)."""

    def __init__(self, engine: Engine, name: str, length: timedelta) -> None:
        self._engine = engine
        self._name = name
        self._length = length
        self._stopped = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease:{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def check(self) -> None:
        if self._lost.is_set():
            raise LeaseLostError(
                f"lease {self._name} lost: another process took it over; this one stops here"
            )

    def _run(self) -> None:
        period = self._length.total_seconds() / 4
        renewed = time.monotonic()
        while not self._stopped.wait(period):
            now = self._engine.now()
            try:
                held = self._engine.ledger.acquire_lease(
                    self._name, owner=self._engine.owner, now=now, until=now + self._length
                )
            except LedgerError as error:
                log.warning("lease_renewal_failed", lease=self._name, error=str(error))
                held = time.monotonic() - renewed < self._length.total_seconds()
            else:
                renewed = time.monotonic() if held else renewed
            if not held:
                log.warning("lease_lost", lease=self._name, owner=self._engine.owner)
                self._lost.set()
                return
