"""The embedding executor: embeddings go straight to the backend, past the GPU queue.

Embedding calls are short and the embedding model stays resident beside the chat model
(docs/architecture.md section 3), so they run concurrently on a small thread pool
(``backend.embed_workers``) instead of waiting behind a long chat call. Each call has a
cancel token, so a time-out or the lane's stop drops its connection.

An embedding for a pinned model (``residency.embedding_model`` or ``chat_model``) carries
the pin's keep_alive, read from the settings in force at each call (a reload changes it),
so that an embed that loads the model again, after the server restarted, keeps it as
the pin does instead of for Ollama's default five minutes (server/sched.go sets a
runner's duration from any request that carries keep_alive, and the default only on a
load). An embedding for any other model carries none: the server leaves it as it is.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from actors.backends.base import Backend, CancelToken
from protocol import EmbedResult, ResidencySettings, SystemStoppedError, ValidationError, freeze
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
    """Runs embedding calls on ``workers`` threads (started on first use) until stopped;
    ``residency`` gives the residency settings in force, whose pins a call keeps."""

    def __init__(
        self, backend: Backend, workers: int, residency: Callable[[], ResidencySettings]
    ) -> None:
        self._backend = backend
        self._workers = workers
        self._residency = residency
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
        """Embed ``texts`` (with the pin's keep_alive if ``model`` is pinned); after
        ``timeout`` seconds cancel the call and raise TimeoutError."""
        keep_alive = self._residency().pin_keep_alive(model)
        token = CancelToken()
        with self._lock:
            if self._stopped:
                raise SystemStoppedError("gpulane is stopped")
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._workers, thread_name_prefix="gpulane-embed"
                )
            self._calls.add(token)
            future = self._pool.submit(
                self._backend.embed, model, texts, options, token, keep_alive=keep_alive
            )
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
