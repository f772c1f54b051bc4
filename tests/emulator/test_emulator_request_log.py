"""The emulator's request log: how many requests it held at once, at the most and on average
(the sweep benchmark reports both to show whether a client kept its slots full)."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.emulator.server import RequestLog


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_mean_in_flight_is_weighted_by_time_from_first_arrival_to_last_answer() -> None:
    clock = Clock()
    log = RequestLog(clock=clock)
    assert log.mean_in_flight == 0.0  # nothing yet
    log.arrived()  # t=0: one in flight
    clock.now += 1
    log.arrived()  # t=1: two
    clock.now += 1
    log.add({"operation": "list_backups"})  # t=2: one
    clock.now += 2
    log.add({"operation": "list_backups"})  # t=4: none
    assert log.most_in_flight == 2
    assert log.mean_in_flight == (1 * 1 + 2 * 1 + 1 * 2) / 4

    clock.now += 50  # idle time after the last answer does not count
    assert log.mean_in_flight == 1.25


def test_clearing_the_log_starts_a_new_measure() -> None:
    clock = Clock()
    log = RequestLog(clock=clock)
    log.arrived()
    clock.now += 10
    log.add({"operation": "capabilities"})
    clock.now += 5
    log.clear()
    log.arrived()
    clock.now += 2
    log.arrived()
    clock.now += 2
    log.add({"operation": "replicate_backup"})
    log.add({"operation": "replicate_backup"})
    assert log.mean_in_flight == (1 * 2 + 2 * 2) / 4
    assert log.most_in_flight == 2
    assert [entry["operation"] for entry in log.entries()] == ["replicate_backup"] * 2
