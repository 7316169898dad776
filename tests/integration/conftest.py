"""Fixtures the lane-level tests share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import Config, GpuLane
from actors.testing import FakeGpu
from protocol import StoreSettings

StartLane = Callable[..., GpuLane]
CONFIG_SECTIONS = frozenset(field.name for field in dataclasses.fields(Config))


@pytest.fixture
def start_lane(tmp_path: Path, fake_gpu: FakeGpu) -> Iterator[StartLane]:
    """Start GpuLanes on the fake GPU and a fresh SQLite file, stopped after the test. A
    keyword naming a Config section replaces that section; any other goes to GpuLane.start."""
    started: list[GpuLane] = []

    def start(**given: Any) -> GpuLane:
        sections = {name: value for name, value in given.items() if name in CONFIG_SECTIONS}
        options = {name: value for name, value in given.items() if name not in CONFIG_SECTIONS}
        config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")))
        lane = GpuLane.start(
            config.replace(**sections), gpu=fake_gpu, clock=fake_gpu.clock, **options
        )
        started.append(lane)
        return lane

    yield start
    for lane in started:
        lane.stop()
