"""The client-side request rate, shared by all threads: a token bucket, its adaptive rate
(AIMD) and the one backoff that a throttled answer (429) imposes on every caller.

Clock and sleep are injected so tests step time instead of waiting for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Allows ``rate`` acquisitions per second on average, bursts up to ``capacity``."""

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._rate = rate
        self._capacity = capacity if capacity is not None else max(1.0, rate)
        self._tokens = self._capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        with self._lock:
            return self._rate

    def set_rate(self, rate: float) -> None:
        """A new rate from now on; tokens already earned are kept (up to the capacity)."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        with self._lock:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            self._rate = rate
            self._capacity = max(1.0, rate)

    def acquire(self) -> float:
        """Take one token, sleeping until one is available; returns the time slept."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            self._tokens -= 1.0
            # A negative balance is a reservation: this caller waits for its own token
            # outside the lock, so other threads queue behind it in order.
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


# The streak at which throttling counts as sustained and the rate is cut: the window was still
# closed after pauses of 1 s and 2 s, so it is a minute's or five minutes' window that our own
# traffic used up. A lone 429 (a one-second window's edge, another client of the same key, a
# passing fault) costs the shared pause only: cutting the rate on each of them ratchets it
# down to a few requests per second under a steady few per cent of 429s, which no slow
# increase can win back.
SUSTAINED_STREAK = 3


def next_rate(rate: float, *, ceiling: float, throttled: bool, floor: float = 0.2) -> float:
    """AIMD: halve the rate when throttling is sustained; on a success add ``0.1 / rate``, so the
    rate grows by about one request per second every ten seconds, up to ``ceiling`` (the
    configured ``requests_per_second``). Slow enough that a rate cut at the end of a minute's
    window still holds through the next one: a sweep settles just under what the gateway
    allows per window."""
    if throttled:
        return max(floor, rate / 2)
    return min(ceiling, rate + 0.1 / rate)


def throttle_delay(streak: int, *, initial: float = 1.0, ceiling: float = 120.0) -> float:
    """The pause after the ``streak``-th 429 in a row: 1, 2, 4 ... seconds, up to two minutes,
    so that a pause outgrows a gateway window of one second, one minute or five minutes."""
    try:
        return min(ceiling, initial * 2.0 ** max(0, streak - 1))
    except OverflowError:
        return ceiling


class ThrottleGate:
    """One backoff for the whole process: while the gateway keeps refusing, every caller
    pauses, not just the one that got the 429, and the pause grows.

    The first 429 of an episode pauses only the caller that got it: alone it is no evidence
    that the process is over a limit (a window's edge, another client of the same key), and
    stopping every thread for each such one slowed whole sweeps under a steady few per cent
    of them. A second 429, to a request sent after the first was answered, starts the shared
    pause. Answers already on their way when a pause starts do not make it longer: the streak
    grows only with a 429 to a request sent after the last pause began. Past ``budget``
    seconds of throttling without a success the gate is *exhausted*: callers fail at once
    (``admit`` returns False), but for one probe per longest pause, whose success ends the
    episode.
    """

    def __init__(
        self,
        budget: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        ceiling: float = 120.0,
    ) -> None:
        self._budget = budget
        self._clock = clock
        self._sleep = sleep
        self._ceiling = ceiling
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._probe: int | None = None  # the thread whose probe is out: the others wait
        self._resume_at = 0.0  # no request leaves before this moment
        self._streak = 0
        self._since: float | None = None  # first 429 since the last success
        self._paused_at = float("-inf")  # when the last pause began
        self._own: dict[int, float] = {}  # thread -> its own pause's end (a lone 429)

    def admit(self, deadline: float | None = None) -> bool:
        """Wait out the pause (never past ``deadline``); False: do not send (exhausted, or
        the pause ends after the deadline). The first caller after a pause is its probe:
        the others wait for its answer (``succeeded`` or ``throttled``) before they go."""
        if not self._own_pause(deadline):
            return False
        while True:
            with self._answered:
                while self._probe is not None:
                    self._answered.wait()
                now = self._clock()
                if self._exhausted(now):
                    if now < self._resume_at:
                        return False
                    self._resume_at = now + self._ceiling
                    self._probe = threading.get_ident()
                    return True
                wait = self._resume_at - now
                if wait <= 0:
                    self._probe = threading.get_ident() if self._streak > 1 else None
                    return True
            if deadline is not None and now + wait > deadline:
                return False
            self._sleep(wait)

    def throttled(self, sent_at: float, retry_after: float | None = None) -> int:
        """Record a 429 to a request sent at ``sent_at``; returns the streak of pauses it
        made (1: throttling starts), or 0 when the request had left before the pause in
        force began."""
        with self._lock:
            now = self._clock()
            if self._since is None:
                self._since = now
            if sent_at <= self._paused_at:
                self._end_probe()
                return 0
            self._streak += 1
            delay = max(throttle_delay(self._streak, ceiling=self._ceiling), retry_after or 0.0)
            if self._streak == 1:
                self._own[threading.get_ident()] = now + delay
            else:
                self._resume_at = max(self._resume_at, now + delay)
            self._paused_at = now
            self._end_probe()
            return self._streak

    def _own_pause(self, deadline: float | None) -> bool:
        """Wait out this caller's own pause, if a lone 429 gave it one (never past
        ``deadline``: then False, and the pause stays for its next try)."""
        ident = threading.get_ident()
        with self._lock:
            until = self._own.get(ident)
            now = self._clock()
            if until is None or until <= now:
                self._own.pop(ident, None)
                return True
            if deadline is not None and until > deadline:
                return False
            del self._own[ident]
        self._sleep(until - now)
        return True

    def now(self) -> float:
        return self._clock()

    def succeeded(self) -> None:
        """Any answer but a 429 (or no answer at all): not throttled."""
        with self._lock:
            self._streak = 0
            self._since = None
            self._own.pop(threading.get_ident(), None)
            self._end_probe()

    def _end_probe(self) -> None:
        """The probe's answer (its own thread reports it) lets the others go."""
        if self._probe == threading.get_ident():
            self._probe = None
            self._answered.notify_all()

    def exhausted(self) -> bool:
        with self._lock:
            return self._exhausted(self._clock())

    def _exhausted(self, now: float) -> bool:
        return self._since is not None and now - self._since >= self._budget


class AdaptiveRate:
    """A token bucket whose rate follows ``next_rate``: cut on 429, raised on success."""

    def __init__(self, bucket: TokenBucket, ceiling: float) -> None:
        self._bucket = bucket
        self._ceiling = ceiling
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        return self._bucket.rate

    def acquire(self) -> float:
        return self._bucket.acquire()

    def succeeded(self) -> None:
        if self._bucket.rate >= self._ceiling:
            return  # the usual case, without a lock
        with self._lock:
            self._bucket.set_rate(
                next_rate(self._bucket.rate, ceiling=self._ceiling, throttled=False)
            )

    def throttled(self) -> None:
        with self._lock:
            self._bucket.set_rate(
                next_rate(self._bucket.rate, ceiling=self._ceiling, throttled=True)
            )
