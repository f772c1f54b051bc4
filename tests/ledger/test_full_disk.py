"""A full disk under a SQLite ledger, on a real full filesystem (a small tmpfs: root only).
The ledger is fine, only the disk is full: the message says so and never advises throwing
the ledger away (it holds the once-only vault bindings); after space is freed, it opens as
it was."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.adapters.ledger import open_ledger
from daemon.core.errors import LedgerUnavailableError
from tests.ledger.test_ledger import NOW, REGION, job


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no block left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while _wrote(fd):
            pass
    finally:
        os.close(fd)
    return filler


def _wrote(fd: int) -> bool:
    try:
        os.write(fd, b"\0" * 65536)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        return False
    return True


def test_a_full_disk_is_said_so_and_the_ledger_survives(small_filesystem: Path) -> None:
    url = f"sqlite:///{small_filesystem / 'state' / 'ledger.db'}"
    ledger = open_ledger(url)
    ledger.save_jobs([job("b-1")], NOW)
    ledger.close()
    filler = fill(small_filesystem)

    with pytest.raises(LedgerUnavailableError) as failed:
        open_ledger(url).close()
    message = str(failed.value)
    assert "no space left on the device" in message
    assert "free space and start again" in message
    assert "move it away" not in message
    assert "restore it" not in message

    filler.unlink()
    reopened = open_ledger(url)
    try:
        assert list(reopened.get_jobs(REGION, ["b-1"])) == ["b-1"]
    finally:
        reopened.close()


def test_a_disk_filling_up_while_open_is_said_so(small_filesystem: Path) -> None:
    ledger = open_ledger(f"sqlite:///{small_filesystem / 'ledger.db'}")
    try:
        fill(small_filesystem)
        with pytest.raises(LedgerUnavailableError, match="no space left on the device"):
            ledger.save_jobs([job(f"b-{n}") for n in range(2000)], NOW)
    finally:
        ledger.close()
