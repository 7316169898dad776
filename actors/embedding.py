"""The embedding executor: embeddings go straight to the backend, past the GPU queue.

Embedding calls are short and the embedding model stays resident beside the chat model
(docs/architecture.md section 3), so they run concurrently on a small thread pool
(``backend.embed_workers``) instead of waiting behind a long chat call. Each call has a
cancel token, so a time-out or the lane's stop drops its connection.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from actors.backends.base import Backend, CancelToken
from protocol import EmbedResult, SystemStoppedError, ValidationError, freeze
from protocol.spec import check_json_data, check_text

__all__ = ["EmbeddingExecutor", "embed_request"]

log = structlog.get_logger(__name__)


def embed_request(
    model: str, inputs: str | Iterable[str], options: Mapping[str, Any] | None
) -> tuple[tuple[str, ...], Mapping[str, Any]]:
    """The texts and frozen options of an embedding request, validated like a JobSpec."""
    texts = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValidationError("inputs", "must be a string or a non-empty list of strings")
    for index, text in enumerate(texts):
        check_text(f"inputs[{index}]", text)
    if not isinstance(model, str) or not model.strip():
        raise ValidationError("model", "must be a non-empty string")
    try:
        frozen = freeze(dict(options or {}))
    except TypeError as exc:
        raise ValidationError("options", str(exc)) from None
    check_json_data("options", frozen)
    return texts, frozen


class EmbeddingExecutor:
    """Runs embedding calls on ``workers`` threads (started on first use) until stopped."""

    def __init__(self, backend: Backend, workers: int) -> None:
        self._backend = backend
        self._workers = workers
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._calls: set[CancelToken] = set()
        self._stopped = False

    def embed(
        self,
        model: str,
        texts: tuple[str, ...],
        options: Mapping[str, Any],
        timeout: float | None,
    ) -> EmbedResult:
        """Embed ``texts``; after ``timeout`` seconds cancel the call and raise TimeoutError."""
        token = CancelToken()
        with self._lock:
            if self._stopped:
                raise SystemStoppedError("gpulane is stopped")
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._workers, thread_name_prefix="gpulane-embed"
                )
            self._calls.add(token)
            future = self._pool.submit(self._backend.embed, model, texts, options, token)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            token.cancel()
            raise TimeoutError(f"embedding with {model} took over {timeout}s") from None
        finally:
            with self._lock:
                self._calls.discard(token)

    def stop(self) -> None:
        """Cancel the calls in flight and join the pool; later calls raise SystemStoppedError."""
        with self._lock:
            self._stopped = True
            pending = list(self._calls)
            pool = self._pool
        for token in pending:
            token.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
