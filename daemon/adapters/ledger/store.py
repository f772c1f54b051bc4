"""``SqlLedger``: the ``Ledger`` port's queries and writes, one transaction per method."""

from __future__ import annotations

from daemon.adapters.ledger.alerts import AlertStore
from daemon.adapters.ledger.bindings import BindingStore
from daemon.adapters.ledger.jobs import JobStore
from daemon.adapters.ledger.leases import LeaseStore
from daemon.adapters.ledger.sweeps import SweepStore


class SqlLedger(JobStore, BindingStore, LeaseStore, SweepStore, AlertStore):
    """The ``Ledger`` port on SQLite or PostgreSQL. Safe to share between threads."""
