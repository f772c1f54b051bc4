"""Signals, made safe: a handler only sets a flag (no logging, no lock: it may run inside any
bytecode of the main thread); the interpreter wakes the main loop through a pipe, and the
main loop acts on the flags.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Callable
from contextlib import suppress
from types import FrameType
from typing import Any

from daemon.service.courier import Courier


class SignalFlags:
    """The stop and reload flags the handlers set, and the main loop's wait on the wake pipe."""

    courier: Courier
    _stopping: threading.Event
    _stop_signal: str | None
    _reload_requested: bool
    _wake_read: int

    def _sleep_until_signal(self, seconds: float) -> None:
        try:
            readable, _, _ = select.select([self._wake_read], [], [], seconds)
        except InterruptedError:  # pragma: no cover (PEP 475 retries; kept for safety)
            return
        if readable:
            with suppress(BlockingIOError):  # raised once drained
                while os.read(self._wake_read, 512):
                    pass

    # -- signals ---------------------------------------------------------------------------
    def _install_signal_handlers(self, wake_fd: int) -> tuple[dict[int, Any], int]:
        previous_wakeup_fd = signal.set_wakeup_fd(wake_fd, warn_on_full_buffer=False)
        handlers: dict[int, Callable[[int, FrameType | None], None]] = {
            signal.SIGTERM: self._on_stop_signal,
            signal.SIGINT: self._on_stop_signal,
            signal.SIGHUP: self._on_reload_signal,
        }
        previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
        return previous, previous_wakeup_fd

    # A handler sets one flag, nothing else: no logging (the main thread may be inside a
    # write to the same stream), no lock. The main loop acts on the flags.
    def _on_stop_signal(self, number: int, _frame: FrameType | None) -> None:
        self._stop_signal = signal.Signals(number).name

    def _on_reload_signal(self, _number: int, _frame: FrameType | None) -> None:
        self._reload_requested = True

    def _stop_asked(self) -> bool:
        """Whether a stop signal came; in the main thread, it is passed on here to the event
        the work threads watch (a handler may not set it: Event.set takes a lock)."""
        if self._stop_signal is not None and not self._stopping.is_set():
            self._stopping.set()
            self.courier.wake()
        return self._stopping.is_set()
