"""One job's output feeding one HTTP response, for any wire format.

The response status is decided only once the job has produced its first piece of text
or ended: an error before any output is a real HTTP error (as Ollama answers it), an
error after output began is the format's in-band error. If the client goes away at any
point the job is cancelled, so no GPU time is spent on an answer nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Request

from actors.gateway.core import Gateway, cancel_on_disconnect, final_job
from actors.ticket import Ticket
from protocol import Job, JobCancelledError, JobFailedError

__all__ = ["JobStream", "wait_for_job"]


class JobStream:
    """Pieces of a job's output, after :meth:`start` has waited for the first one."""

    def __init__(self, request: Request, gateway: Gateway, ticket: Ticket) -> None:
        self.ticket = ticket
        self._request = request
        self._gateway = gateway
        self._chunks = ticket.stream()
        self._first: str | None = None
        self._ended = False
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> Job | None:
        """Wait for the first piece; returns the job instead if it ended before any output."""
        self._watcher = asyncio.get_running_loop().create_task(
            cancel_on_disconnect(self._request, self.ticket)
        )
        try:
            self._first = await anext(self._chunks)
        except (StopAsyncIteration, JobFailedError, JobCancelledError):
            self._ended = True
            job = final_job(self.ticket)
            await self.close()
            return job
        except BaseException:
            await self.close()
            raise
        return None

    async def pieces(self) -> AsyncIterator[str]:
        """The first piece and every later one; raises JobFailedError/JobCancelledError."""
        try:
            if self._first is not None:
                yield self._first
            if not self._ended:
                async for piece in self._chunks:
                    yield piece
        finally:
            await self.close()

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
        await self._chunks.aclose()  # type: ignore[attr-defined]
        if self.ticket.done():
            self._gateway.metrics.job_ended(final_job(self.ticket))


async def wait_for_job(request: Request, gateway: Gateway, ticket: Ticket) -> Job:
    """Wait (without blocking the loop) for a job to end; cancel it if the client leaves."""
    watcher = asyncio.get_running_loop().create_task(cancel_on_disconnect(request, ticket))
    try:
        with contextlib.suppress(JobFailedError, JobCancelledError):
            await ticket
    finally:
        watcher.cancel()
    job = final_job(ticket)
    gateway.metrics.job_ended(job)
    return job
