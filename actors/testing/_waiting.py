"""Waiting in tests without guessing at time: for a condition, or for the system to rest."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``condition`` every few milliseconds until it holds; AssertionError after
    ``timeout`` seconds. For state that threads outside gpulane's actors change (a
    server, a subprocess, an event loop), which ``quiesce`` cannot see."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what or f"condition not reached in {timeout:g}s"
        time.sleep(0.002)
