"""The backend seam: what a GPU slot drives (docs/architecture.md section 9).

Calls are blocking and run on a worker thread, never on an actor's thread. Each takes
a CancelToken; tripping it must make the call return promptly by raising
CallCancelledError (an HTTP backend closes its stream, which makes Ollama stop).

A backend says which request features (``protocol.REQUEST_FEATURES``: tools, think,
format, images, ...) it carries with a ``carries`` attribute; :func:`refuse_unsupported`
refuses a request that uses any other, naming the field, so nothing a caller asked for
is dropped in silence. A backend that carries a feature only with some values or in
some combinations (a translated API) also has ``check_request(request)``, which raises
ValidationError naming the field it cannot carry in this request. The facade checks at
submit time and the slot before each call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from protocol import (
    REQUEST_FEATURES,
    BackendRequest,
    BackendResult,
    EmbedResult,
    LoadedModel,
    ValidationError,
)

__all__ = [
    "BASIC_FEATURES",
    "Backend",
    "CallCancelledError",
    "CancelToken",
    "ChunkSink",
    "carried_features",
    "refuse_unsupported",
]

# A piece of output: plain text, or a ``protocol.Chunk`` (a str that also carries
# thinking, tool calls and logprobs). Backends that produce only text pass plain strs.
ChunkSink = Callable[[str], None]

# What a backend that declares no ``carries`` carries: the features BackendRequest had
# before #14 (a JSON format or schema, images on chat messages).
BASIC_FEATURES = frozenset({"format", "messages.images"})


def carried_features(backend: object) -> frozenset[str]:
    """The request features ``backend`` carries (see the module docstring)."""
    declared = getattr(backend, "carries", None)
    return BASIC_FEATURES if declared is None else frozenset(declared)


def refuse_unsupported(backend: object, request: BackendRequest) -> None:
    """Raise ValidationError naming the first field of ``request`` that ``backend`` cannot
    carry (the gateway answers it with a 400)."""
    carried = carried_features(backend)
    for feature, field in request.features():
        if feature not in carried:
            name = getattr(backend, "name", type(backend).__name__)
            raise ValidationError(
                field,
                f"the {name} backend cannot carry it, and gpulane does not drop what a "
                "caller asked for",
                allowed=sorted(carried & REQUEST_FEATURES) or "none of the optional fields",
            )
    check = getattr(backend, "check_request", None)
    if check is not None:
        check(request)


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

    ``complete`` streams each new piece of output to ``on_chunk`` as it arrives (a str,
    or a ``protocol.Chunk`` with thinking and tool calls) and returns the whole new
    output; failures raise ``protocol.BackendError`` with ``transient`` set as
    docs/architecture.md section 3 classifies them. A ``carries`` attribute, when present,
    names the request features it carries (module docstring).
    """

    name: str

    def complete(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken
    ) -> BackendResult:
        """Run one chat or generate call."""
        ...

    def embed(
        self,
        model: str,
        inputs: tuple[str, ...],
        options: Mapping[str, Any],
        cancel: CancelToken,
        *,
        keep_alive: str | float | None = None,
    ) -> EmbedResult:
        """Embed each input (bypasses the GPU queue); ``keep_alive``, when given, is how
        long the model stays loaded after it (None: the server leaves it as it is)."""
        ...

    def loaded_models(self) -> tuple[LoadedModel, ...]:
        """The models resident now (``/api/ps``)."""
        ...

    def list_models(self) -> tuple[str, ...]:
        """The names of the models the server can run, as it spells them (Ollama's
        ``/api/tags``, an OpenAI-compatible ``/v1/models``): the backend's catalog.
        An unreachable server raises BackendError with ``outage``, as loaded_models does."""
        ...

    def load(
        self, model: str, keep_alive: str | float | None = None, *, embedding: bool = False
    ) -> None:
        """Load ``model`` and keep it resident for ``keep_alive``; ``embedding`` says it is
        an embedding model, which a server may load another way (Ollama: an empty embed)."""
        ...

    def unload(self, model: str) -> None:
        """Evict ``model`` now."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...
