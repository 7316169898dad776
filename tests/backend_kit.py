"""Helpers shared by the backend tests: run a call, catch its failure, cancel it mid-stream."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from actors.backends.base import Backend, CancelToken
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
