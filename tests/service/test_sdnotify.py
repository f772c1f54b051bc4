"""The notify protocol's sender never freezes the thread that reports, even when the
service manager stops reading its socket."""

from __future__ import annotations

import socket
import threading
import uuid

import pytest

from daemon.adapters.systemd import SystemdNotifier


def test_a_socket_nobody_reads_makes_notify_fail_instead_of_blocking() -> None:
    name = f"cbr-replicator-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unread:
        unread.bind(b"\0" + name.encode())
        notifier = SystemdNotifier({"NOTIFY_SOCKET": f"@{name}"}, send_timeout=0.05)
        outcome: list[BaseException] = []

        def report_until_refused() -> None:
            try:
                for _ in range(10_000):  # the queue holds a few datagrams, then is full
                    notifier.notify(STATUS="idle; 0 queued, 0 in flight")
            except OSError as error:
                outcome.append(error)

        reporter = threading.Thread(target=report_until_refused, daemon=True)
        reporter.start()
        reporter.join(timeout=30)
        assert not reporter.is_alive(), "notify blocked on a full socket"
        assert outcome
        assert isinstance(outcome[0], TimeoutError)


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_without_a_notify_socket_notify_does_nothing(environ: dict[str, str]) -> None:
    notifier = SystemdNotifier(environ)
    assert not notifier.enabled
    notifier.notify(READY=1)
