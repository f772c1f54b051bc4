"""The live progress line of an interactive ``--run-once`` (policies, backups scanned,
submitted, finished), redrawn in place on a terminal; on anything else it writes nothing, so
pipes, files and journald never see control characters. Log lines to the same terminal
are written above it (``adapters.logs.draw_status``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from daemon.adapters.logs import CLEAR_LINE, clear_status, draw_status
from daemon.core.model import SweepReport
from daemon.core.policy import Policy

__all__ = ["CLEAR_LINE", "Progress"]
REDRAW_EVERY = 0.1  # seconds: at most ten redraws a second, however fast backups come


class Progress:
    """Fed by the sweep (a decision sink), by each finished sweep and by each wait round."""

    def __init__(
        self,
        stream: TextIO,
        policies: int,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = _is_terminal(stream)
        self._stream = stream
        self._monotonic = monotonic
        self._started = monotonic()
        self._last_drawn = float("-inf")
        self.policies = policies
        self.swept = 0
        self.current = ""
        self.scanned = 0
        self.submitted = 0
        self.finished = 0
        self.unfinished: int | None = None

    # -- feeding ---------------------------------------------------------------------------
    def scanned_some(self, policy: Policy, count: int) -> None:
        self.current = policy.name
        self.scanned += count
        self._draw()

    def swept_one(self, report: SweepReport) -> None:
        self.swept += 1
        self.submitted += report.submitted
        self._draw(force=True)

    def waiting(self, unfinished: int, finished: int) -> None:
        self.unfinished, self.finished = unfinished, finished
        self._draw(force=True)

    def close(self) -> None:
        """Erase the line, so the report that follows starts on a clean one."""
        if self.enabled:
            clear_status(self._stream)

    # -- drawing ---------------------------------------------------------------------------
    def line(self) -> str:
        elapsed = int(self._monotonic() - self._started)
        parts = [f"policies {self.swept}/{self.policies}"]
        if self.current and self.swept < self.policies:
            parts.append(f"sweeping {self.current}")
        parts += [f"{self.scanned} backups scanned", f"{self.submitted} submitted"]
        if self.unfinished is not None:
            parts += [f"{self.finished} finished", f"{self.unfinished} waiting"]
        return f"{' · '.join(parts)} ({elapsed // 60}:{elapsed % 60:02d})"

    def _draw(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._monotonic()
        if not force and now - self._last_drawn < REDRAW_EVERY:
            return
        self._last_drawn = now
        draw_status(self._stream, self.line())  # log lines are written above it


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: no display
        return False
