"""The mailbox every gpulane actor reads: a deque and one raw lock as its wake-up signal.

pykka's default inbox is a ``queue.Queue``, whose put and get each take a mutex and a
Condition written in Python. An actor's mailbox has many senders but one reader, so a
deque (atomic appends and pops) and a lock that the reader sleeps on when the deque is
empty are enough, and a few microseconds of CPU cheaper per message
(tests/benchmarks/bench_ask.py measures an ask round trip). The one reader may also look
at the head without taking it, which the batching inbox builds on.

The mailbox also tells quiescence (``_quiescence``) what it needs: whether anything waits
in it, whether its reader sleeps for want of a message, and (through the activity count)
that a message was sent at all.
"""

from __future__ import annotations

import _thread
import collections
import queue
from typing import Any

from actors.runtime import _quiescence

__all__ = ["Mailbox"]


class Mailbox:
    """A many-senders, one-reader queue with the part of ``queue.Queue``'s API pykka uses."""

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        # Held while the reader has nothing to wait for; a sender releases it to wake
        # the reader. At most one wake-up is pending, and the reader re-checks the deque
        # after every one, so none is lost and extra ones only cost a loop.
        self._wake = _thread.allocate_lock()
        self._wake.acquire()
        self._reader_asleep = False  # the reader waits in get() with nothing to take

    def put(self, item: Any) -> None:
        """Append ``item`` and wake the reader if it sleeps."""
        _quiescence.ACTIVITY.sent += 1
        self._items.append(item)
        if self._wake.locked():
            try:
                self._wake.release()
            except RuntimeError:  # another sender released it first: the reader wakes once
                pass

    def get(self) -> Any:
        """The oldest item, waiting for one if there is none (reader only)."""
        items = self._items
        while not items:
            self._reader_asleep = True
            self._wake.acquire()
            self._reader_asleep = False
        return items.popleft()

    def get_nowait(self) -> Any:
        """The oldest item, or ``queue.Empty`` (reader only)."""
        try:
            return self._items.popleft()
        except IndexError:
            raise queue.Empty from None

    def empty(self) -> bool:
        """Whether nothing waits."""
        return not self._items

    def qsize(self) -> int:
        """How many items wait."""
        return len(self._items)

    @property
    def idle(self) -> bool:
        """Whether nothing waits and the reader sleeps for want of a message."""
        return self._reader_asleep and not self._items

    @property
    def waiting(self) -> collections.deque[Any]:
        """The items in order, for the reader to look at (and pop from the left)."""
        return self._items
