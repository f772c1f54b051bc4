"""Fixtures for the emulator tests: a running demo cloud, SDK clients, a signed raw client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from daemon.emulator import Emulator
from tests.emulator.emulator_support import DEMO, RawClient, make_cbr


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(DEMO, clock="manual") as emu:
        yield emu


@pytest.fixture
def cbr(emulator: Emulator) -> Callable[..., Any]:
    def build(region: str = "cn-north-4", project: str | None = None, sk: str | None = None) -> Any:
        return make_cbr(emulator, region, project, sk)

    return build


@pytest.fixture
def raw(emulator: Emulator) -> RawClient:
    return RawClient(emulator)
