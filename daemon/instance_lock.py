"""The single-instance guard of a daemon on a SQLite ledger: an exclusive ``flock``."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from daemon.errors import LedgerError

_SQLITE_PATH = re.compile(r"^sqlite(?:\+\w+)?:///([^?]+)")


class InstanceLock:
    """An exclusive ``flock`` on ``<ledger>.lock``, held by the daemon for its lifetime, so
    a second daemon on the same SQLite ledger refuses to start. ``--run-once`` and the manual
    commands never take it: the ledger's leases keep them from double-submitting."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, ledger_url: str) -> InstanceLock | None:
        """None for a database server ledger (several hosts may share it, by design)."""
        match = _SQLITE_PATH.match(ledger_url)
        if match is None:
            return None
        path = Path(match[1] + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LedgerError(
                f"ledger {match[1]} is in use by another cbr-replicator daemon (pid {holder}, lock "
                f"{path}); stop that one first (systemctl stop cbr-replicator), or give this "
                "one another ledger.url. --run-once and the manual commands may run beside it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        os.close(self._fd)  # closing the descriptor drops the lock
