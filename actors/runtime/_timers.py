"""One timer facility for delayed messages (back-off, time-outs, polling), on an injected clock.

With the system clock a single thread waits for the next deadline. With a manual
clock, :meth:`ManualClock.advance` fires every due timer before it returns, so a
test that advances time finds the resulting messages already in the mailboxes.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from typing import Any, Protocol

import pykka
import structlog

from actors.runtime import _quiescence
from actors.runtime._clock import Clock

__all__ = ["Tellable", "TimerHandle", "Timers"]

log = structlog.get_logger(__name__)


class Tellable(Protocol):
    """Anything a message can be told to: a pykka ActorRef or a supervisor's stable ref."""

    def tell(self, message: Any) -> None:
        """Deliver ``message`` without waiting."""
        ...


class TimerHandle:
    """A scheduled timer; :meth:`cancel` it if it is no longer wanted."""

    __slots__ = ("_cancelled", "deadline")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._cancelled = False

    def cancel(self) -> None:
        """Make sure the timer never fires (a no-op once it has)."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancelled


class Timers:
    """Fires callbacks at clock deadlines from one thread; start with :meth:`start`."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, TimerHandle, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._stopped = False
        self._firing = 0  # batches of due callbacks taken and not yet run; under _condition
        self._thread = threading.Thread(target=self._run, name="gpulane-timers", daemon=True)
        clock.subscribe(self._on_clock_jump)

    def start(self) -> Timers:
        """Start the timer thread; returns self."""
        _quiescence.watch(self)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Drop every pending timer and join the thread."""
        self.clock.unsubscribe(self._on_clock_jump)
        with self._condition:
            self._stopped = True
            self._heap.clear()
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        _quiescence.forget(self)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` (quick, non-blocking) once ``delay_s`` seconds have passed."""
        return self.call_at(self.clock.now() + max(0.0, delay_s), callback)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once the clock reaches ``deadline`` (epoch seconds)."""
        handle = TimerHandle(deadline)
        with self._condition:
            if self._stopped:
                return handle
            heapq.heappush(self._heap, (deadline, next(self._counter), handle, callback))
            self._condition.notify()
        return handle

    def send_after(self, delay_s: float, target: Tellable, message: Any) -> TimerHandle:
        """Tell ``message`` to ``target`` after ``delay_s`` seconds; a dead target is skipped."""
        return self.call_later(delay_s, lambda: _tell_quietly(target, message))

    def send_at(self, deadline: float, target: Tellable, message: Any) -> TimerHandle:
        """Tell ``message`` to ``target`` when the clock reaches ``deadline``."""
        return self.call_at(deadline, lambda: _tell_quietly(target, message))

    @property
    def pending(self) -> int:
        """How many timers are waiting (cancelled ones included until their deadline)."""
        with self._condition:
            return len(self._heap)

    @property
    def idle(self) -> bool:
        """No callback running and none due on the clock (quiescence)."""
        with self._condition:
            if self._firing:
                return False
            return not self._heap or self._heap[0][0] > self.clock.now()

    def _take_due(self) -> list[Callable[[], None]]:
        now = self.clock.now()
        due: list[Callable[[], None]] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, handle, callback = heapq.heappop(self._heap)
            if not handle.cancelled:
                handle.cancel()
                due.append(callback)
        return due

    def _run(self) -> None:
        while True:
            with self._condition:
                if self._stopped:
                    return
                due = self._take_due()
                if not due:
                    deadline = self._heap[0][0] if self._heap else None
                    self.clock.wait(self._condition, deadline)
                    continue
                self._firing += 1
            self._fire(due)

    def _on_clock_jump(self) -> None:
        with self._condition:
            due = [] if self._stopped else self._take_due()
            self._firing += 1
            self._condition.notify_all()
        self._fire(due)

    def _fire(self, due: list[Callable[[], None]]) -> None:
        """Run the callbacks taken as due; quiescence counts them busy until they return."""
        _quiescence.ACTIVITY.sent += 1
        try:
            _run_all(due)
        finally:
            with self._condition:
                self._firing -= 1


def _run_all(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("timer_callback_failed")


def _tell_quietly(target: Tellable, message: Any) -> None:
    try:
        target.tell(message)
    except pykka.ActorDeadError:
        log.debug("timer_target_gone", message=type(message).__name__)
