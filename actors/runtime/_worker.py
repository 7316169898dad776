"""A single background thread that runs an actor's slow work (backend calls, polling) in order.

Actors never block their own thread on I/O (docs/architecture.md section 8): they hand the
work to their worker, which reports back to the actor with a message. The worker counts
in quiescence: busy while it has work, unless that work waits on the outside world
(``outside_wait``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from actors.runtime import _quiescence

__all__ = ["WorkerThread"]


class WorkerThread:
    """Runs submitted callables one at a time on a daemon thread, until stopped."""

    def __init__(self, name: str) -> None:
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._pending = 0  # submitted and not yet finished; guarded by _count_lock
        self._count_lock = threading.Lock()
        self._outside_waits: list[Callable[[], bool]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        _quiescence.watch(self)
        self._thread.start()

    def __repr__(self) -> str:
        return f"WorkerThread({self._thread.name})"

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` after everything submitted before it."""
        with self._count_lock:
            self._pending += 1
        _quiescence.ACTIVITY.sent += 1
        self._work.put(work)

    def stop(self, timeout: float) -> bool:
        """Finish the work already submitted, then end the thread; True if it did in ``timeout``."""
        self._work.put(None)
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:
            _quiescence.forget(self)
        return stopped

    @property
    def idle(self) -> bool:
        """Nothing to run, or the work in hand waits on the outside world."""
        if not self._pending:
            return True
        try:
            ready = self._outside_waits[-1]
        except IndexError:  # no outside wait (or it just ended)
            return False
        return not ready()

    def _run(self) -> None:
        _quiescence.bind_outside_waits(self._outside_waits)
        while (work := self._work.get()) is not None:
            try:
                work()
            finally:
                with self._count_lock:
                    self._pending -= 1
