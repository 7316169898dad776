"""Quiescence: knowing that no message is in flight, no worker busy and no timer due.

The runtime owns every mailbox, worker thread and timer facility its actors use, so it
can tell when all of them rest: every live mailbox is empty with its reader asleep, every
worker has nothing to run (or waits for something outside the system, such as a test's
next instruction), and no timer is due on its clock. From there nothing happens until
the outside world (a test, a socket, the clock) acts. :func:`quiesce` waits for that
moment, as trio's ``wait_all_tasks_blocked`` does, so tests never guess a time window.

Parts are checked one by one, so a message sent to an already checked part while the
others are looked at could fool a single pass; every send, worker submission and timer
firing counts in :data:`ACTIVITY`, and a pass counts only if that count did not move.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Protocol

__all__ = [
    "ACTIVITY",
    "Part",
    "bind_outside_waits",
    "forget",
    "is_quiet",
    "outside_wait",
    "quiesce",
    "watch",
]


class Part(Protocol):
    """Something that can be busy: a mailbox, a worker thread, a timer facility."""

    @property
    def idle(self) -> bool:
        """Whether it rests until something outside it acts."""
        ...


class _Activity:
    """A count that moves whenever work is handed anywhere (read only for change)."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        # Incremented without a lock: a lost increment still moves the count.
        self.sent = 0


ACTIVITY = _Activity()

_lock = threading.Lock()
_parts: weakref.WeakSet[Part] = weakref.WeakSet()
_outside = threading.local()


def watch(part: Part) -> None:
    """Count ``part`` in quiescence from now on (a mailbox whose reader starts, a worker)."""
    with _lock:
        _parts.add(part)


def forget(part: Part) -> None:
    """Stop counting ``part`` (its reader ended; it will never be busy again)."""
    with _lock:
        _parts.discard(part)


def _busy_parts() -> list[Part]:
    with _lock:
        parts = list(_parts)
    return [part for part in parts if not part.idle]


def is_quiet() -> bool:
    """One consistent look: every part idle, and no work handed anywhere meanwhile."""
    before = ACTIVITY.sent
    return not _busy_parts() and ACTIVITY.sent == before


def quiesce(timeout: float = 5.0) -> None:
    """Wait until every gpulane actor, worker and timer in this process rests.

    Then no message is in flight and nothing will happen until the test (or a socket,
    or the clock) acts. Raises AssertionError naming the busy parts after ``timeout``
    seconds, for a system that never settles (a busy loop, a call that never ends).
    """
    deadline = time.monotonic() + timeout
    while not is_quiet():
        if time.monotonic() > deadline:
            busy = ", ".join(sorted({repr(part) for part in _busy_parts()})) or "activity"
            raise AssertionError(f"not quiescent after {timeout:g}s; busy: {busy}")
        time.sleep(0.0005)  # a poll of live state, not a guess at how long work takes


@contextlib.contextmanager
def outside_wait(ready: Callable[[], bool]) -> Iterator[None]:
    """Mark the current worker as waiting on the outside world while this block runs.

    ``ready()`` says whether what it waits for has arrived (then the worker counts as
    busy again, before it even wakes). Outside a worker thread it does nothing.
    """
    waits: list[Callable[[], bool]] | None = getattr(_outside, "waits", None)
    if waits is None:
        yield
        return
    waits.append(ready)
    try:
        yield
    finally:
        waits.pop()


def bind_outside_waits(waits: list[Callable[[], bool]]) -> None:
    """Make ``waits`` the list :func:`outside_wait` fills on this thread (a worker's own)."""
    _outside.waits = waits
