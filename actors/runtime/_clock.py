"""Time as gpulane sees it: a Clock protocol, the system clock and a manual clock for tests.

Every actor takes its time from an injected Clock, so tests advance time by hand
instead of sleeping (docs/architecture.md section 7).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time. ``now`` is epoch seconds (stored in the database)."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def wait(self, condition: threading.Condition, deadline: float | None) -> None:
        """Wait on ``condition`` (held by the caller) until notified or ``deadline`` passes."""
        ...

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever time jumps (manual clocks); system clocks never do."""
        ...

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def wait(self, condition: threading.Condition, deadline: float | None) -> None:
        """Wait until notified or until the wall clock reaches ``deadline``."""
        timeout = None if deadline is None else max(0.0, deadline - time.time())
        condition.wait(timeout)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Real time never jumps, so there is nothing to tell."""

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Nothing was subscribed."""


class ManualClock:
    """A clock that moves only when a test calls :meth:`advance` (like trio's MockClock).

    Starts at 2026-01-05 12:00 local time (a Monday noon) unless told otherwise.
    """

    DEFAULT_START = time.mktime((2026, 1, 5, 12, 0, 0, 0, 0, -1))

    def __init__(self, start: float | None = None) -> None:
        self._now = self.DEFAULT_START if start is None else start
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        """The current manual time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and wake everything waiting on this clock."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += seconds
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def set(self, epoch_seconds: float) -> None:
        """Jump to an absolute time, which must not be in the past."""
        self.advance(epoch_seconds - self.now())

    def wait(self, condition: threading.Condition, deadline: float | None) -> None:
        """Wait until notified; :meth:`advance` notifies every subscriber."""
        if deadline is not None and deadline <= self.now():
            return
        condition.wait()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every :meth:`advance`."""
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (no error if it was not subscribed)."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
