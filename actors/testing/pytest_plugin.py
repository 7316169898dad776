"""pytest fixtures for testing a bot against gpulane: registered by installing gpulane.

setup.cfg names this module under the ``pytest11`` entry point, so any suite run in an
environment where gpulane is installed gets ``manual_clock``, ``fake_gpu`` and ``lane``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.config import Config
from actors.system import GpuLane
from actors.testing import FakeGpu, ManualClock
from protocol import StoreSettings

__all__ = ["fake_gpu", "lane", "manual_clock"]


@pytest.fixture
def manual_clock() -> ManualClock:
    """A clock that moves only when the test calls ``advance``."""
    return ManualClock()


@pytest.fixture
def fake_gpu(manual_clock: ManualClock) -> FakeGpu:
    """A FakeGpu on the manual clock."""
    return FakeGpu(manual_clock)


@pytest.fixture
def lane(tmp_path: Path, fake_gpu: FakeGpu) -> Iterator[GpuLane]:
    """A GpuLane on a fresh SQLite file, the fake GPU and the manual clock; stopped after."""
    config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")))
    started = GpuLane.start(config, gpu=fake_gpu, clock=fake_gpu.clock)
    try:
        yield started
    finally:
        started.stop()
