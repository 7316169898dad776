"""The documented examples run as real programs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_asyncio_host_example_submits_streams_and_exits_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "asyncio_host.py")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "bot streamed" in done.stdout and "visitor got" in done.stdout
