"""Where each waiting caller's stream chunks and final outcome are delivered.

The facade owns the registry, not an actor, so a caller keeps waiting through the
restart of any actor (docs/architecture.md section 2). Chunks arrive from a slot's
worker thread; the outcome arrives from the job store once it is committed.
Asyncio consumers are woken with ``loop.call_soon_threadsafe``, never by blocking.

A chunk is a ``protocol.Chunk``: text plus thinking, tool calls and logprobs. A job whose
output so far cannot be continued exactly may start over when nobody has seen it
(docs/architecture.md section 3, "Preempt"): the slot *holds* its sink, which keeps the
chunks so far from anyone who subscribes meanwhile, then *rewinds* it (they are
forgotten) or *releases* it (the job did not start over, and they are heard after all).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from protocol import Chunk, GpulaneError, Job

__all__ = ["Sink", "SinkEvent", "SinkRegistry"]

SinkEvent = tuple[str, object]  # ("chunk", Chunk) | ("end", Job) | ("error", GpulaneError)
Listener = Callable[[SinkEvent], None]


class Sink:
    """One caller's view of one job: chunks so far, and the final job once it ends.

    Every queued job has one while its caller may wait (a detached submit too), so it is
    kept small: slots, its lists made when first needed, and the latch a waiter blocks on
    made by the first waiter (a lock held until the job ends; an Event would be a
    Condition, a lock and a deque: a kilobyte a job at depth).
    """

    __slots__ = (
        "_chunks", "_done", "_end", "_error", "_held", "_late", "_listeners", "_lock",
        "_outcome_listeners", "_watched", "job_id",
    )  # fmt: skip

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._lock = threading.Lock()
        self._chunks: list[Chunk] | None = None
        self._end: Job | None = None
        self._error: GpulaneError | None = None
        self._done: threading.Lock | None = None  # held until the job ends or cannot
        self._listeners: list[Listener] | None = None  # every event
        self._outcome_listeners: list[Listener] | None = None  # the end only
        self._watched = False  # a chunk listener has subscribed: it may have seen chunks
        self._held = False
        self._late: list[Listener] | None = None  # chunk listeners since the hold

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
        latch = None
        with self._lock:
            if self._end is None and self._error is None:
                if self._done is None:
                    self._done = threading.Lock()
                    self._done.acquire()
                latch = self._done
        if latch is not None and latch.acquire(timeout=-1 if timeout is None else max(0, timeout)):
            latch.release()  # open for every other waiter too
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
            self._open_latch()
        for listener in listeners:
            listener(("error", error))

    @property
    def watched(self) -> bool:
        """True once a chunk listener has subscribed: it may have seen every chunk."""
        return self._watched

    def chunk(self, piece: str) -> None:
        """A piece of output arrived, a Chunk or plain text (kept from the listeners while
        the sink is held)."""
        piece = piece if isinstance(piece, Chunk) else Chunk(piece)
        with self._lock:
            if self._end is not None or self._error is not None:
                return
            if self._chunks is None:
                self._chunks = []
            self._chunks.append(piece)
            if self._held or not self._listeners:
                return
            listeners = list(self._listeners)
        for listener in listeners:
            listener(("chunk", piece))

    def hold(self) -> bool:
        """Keep the chunks so far, and any that come, from listeners until :meth:`rewind`
        or :meth:`release`; False (and nothing held) if a chunk listener has subscribed."""
        with self._lock:
            if self._watched:
                return False
            self._held = True
            return True

    def rewind(self) -> None:
        """The job starts over: forget its chunks; listeners that subscribed while the sink
        was held hear the new ones."""
        with self._lock:
            self._chunks = None
            self._held = False
            self._late = None

    def release(self) -> None:
        """The job did not start over: the listeners that subscribed while the sink was held
        hear the chunks they missed. Call it once no more chunks come for the call."""
        with self._lock:
            if not self._held:
                return
            self._held = False
            late, self._late = self._late or [], None
            backlog = list(self._chunks or ())
        for listener in late:
            for piece in backlog:
                listener(("chunk", piece))

    def end(self, job: Job) -> None:
        """The job reached a terminal state (committed)."""
        with self._lock:
            if self._end is not None:
                return
            if self._error is None:  # else the latch opened when it failed
                self._open_latch()
            self._end = job
            listeners = self._take_all_listeners()
        for listener in listeners:
            listener(("end", job))

    def _open_latch(self) -> None:
        """Wake the waiters (under ``_lock``; once: the job ended or it never will)."""
        if self._done is not None:
            self._done.release()

    def _take_all_listeners(self) -> list[Listener]:
        listeners = [*(self._listeners or ()), *(self._outcome_listeners or ())]
        self._listeners = self._outcome_listeners = None
        return listeners

    def subscribe(self, listener: Listener, *, chunks: bool = True) -> None:
        """Replay what happened so far to ``listener``, then forward every new event.

        With ``chunks=False`` it hears only the end (or the error): a caller waiting
        for the outcome is not woken for every token.
        """
        with self._lock:
            shown = chunks and not self._held
            backlog: list[SinkEvent] = [("chunk", c) for c in self._chunks or ()] if shown else []
            self._watched = self._watched or chunks
            if self._end is not None:
                backlog.append(("end", self._end))
            elif self._error is not None:
                backlog.append(("error", self._error))
            elif chunks:
                self._listeners = [*(self._listeners or ()), listener]
                if self._held:
                    self._late = [*(self._late or ()), listener]
            else:
                self._outcome_listeners = [*(self._outcome_listeners or ()), listener]
        for event in backlog:
            listener(event)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop forwarding events to ``listener``."""
        with self._lock:
            for listeners in (self._listeners, self._outcome_listeners, self._late):
                if listeners is not None and listener in listeners:
                    listeners.remove(listener)

    def subscribe_async(
        self, loop: asyncio.AbstractEventLoop, *, chunks: bool = True
    ) -> tuple[asyncio.Queue[SinkEvent], Listener]:
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

    def chunk(self, job_id: str, piece: str) -> None:
        """Deliver a piece of output (a str or a Chunk), if anyone waits for it."""
        sink = self.get(job_id)
        if sink is not None:
            sink.chunk(piece)

    def hold(self, job_id: str) -> bool:
        """Hold the job's sink (:meth:`Sink.hold`); True when nobody waits on the job."""
        sink = self.get(job_id)
        return sink is None or sink.hold()

    def rewind(self, job_id: str) -> None:
        """The job starts over: its sink, if any, forgets its chunks (:meth:`Sink.rewind`)."""
        sink = self.get(job_id)
        if sink is not None:
            sink.rewind()

    def release(self, job_id: str) -> None:
        """The held job did not start over (:meth:`Sink.release`)."""
        sink = self.get(job_id)
        if sink is not None:
            sink.release()

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
