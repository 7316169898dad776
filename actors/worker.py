"""A single background thread that runs an actor's slow work (backend calls, polling) in order.

Actors never block their own thread on I/O (ARCHITECTURE.md section 8): they hand the
work to their worker, which reports back to the actor with a message.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["WorkerThread"]


class WorkerThread:
    """Runs submitted callables one at a time on a daemon thread, until stopped."""

    def __init__(self, name: str) -> None:
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` after everything submitted before it."""
        self._work.put(work)

    def stop(self, timeout: float) -> bool:
        """Finish the work already submitted, then end the thread; True if it did in ``timeout``."""
        self._work.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (work := self._work.get()) is not None:
            work()
