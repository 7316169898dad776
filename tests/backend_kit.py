"""Helpers shared by the backend tests: run a call, catch its failure, cancel it mid-stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

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


def seconds_until_cancelled(
    backend: Backend, request: BackendRequest, after: float = 0.05
) -> float:
    """Start ``request``, cancel it from another thread ``after`` seconds in, and return how
    long the call took to give up (it must raise CallCancelledError)."""
    token = CancelToken()
    timer = threading.Timer(after, token.cancel)
    began = time.monotonic()
    timer.start()
    try:
        with pytest.raises(CallCancelledError):
            backend.complete(request, lambda _: None, token)
    finally:
        timer.join()
    return time.monotonic() - began
