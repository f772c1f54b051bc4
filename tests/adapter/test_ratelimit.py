"""The client-side token bucket, on an explicit clock."""

from __future__ import annotations

import threading

from daemon.ratelimit import TokenBucket


class SteppedClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_burst_then_rate() -> None:
    clock = SteppedClock()
    bucket = TokenBucket(10, capacity=10, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(30)]
    assert waits[:10] == [0.0] * 10
    # 20 more tokens at 10/s take 2 s in total, whatever the order of sleeps.
    assert abs(clock.now - 2.0) < 1e-9
    assert all(wait > 0 for wait in waits[10:])


def test_threads_share_one_budget() -> None:
    clock = SteppedClock()
    lock = threading.Lock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        with lock:
            slept.append(seconds)

    bucket = TokenBucket(5, capacity=5, clock=clock, sleep=sleep)
    threads = [threading.Thread(target=bucket.acquire) for _ in range(15)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # With the clock standing still, 10 of 15 callers must wait for reserved tokens, and the
    # reservations are distinct: 0.2, 0.4, ... 2.0 seconds.
    assert sorted(round(s, 6) for s in slept) == [round(0.2 * i, 6) for i in range(1, 11)]
