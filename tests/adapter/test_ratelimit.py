"""The client-side token bucket, on an explicit clock."""

from __future__ import annotations

import threading
from collections.abc import Callable

from daemon.adapters.cloud.ratelimit import ThrottleGate, TokenBucket, next_rate, throttle_delay


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


def test_aimd_halves_once_and_climbs_back_slowly() -> None:
    assert next_rate(40, ceiling=50, throttled=True) == 20
    assert next_rate(0.3, ceiling=50, throttled=True) == 0.2, "never below the floor"
    rate = 20.0
    for _ in range(200):  # about ten seconds of successes at 20/s
        rate = next_rate(rate, ceiling=50, throttled=False)
    assert 20.9 < rate < 21.1, "about one request per second more per ten seconds"
    assert next_rate(49.999, ceiling=50, throttled=False) == 50, "never above the ceiling"


def test_pauses_grow_to_two_minutes() -> None:
    assert [throttle_delay(streak) for streak in range(1, 10)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        120,
        120,
    ]
    assert throttle_delay(10_000) == 120


def test_answers_already_on_their_way_do_not_lengthen_the_pause() -> None:
    clock = SteppedClock()
    gate = ThrottleGate(600, clock=clock, sleep=clock.sleep)
    assert gate.throttled(sent_at=0.0) == 1
    assert gate.throttled(sent_at=0.0) == 0, "sent before the pause began"
    assert gate.admit()
    assert clock.slept == [1.0]
    assert gate.throttled(sent_at=clock.now) == 2
    gate.succeeded()
    assert gate.admit()
    assert clock.slept == [1.0, 2.0]


def test_an_exhausted_gate_refuses_but_for_one_probe() -> None:
    clock = SteppedClock()
    gate = ThrottleGate(10, clock=clock, sleep=clock.sleep, ceiling=8)
    for _ in range(5):
        assert gate.admit()
        gate.throttled(sent_at=clock.now)
    assert gate.exhausted()
    assert not gate.admit(), "within the pause: refused without waiting"
    clock.now += 8
    assert gate.admit(), "one probe"
    gate.succeeded()
    assert not gate.exhausted()
    assert gate.admit()


def test_a_post_does_not_wait_past_its_deadline() -> None:
    clock = SteppedClock()
    gate = ThrottleGate(600, clock=clock, sleep=clock.sleep)
    gate.throttled(sent_at=0.0, retry_after=30)
    assert not gate.admit(deadline=10)
    assert clock.slept == []
    assert gate.admit(deadline=40)
    assert clock.slept == [30.0]


def _in_thread(action: Callable[[], object]) -> None:
    thread = threading.Thread(target=action)
    thread.start()
    thread.join()


def test_a_lone_429_pauses_only_the_caller_that_got_it() -> None:
    clock = SteppedClock()
    gate = ThrottleGate(600, clock=clock, sleep=clock.sleep)
    assert gate.throttled(sent_at=0.0) == 1
    _in_thread(gate.admit)
    assert clock.slept == [], "another thread goes on at once"
    assert gate.admit()
    assert clock.slept == [1.0], "the refused request waits before it is sent again"


def test_a_second_429_pauses_every_caller() -> None:
    clock = SteppedClock()
    gate = ThrottleGate(600, clock=clock, sleep=clock.sleep)
    gate.throttled(sent_at=0.0)
    clock.now = 0.5
    assert gate.throttled(sent_at=0.4) == 2, "sent after the first 429 was answered"
    _in_thread(gate.admit)
    assert clock.slept == [2.0], "the shared pause holds another thread too"
