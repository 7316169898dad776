"""One job's output feeding one HTTP response, for any wire format, with the heartbeats that
keep a waiting client's connection open (docs/gateway.md, "Waiting clients").

The response status is decided once the job has produced its first piece of text or
ended: an error before any output is a real HTTP error (as Ollama answers it), an error
after output began is the format's in-band error. A job still silent after
``gateway.heartbeat_s`` (queued behind others, its model loading) commits the response
as a 200 instead, so that a proxy's idle timeout does not cut the client off: from then
on, whenever nothing was sent for that long, a heartbeat in a form the format's client
libraries ignore says that the job waits and where it stands (an SSE comment, an empty
NDJSON piece, whitespace before a JSON body). If the client goes away at any point the
job is cancelled, so no GPU time is spent on an answer nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from actors.gateway.core import Gateway, cancel_on_disconnect, final_job
from actors.ticket import Ticket
from protocol import Chunk, Job, JobCancelledError, JobFailedError, JobState

__all__ = [
    "JOB_HEADER",
    "Heartbeat",
    "JobStream",
    "Waiting",
    "answer_when_done",
    "sse_comment",
]

JOB_HEADER = "X-Gpulane-Job"  # the job behind a response (its /jobs/{id}/events tell more)
JSON_WHITESPACE = b" "  # JSON allows whitespace before a value: a heartbeat for JSON bodies

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Waiting:
    """Where a silent job stands, for a heartbeat: its state and, while it is queued, the
    number of jobs ahead of it (the estimate ``/jobs/{id}/events`` reports as position)."""

    state: JobState
    position: int | None = None

    def __str__(self) -> str:
        if self.position is None:
            return self.state.value
        return f"{self.state.value}, position {self.position}"

    def to_dict(self) -> dict[str, Any]:
        """``{"state": "queued", "position": 3}`` (no position unless queued)."""
        out: dict[str, Any] = {"state": self.state.value}
        if self.position is not None:
            out["position"] = self.position
        return out


Heartbeat = Callable[[Waiting], bytes]
"""The bytes one heartbeat is in a wire format, given where the job stands."""


def sse_comment(waiting: Waiting) -> bytes:
    """A heartbeat for server-sent events: a comment line (``: queued, position 3``), which
    every SSE parser skips (the WHATWG event-stream rules, openai-python's ``SSEDecoder``)."""
    return f": {waiting}\n\n".encode()


async def _waiting(gateway: Gateway, job_id: str) -> Waiting:
    job = await gateway.call(gateway.lane.get, job_id)
    if job.state is not JobState.QUEUED:
        return Waiting(job.state)
    return Waiting(job.state, await gateway.queue_position(job))


async def _settle(task: asyncio.Future[T]) -> None:
    """Cancel ``task`` unless it is done, and wait until it has stopped (its outcome is
    dropped: whoever settles it no longer wants it)."""
    if not task.done():
        task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()


async def _beating(
    source: AsyncIterator[bytes], interval: float, beat: Callable[[], Awaitable[bytes]]
) -> AsyncIterator[bytes]:
    """``source``'s bytes, with ``await beat()`` in between whenever ``source`` has been
    silent for ``interval`` seconds (its pending step is awaited, never cancelled, so the
    job's stream is not disturbed)."""
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield await beat()
                continue
            step, pending = pending, None
            try:
                chunk = step.result()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        if pending is not None:
            await _settle(pending)
        if isinstance(source, AsyncGenerator):
            await source.aclose()


class JobStream:
    """Pieces of a job's output, after :meth:`start` has waited for the first one."""

    def __init__(self, request: Request, gateway: Gateway, ticket: Ticket) -> None:
        self.ticket = ticket
        self._request = request
        self._gateway = gateway
        self._chunks = ticket.stream()
        self._first: Chunk | None = None
        self._next: asyncio.Future[Chunk] | None = None  # the first piece, still to come
        self._ended = False
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> Job | None:
        """Wait for the first piece; returns the job instead if it ended before any output.

        None means the response may begin: the first piece came, or ``gateway.heartbeat_s``
        passed without it (then :meth:`pieces` waits for it while :meth:`respond` beats).
        """
        self._watcher = asyncio.get_running_loop().create_task(
            cancel_on_disconnect(self._request, self.ticket)
        )
        first = asyncio.ensure_future(anext(self._chunks))
        try:
            done, _ = await asyncio.wait(
                {first}, timeout=self._gateway.settings.heartbeat_s or None
            )
        except BaseException:
            await _settle(first)
            await self.close()
            raise
        if not done:
            self._next = first
            return None
        try:
            self._first = first.result()
        except (StopAsyncIteration, JobFailedError, JobCancelledError):
            self._ended = True
            job = final_job(self.ticket)
            await self.close()
            return job
        except BaseException:
            await self.close()
            raise
        return None

    async def pieces(self) -> AsyncIterator[Chunk]:
        """The first piece and every later one; raises JobFailedError/JobCancelledError."""
        try:
            if self._next is not None:
                try:
                    self._first = await self._next
                except StopAsyncIteration:
                    self._ended = True
                self._next = None
            if self._first is not None:
                yield self._first
            if not self._ended:
                async for piece in self._chunks:
                    yield piece
        finally:
            await self.close()

    def respond(
        self, body: AsyncIterator[bytes], media_type: str, heartbeat: Heartbeat
    ) -> StreamingResponse:
        """The streaming response of ``body``, with a ``heartbeat`` whenever nothing was sent
        for ``gateway.heartbeat_s`` (never when it is 0)."""
        interval = self._gateway.settings.heartbeat_s

        async def beat() -> bytes:
            self._gateway.metrics.heartbeat()
            return heartbeat(await _waiting(self._gateway, self.ticket.job_id))

        content = _beating(body, interval, beat) if interval else body
        return StreamingResponse(
            content, media_type=media_type, headers={JOB_HEADER: self.ticket.job_id}
        )

    @property
    def final(self) -> Job:
        """The ended job (once :meth:`pieces` is exhausted or raised)."""
        return final_job(self.ticket)

    async def close(self) -> None:
        """Stop watching the client; cancel the job if it has not ended; record metrics."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._next is not None:
            await _settle(self._next)
        await self._chunks.aclose()  # type: ignore[attr-defined]
        if self.ticket.done():
            self._gateway.metrics.job_ended(final_job(self.ticket))


async def _job_end(ticket: Ticket) -> None:
    with contextlib.suppress(JobFailedError, JobCancelledError):
        await ticket


async def answer_when_done(
    request: Request, gateway: Gateway, ticket: Ticket, answer: Callable[[Job], Response]
) -> Response:
    """Wait (without blocking the loop) for the job to end and ``answer`` it; cancel the job
    if the client leaves.

    Past ``gateway.heartbeat_s`` the answer becomes a 200 whose body begins with one space
    per silent interval: JSON allows whitespace before a value, so every JSON parser reads
    the answer that follows (an error answer too, but then under the status 200).
    """
    watcher = asyncio.get_running_loop().create_task(cancel_on_disconnect(request, ticket))
    ended = asyncio.ensure_future(_job_end(ticket))
    interval = gateway.settings.heartbeat_s
    try:
        done, _ = await asyncio.wait({ended}, timeout=interval or None)
    except BaseException:
        watcher.cancel()
        await _settle(ended)
        raise

    def ended_job() -> Job:
        job = final_job(ticket)
        gateway.metrics.job_ended(job)
        return job

    if done:
        watcher.cancel()
        ended.result()  # raises what is not the job's own end (gpulane stopping)
        response = answer(ended_job())
        response.headers[JOB_HEADER] = ticket.job_id
        return response

    async def body() -> AsyncIterator[bytes]:
        try:
            while not ended.done():
                gateway.metrics.heartbeat()
                yield JSON_WHITESPACE
                await asyncio.wait({ended}, timeout=interval)
            ended.result()
            yield bytes(answer(ended_job()).body)
        finally:
            watcher.cancel()
            await _settle(ended)

    return StreamingResponse(
        body(), media_type="application/json", headers={JOB_HEADER: ticket.job_id}
    )
