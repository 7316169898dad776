"""A caller's handle on a submitted job: wait for it (sync or asyncio) or stream its output."""

from __future__ import annotations

import asyncio
import queue
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

from actors.sinks import Sink, SinkEvent
from protocol import (
    Answer,
    Chunk,
    GpulaneError,
    Job,
    JobCancelledError,
    JobFailedError,
    JobState,
)

__all__ = ["Ticket", "outcome"]


def outcome(job: Job) -> Answer:
    """The answer of a finished job, or the error that says why there is none."""
    if job.state is JobState.SUCCEEDED:
        answer = job.answer
        return Answer() if answer is None else answer  # an empty answer is falsy: no `or`
    if job.state is JobState.CANCELLED:
        raise JobCancelledError(job.id, job.error or "cancelled")
    raise JobFailedError(job.id, job.error or "unknown error", job.attempts)


class Ticket:
    """Returned by ``GpuLane.submit`` once the job is durable.

    ``result()`` blocks, ``await ticket`` suspends, ``stream()`` yields chunks as they
    arrive. The answer is an ``Answer`` and each chunk a ``Chunk``: ``str`` subclasses
    equal to their text that also carry thinking and tool calls (docs/embedding.md).
    If the ticket is dropped (garbage-collected) or a stream is closed before the job
    ends, the job is cancelled: nobody is waiting for it any more. A detached ticket
    (``submit(..., detach=True)``) never cancels on its own.
    """

    def __init__(
        self, job: Job, sink: Sink, cancel: Callable[[str], None], *, detach: bool
    ) -> None:
        self.job_id = job.id
        self.seq = job.seq
        self.submitted = job
        self._sink = sink
        self._cancel = cancel
        self._detached = detach
        self._finalizer = None if detach else weakref.finalize(self, _drop, sink, cancel)

    def __repr__(self) -> str:
        return f"<Ticket {self.job_id} {'done' if self.done() else 'pending'}>"

    def done(self) -> bool:
        """True once the job has ended (or the system stopped before it could)."""
        return self._sink.final is not None or self._sink.error is not None

    def job(self, timeout: float | None = None) -> Job:
        """Block until the job ends and return it in its final state."""
        final = self._sink.wait(timeout)
        if final is None:
            raise TimeoutError(f"job {self.job_id} still running after {timeout}s")
        return final

    def result(self, timeout: float | None = None) -> Answer:
        """Block until the job ends; its answer, or JobFailedError / JobCancelledError.

        The Answer is the text (a str) with ``.thinking``, ``.tool_calls``, ``.logprobs``
        and ``.done_reason``. SystemStoppedError if gpulane stopped itself after a failure
        before the job ended.
        """
        return outcome(self.job(timeout))

    def cancel(self) -> None:
        """Cancel the job, queued or running."""
        self._cancel(self.job_id)

    def chunks(self, timeout: float | None = None) -> Iterator[Chunk]:
        """Yield output pieces as they arrive (blocking); ends when the job does."""
        events: queue.SimpleQueue[SinkEvent] = queue.SimpleQueue()
        self._sink.subscribe(events.put)
        finished = False
        try:
            while True:
                try:
                    kind, value = events.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(f"no output from job {self.job_id} for {timeout}s") from None
                if kind == "end":
                    finished = True
                    assert isinstance(value, Job)
                    outcome(value)
                    return
                if kind == "error":
                    finished = True
                    assert isinstance(value, GpulaneError)
                    raise value
                assert isinstance(value, Chunk)
                yield value
        finally:
            self._sink.unsubscribe(events.put)
            if not finished:
                self._went_away()

    def __await__(self) -> Generator[Any, None, Answer]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> Answer:
        loop = asyncio.get_running_loop()
        events, listener = self._sink.subscribe_async(loop, chunks=False)
        try:
            kind, value = await events.get()
            if kind == "end":
                assert isinstance(value, Job)
                return outcome(value)
            assert isinstance(value, GpulaneError)
            raise value
        except asyncio.CancelledError:
            self._went_away()
            raise
        finally:
            self._sink.unsubscribe(listener)

    async def stream(self) -> AsyncIterator[Chunk]:
        """Yield output pieces as they arrive, on the running event loop."""
        loop = asyncio.get_running_loop()
        events, listener = self._sink.subscribe_async(loop)
        finished = False
        try:
            while True:
                kind, value = await events.get()
                if kind == "end":
                    finished = True
                    assert isinstance(value, Job)
                    outcome(value)
                    return
                if kind == "error":
                    finished = True
                    assert isinstance(value, GpulaneError)
                    raise value
                assert isinstance(value, Chunk)
                yield value
        finally:
            self._sink.unsubscribe(listener)
            if not finished:
                self._went_away()

    def _went_away(self) -> None:
        if not self._detached and self._sink.final is None:
            self._cancel(self.job_id)


def _drop(sink: Sink, cancel: Callable[[str], None]) -> None:
    """The ticket was garbage-collected: cancel the job if it has not ended."""
    if sink.final is None:
        cancel(sink.job_id)
