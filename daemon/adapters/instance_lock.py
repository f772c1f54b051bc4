"""The single-instance guard of a daemon on a SQLite ledger: an exclusive ``flock``."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from daemon.core.errors import LedgerError

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
        fd = _lock(path)
        if fd is None:
            raise LedgerError(
                f"{match[1]} is in use by another cbr-replicator daemon (pid {_holder(path)}, "
                f"lock {path}); stop that one first (systemctl stop cbr-replicator), or give "
                "this one another ledger.url. --run-once and the manual commands may run "
                "beside it"
            )
        return cls(path, fd)

    def check(self) -> bool:
        """Whether the lock still guards the path. A lock file deleted (or replaced) under a
        running daemon would let a second one start beside it: it is made again and locked
        at once (True: restored), unless another daemon already holds the new one (then
        LedgerError: this one must stop)."""
        if _same_file(self._fd, self.path):
            return False
        fd = _lock(self.path)
        if fd is None:
            raise LedgerError(
                f"lock {self.path} was deleted while this daemon ran and another daemon "
                f"(pid {_holder(self.path)}) now holds a new one: two daemons on one SQLite "
                "ledger; this one stops. Never delete the lock file of a running daemon"
            )
        os.close(self._fd)
        self._fd = fd
        return True

    def release(self) -> None:
        os.close(self._fd)  # closing the descriptor drops the lock


def _lock(path: Path) -> int | None:
    """An exclusive lock on the file at ``path`` (its descriptor), or None when another
    process holds it. The file locked must be the one at the path once locked: one deleted
    or replaced meanwhile is let go and the new one tried."""
    for _ in range(100):  # more replacements than that in a row: someone is at it; refuse
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        at_path = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:32] or "unknown"
    except OSError:
        return "unknown"
