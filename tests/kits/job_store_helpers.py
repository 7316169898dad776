"""Helpers for the job store tests: job specs, state paths and a clock that can hold the store."""

from __future__ import annotations

import collections
import threading

from actors.runtime import ManualClock
from protocol import LEGAL_TRANSITIONS, JobSpec, JobState, Lane


def make_spec(
    n: int = 0,
    *,
    lane: Lane = Lane.EXTERNAL,
    caller: str = "alice",
    model: str = "llama3.2",
) -> JobSpec:
    """A small chat spec; ``n`` makes its message distinct."""
    return JobSpec.chat(
        model=model,
        messages=[{"role": "user", "content": f"question {n}"}],
        lane=lane,
        caller=caller,
        options={"num_ctx": 4096},
    )


def path_to(state: JobState) -> tuple[JobState, ...]:
    """The shortest chain of legal moves from queued to ``state``, found in LEGAL_TRANSITIONS."""
    previous: dict[JobState, JobState] = {}
    todo = collections.deque([JobState.QUEUED])
    while todo:
        here = todo.popleft()
        for nxt in sorted(LEGAL_TRANSITIONS[here], key=lambda s: s.value):
            if nxt not in previous and nxt is not JobState.QUEUED:
                previous[nxt] = here
                todo.append(nxt)
    steps: list[JobState] = []
    while state is not JobState.QUEUED:
        steps.append(state)
        state = previous[state]
    return tuple(reversed(steps))


class GatedClock(ManualClock):
    """A manual clock whose next ``now()`` after :meth:`hold` blocks until :meth:`release`.

    The store reads the clock while applying a write, so holding it keeps the store in
    the middle of a batch while a test fills its mailbox: batching becomes deterministic.
    """

    def __init__(self) -> None:
        super().__init__()
        self._armed = threading.Event()
        self.entered = threading.Event()
        self._released = threading.Event()

    def hold(self) -> None:
        """Make the next reader of the clock wait."""
        self._released.clear()
        self.entered.clear()
        self._armed.set()

    def release(self) -> None:
        """Let the held reader go on."""
        self._released.set()

    def now(self) -> float:
        if self._armed.is_set():
            self._armed.clear()
            self.entered.set()
            if not self._released.wait(10):
                raise RuntimeError("GatedClock was never released")
        return super().now()
