"""What a database error means: the ``LedgerError`` raised for it (its cause, and a hint when
the disk is full), and whether it is the database not answering (retried, exit 75) rather
than a refusal.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from daemon.core.errors import LedgerError, LedgerUnavailableError


def cause_of(error: SQLAlchemyError) -> object:
    """The driver's own message when there is one (it names the file or the constraint)."""
    return getattr(error, "orig", None) or error


def ledger_error(error: SQLAlchemyError, engine: Engine, place: str = "ledger") -> LedgerError:
    """``error`` as what it means: ``LedgerUnavailableError`` when the database did not
    answer or cannot write for now (the CLI exits 75, systemd restarts the daemon), a plain
    ``LedgerError`` when the ledger or its config must be fixed (78)."""
    if isinstance(cause_of(error), sqlite3.OperationalError):
        space = no_space_problem(engine.url.database)
        if space is not None:
            return LedgerUnavailableError(f"{place}: {space}")
    cause = " ".join(str(cause_of(error)).split())  # libpq's messages span lines
    text = f"{place}: {error.__class__.__name__}: {cause}"
    if database_unavailable(error):
        return LedgerUnavailableError(f"{text}; the database did not answer: retried later")
    return LedgerError(text)


# PostgreSQL error classes that say "not now" rather than "wrong": connection exceptions,
# transaction rollbacks (serialization, deadlock), insufficient resources, operator
# intervention (shutdown, cancelled statement), system errors; and a lock not available.
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_STATES = frozenset({"55P03"})
# The server refused the connection (FATAL), but only for now.
_TRANSIENT_REFUSALS = (
    "starting up",
    "shutting down",
    "in recovery",
    "too many",
    "connection slots",
    "terminating connection",
)


def database_unavailable(error: SQLAlchemyError) -> bool:
    """Did the database fail to answer (rather than refuse)? True for a dropped, refused or
    timed-out connection, a server starting, stopping or full, a lock wait given up."""
    if getattr(error, "connection_invalidated", False) or isinstance(error, PoolTimeout):
        return True
    cause = getattr(error, "orig", None)
    if isinstance(cause, sqlite3.Error):
        return "locked" in str(cause) or "busy" in str(cause)
    state = getattr(cause, "sqlstate", None)
    if state:
        return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES
    if not isinstance(error, OperationalError | InterfaceError):
        return False
    # psycopg reports failed connections without a state: refused, timed out or
    # unresolved (no answer), or a FATAL from the server (an answer: wrong database, user).
    message = str(cause)
    return "FATAL" not in message or any(marker in message for marker in _TRANSIENT_REFUSALS)


MIN_FREE_BYTES = 1 << 20


def no_space_problem(database: str | None) -> str | None:
    """What to say when the SQLite file's filesystem is full: SQLite then reports a write
    it could not make ("disk I/O error", "database or disk is full") while the file itself
    is as it was before the write, and must not be thrown away."""
    if not database or database == ":memory:":
        return None
    directory = Path(database).parent
    try:
        info = os.statvfs(directory)
    except OSError:
        return None
    free = info.f_bavail * info.f_frsize
    no_inode = info.f_files > 0 and info.f_favail == 0  # 0 files: it has no inode count
    if free >= MIN_FREE_BYTES and not no_inode:
        return None
    what = "no space" if free < MIN_FREE_BYTES else "no free inode"
    return (
        f"{database}: {what} left on the device holding {directory} ({free} bytes free); "
        "free space and start again. The ledger file is intact (SQLite did not apply the "
        "write it could not make): keep it"
    )
