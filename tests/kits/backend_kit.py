"""Helpers shared by the backend tests: run a call, catch its failure, cancel it, and a
recording httpx.MockTransport for the wire-format tests (docs/architecture.md section 12:
the transport is the seam)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import httpx
import pytest

from actors.backends.base import Backend, CallCancelledError, CancelToken
from protocol import BackendError, BackendRequest


def run(
    backend: Backend, request: BackendRequest, cancel: CancelToken | None = None
) -> tuple[str, list[str]]:
    """The call's returned text and the chunks it streamed."""
    chunks: list[str] = []
    result = backend.complete(request, chunks.append, cancel or CancelToken())
    return result.text, chunks


def failure(backend: Backend, request: BackendRequest) -> tuple[BackendError, list[str]]:
    """The BackendError the call raised and the chunks it streamed before."""
    chunks: list[str] = []
    with pytest.raises(BackendError) as caught:
        backend.complete(request, chunks.append, CancelToken())
    return caught.value, chunks


def cancel_after(chunks: int) -> tuple[CancelToken, list[str], Callable[[str], None]]:
    """A token tripped by the chunk sink itself once ``chunks`` chunks have arrived."""
    token, seen = CancelToken(), []

    def sink(piece: str) -> None:
        seen.append(piece)
        if len(seen) == chunks:
            token.cancel()

    return token, seen, sink


def cancel_while(
    backend: Backend,
    request: BackendRequest,
    busy: Callable[[], object],
    timeout: float = 10.0,
) -> None:
    """Start ``request`` on another thread, wait until ``busy()`` returns (the server is
    working on the call), cancel it from this thread, and check that the call gives up
    with CallCancelledError.

    Use a server on a manual clock that is never advanced and a backend whose own
    time-out outlasts ``timeout``, so that nothing but the cancel can end the call (a
    time-out after a cancel is reported as the cancel too); ``timeout`` (real seconds)
    only bounds how long a broken cancel hangs the test."""
    token = CancelToken()
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            backend.complete(request, lambda _: None, token)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=call, name="cancelled-call")
    worker.start()
    try:
        busy()
    finally:
        token.cancel()
        worker.join(timeout)
    assert not worker.is_alive(), "the cancelled call did not return"
    assert isinstance(outcome[0], CallCancelledError), outcome


# --------------------------------------------------------------------- the wire


@dataclasses.dataclass(frozen=True)
class Sent:
    """One request a backend sent: its method, path, JSON body (None if empty) and headers."""

    method: str
    path: str
    body: Any
    headers: httpx.Headers


class Wire:
    """An httpx.MockTransport that keeps every request a backend sends (``sent``) and
    answers each with ``answer(sent)``; pass ``wire.transport`` as the backend's
    ``transport``."""

    def __init__(self, answer: Callable[[Sent], httpx.Response]) -> None:
        self.sent: list[Sent] = []
        self._answer = answer
        self.transport = httpx.MockTransport(self._handle)

    @property
    def last(self) -> Sent:
        """The latest request."""
        return self.sent[-1]

    def _handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        sent = Sent(request.method, request.url.path, body, request.headers)
        self.sent.append(sent)
        return self._answer(sent)


B = TypeVar("B", bound=Backend)


@contextlib.contextmanager
def on_wire(
    make: Callable[[httpx.BaseTransport], B], answer: Callable[[Sent], httpx.Response]
) -> Iterator[tuple[B, Wire]]:
    """The backend ``make`` builds on a Wire that answers with ``answer``; closed after."""
    wire = Wire(answer)
    backend = make(wire.transport)
    try:
        yield backend, wire
    finally:
        backend.close()


def json_answer(obj: Mapping[str, Any], status: int = 200) -> httpx.Response:
    """A JSON answer."""
    return httpx.Response(status, json=obj)


def ndjson_answer(lines: Iterable[Mapping[str, Any]]) -> httpx.Response:
    """An NDJSON stream (Ollama's), one object per line."""
    content = "".join(json.dumps(line) + "\n" for line in lines)
    return httpx.Response(200, content=content, headers={"Content-Type": "application/x-ndjson"})


def sse_answer(events: Iterable[tuple[str | None, Any]]) -> httpx.Response:
    """A server-sent event stream of (event name or None, data) pairs; data that is not a
    string is sent as JSON."""
    content = "".join(
        (f"event: {name}\n" if name else "")
        + f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
        for name, data in events
    )
    return httpx.Response(200, content=content, headers={"Content-Type": "text/event-stream"})
