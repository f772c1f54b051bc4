"""Signals at any moment: a handler runs in the main thread between two bytecodes, wherever
that thread is. A handler that took a lock the main loop may hold at that moment (as
``Event.set`` does while the loop is inside ``Event.wait`` or ``clear``) hung the daemon for
good on an unlucky SIGHUP (seen once in the suite: no RELOADING after a SIGHUP); the handlers
now only set flags and write to a pipe.

SIGHUPs keep coming, in bursts, through several whole reloads, so that they land in every
part of the main loop; the daemon must go on reloading, answer a SIGTERM and exit 0."""

from __future__ import annotations

import signal
import time

from daemon.core import exitcodes
from tests.service.support import DEADLINE, Service, web_south

RELOADS = 6
BURST = 20  # signals between two looks at the notify socket: thousands a second


def test_sighups_arriving_all_the_time_never_hang_the_main_loop(service: Service) -> None:
    service.write_config([web_south("1h")])
    daemon, notify = service.start_ready()

    for reload in range(RELOADS):
        deadline = time.monotonic() + DEADLINE
        reloading = reloaded = False
        while not reloaded:  # until a whole reload went by under the storm
            for _ in range(BURST):
                daemon.signal(signal.SIGHUP)
            for message in notify.poll():
                reloading = reloading or message.get("RELOADING") == "1"
                reloaded = reloaded or (reloading and message.get("READY") == "1")
            assert time.monotonic() < deadline, (
                f"reload {reload}: hung; exit {daemon.process.poll()}; "
                f"notify {notify.messages[-3:]}; log {daemon.output[-3000:]}"
            )
    assert daemon.process.poll() is None  # SIGHUP never fell back to its default (exit)

    daemon.signal(signal.SIGTERM)
    notify.wait_for("STOPPING", "1")
    assert daemon.wait() == exitcodes.OK
    assert len(daemon.events("reload_finished")) >= RELOADS
    assert daemon.events("daemon_stopping")[0]["signal"] == "SIGTERM"
