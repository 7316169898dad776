"""The backend seam: what a GPU slot drives (docs/architecture.md section 9).

Calls are blocking and run on a worker thread, never on an actor's thread. Each takes
a CancelToken; tripping it must make the call return promptly by raising
CallCancelledError (an HTTP backend closes its stream, which makes Ollama stop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from protocol import BackendRequest, BackendResult, EmbedResult, LoadedModel

__all__ = ["Backend", "CallCancelledError", "CancelToken", "ChunkSink"]

ChunkSink = Callable[[str], None]


class CallCancelledError(Exception):
    """A backend call stopped because its cancel token was tripped."""


class CancelToken:
    """A one-shot, thread-safe cancellation flag with callbacks (e.g. close an HTTP stream)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._event.is_set()

    def cancel(self) -> None:
        """Trip the token and run the callbacks once, on the calling thread."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the token trips (at once if it already has)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def wait(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds for the token to trip; True if it did."""
        return self._event.wait(timeout)

    def raise_if_cancelled(self) -> None:
        """Raise CallCancelledError if the token has tripped."""
        if self._event.is_set():
            raise CallCancelledError


@runtime_checkable
class Backend(Protocol):
    """A model server: Ollama, an OpenAI-compatible server, a cloud API or a simulation.

    ``complete`` streams each new piece of text to ``on_chunk`` as it arrives and
    returns the whole new text; failures raise ``protocol.BackendError`` with
    ``transient`` set as docs/architecture.md section 3 classifies them.
    """

    name: str

    def complete(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken
    ) -> BackendResult:
        """Run one chat or generate call."""
        ...

    def embed(
        self, model: str, inputs: tuple[str, ...], options: Mapping[str, Any], cancel: CancelToken
    ) -> EmbedResult:
        """Embed each input (bypasses the GPU queue)."""
        ...

    def loaded_models(self) -> tuple[LoadedModel, ...]:
        """The models resident now (``/api/ps``)."""
        ...

    def load(self, model: str, keep_alive: str | float | None = None) -> None:
        """Load ``model`` and keep it resident for ``keep_alive``."""
        ...

    def unload(self, model: str) -> None:
        """Evict ``model`` now."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...
