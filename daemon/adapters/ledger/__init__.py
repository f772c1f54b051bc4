"""The ledger (docs/design.md §5): jobs, attempts, vault bindings, sweeps and leases, on SQLModel.

SQLite by default; PostgreSQL when several hosts share one ledger. Each public method is one
transaction. On SQLite every transaction starts with ``BEGIN IMMEDIATE`` (SQLAlchemy's pysqlite
recipe), so a claim cannot interleave with another process's claim; on PostgreSQL claims use
``FOR UPDATE SKIP LOCKED``. The file is created 0600 in a 0700 directory, in WAL mode with
``synchronous=FULL``: the intent written before a POST must survive a power cut.

``schema`` holds the tables and their migrations; ``store`` assembles ``SqlLedger`` from one
store per role (``jobs``, ``bindings``, ``leases``, ``sweeps``, ``alerts``) on ``base``;
``opening`` checks the file (``sqlite``) or database (``postgres``) and migrates it at open;
``failures`` says what a database error means.
"""

from daemon.adapters.ledger.opening import open_ledger, open_scratch_ledger
from daemon.adapters.ledger.postgres import DatabaseTimeouts
from daemon.adapters.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from daemon.adapters.ledger.store import SqlLedger

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "DatabaseTimeouts",
    "SqlLedger",
    "open_ledger",
    "open_scratch_ledger",
]
