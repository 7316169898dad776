"""Where each waiting caller's stream chunks and final outcome are delivered.

The facade owns the registry, not an actor, so a caller keeps waiting through the
restart of any actor (docs/architecture.md section 2). Chunks arrive from a slot's
worker thread; the outcome arrives from the job store once it is committed.
Asyncio consumers are woken with ``loop.call_soon_threadsafe``, never by blocking.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from protocol import GpulaneError, Job

__all__ = ["Sink", "SinkEvent", "SinkRegistry"]

SinkEvent = tuple[str, object]  # ("chunk", text) | ("end", Job) | ("error", GpulaneError)


class Sink:
    """One caller's view of one job: chunks so far, and the final job once it ends."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._lock = threading.Lock()
        self._chunks: list[str] = []
        self._end: Job | None = None
        self._error: GpulaneError | None = None
        self._done = threading.Event()
        self._listeners: list[Callable[[SinkEvent], None]] = []  # every event
        self._outcome_listeners: list[Callable[[SinkEvent], None]] = []  # the end only

    @property
    def final(self) -> Job | None:
        """The job in its terminal state, once it has ended."""
        return self._end

    @property
    def error(self) -> GpulaneError | None:
        """Why nobody will ever learn how the job ended (the system stopped), if so."""
        return self._error

    def wait(self, timeout: float | None) -> Job | None:
        """Block until the job ends (or ``timeout``); returns the final job or None.

        Raises the sink's error if the system stopped for good before the job ended.
        """
        self._done.wait(timeout)
        if self._end is None and self._error is not None:
            raise self._error
        return self._end

    def fail(self, error: GpulaneError) -> None:
        """No outcome will come (the system stopped): wake the waiters with ``error``."""
        with self._lock:
            if self._end is not None or self._error is not None:
                return
            self._error = error
            listeners = self._take_all_listeners()
        self._done.set()
        for listener in listeners:
            listener(("error", error))

    def chunk(self, text: str) -> None:
        """A piece of output arrived."""
        with self._lock:
            if self._end is not None or self._error is not None:
                return
            self._chunks.append(text)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(("chunk", text))

    def end(self, job: Job) -> None:
        """The job reached a terminal state (committed)."""
        with self._lock:
            if self._end is not None:
                return
            self._end = job
            listeners = self._take_all_listeners()
        self._done.set()
        for listener in listeners:
            listener(("end", job))

    def _take_all_listeners(self) -> list[Callable[[SinkEvent], None]]:
        listeners = self._listeners + self._outcome_listeners
        self._listeners, self._outcome_listeners = [], []
        return listeners

    def subscribe(self, listener: Callable[[SinkEvent], None], *, chunks: bool = True) -> None:
        """Replay what happened so far to ``listener``, then forward every new event.

        With ``chunks=False`` it hears only the end (or the error): a caller waiting
        for the outcome is not woken for every token.
        """
        with self._lock:
            backlog: list[SinkEvent] = [("chunk", c) for c in self._chunks] if chunks else []
            if self._end is not None:
                backlog.append(("end", self._end))
            elif self._error is not None:
                backlog.append(("error", self._error))
            else:
                (self._listeners if chunks else self._outcome_listeners).append(listener)
        for event in backlog:
            listener(event)

    def unsubscribe(self, listener: Callable[[SinkEvent], None]) -> None:
        """Stop forwarding events to ``listener``."""
        with self._lock:
            for listeners in (self._listeners, self._outcome_listeners):
                if listener in listeners:
                    listeners.remove(listener)

    def subscribe_async(
        self, loop: asyncio.AbstractEventLoop, *, chunks: bool = True
    ) -> tuple[asyncio.Queue[SinkEvent], Callable[[SinkEvent], None]]:
        """An asyncio queue fed from any thread via ``loop.call_soon_threadsafe``."""
        events: asyncio.Queue[SinkEvent] = asyncio.Queue()

        def forward(event: SinkEvent) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        self.subscribe(forward, chunks=chunks)
        return events, forward


class SinkRegistry:
    """Thread-safe map from job id to its Sink."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sinks: dict[str, Sink] = {}

    def register(self, job_id: str) -> Sink:
        """The sink for ``job_id``, created if new."""
        with self._lock:
            sink = self._sinks.get(job_id)
            if sink is None:
                sink = self._sinks[job_id] = Sink(job_id)
            return sink

    def get(self, job_id: str) -> Sink | None:
        """The sink for ``job_id`` if a caller is waiting on it."""
        with self._lock:
            return self._sinks.get(job_id)

    def discard(self, job_id: str) -> None:
        """Forget the sink (its caller went away)."""
        with self._lock:
            self._sinks.pop(job_id, None)

    def chunk(self, job_id: str, text: str) -> None:
        """Deliver a piece of output, if anyone waits for it."""
        sink = self.get(job_id)
        if sink is not None:
            sink.chunk(text)

    def committed(self, job: Job) -> None:
        """The store committed a change to ``job``; a terminal one ends its sink."""
        if not job.state.is_terminal:
            return
        with self._lock:
            sink = self._sinks.pop(job.id, None)
        if sink is not None:
            sink.end(job)

    def fail_all(self, error: GpulaneError) -> int:
        """The system stopped for good: every waiting caller gets ``error``; returns how many."""
        with self._lock:
            sinks = list(self._sinks.values())
            self._sinks.clear()
        for sink in sinks:
            sink.fail(error)
        return len(sinks)

    def pending(self) -> int:
        """How many callers are waiting."""
        with self._lock:
            return len(self._sinks)
