"""The public test kit: importable without pytest, and its fixtures reach any suite."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

from actors.system import GpuLane
from actors.testing import FakeGpu

REPO = Path(__file__).resolve().parents[2]

HIDE_PYTEST = """
import sys
for name in ("pytest", "_pytest", "pluggy"):
    sys.modules[name] = None  # any import of them now raises ImportError
import actors.testing
from actors.testing import FakeGpu, ManualClock, quiesce, wait_until
print(FakeGpu.__name__, ManualClock.__name__, quiesce.__name__, wait_until.__name__)
"""


def test_the_test_kit_imports_in_a_process_where_pytest_cannot_be_imported() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HIDE_PYTEST],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["FakeGpu", "ManualClock", "quiesce", "wait_until"]


def test_installing_gpulane_registers_its_pytest_plugin() -> None:
    plugins = {e.name: e.value for e in importlib.metadata.entry_points(group="pytest11")}
    assert plugins.get("gpulane") == "actors.testing.pytest_plugin"


def test_the_plugins_fixtures_give_a_running_lane_on_the_fake_gpu(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    assert lane.supervision() is not None, "the lane's tree is running"
    assert lane.clock is fake_gpu.clock
