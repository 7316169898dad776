"""Builds the backends a configuration names: the local model server and the cloud fallback.

One place turns ``[backend]`` and ``[cloud]`` into running clients (and, for
``kind = "simulated"``, a simulated Ollama server on loopback), so the facade and
``gpulane serve`` drive the same backend for the same settings.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

from actors.backends.base import Backend, CancelToken, ChunkSink, carried_features
from actors.config import BackendSettings, CloudSettings
from protocol import BackendRequest, BackendResult, EmbedResult, LoadedModel, ValidationError

__all__ = ["BuiltBackend", "ReplaceableBackend", "cloud_backend", "local_backend"]


@dataclasses.dataclass(frozen=True)
class BuiltBackend:
    """A backend client, the URL of the server it talks to, and what closing it releases."""

    backend: Backend
    url: str
    releases: tuple[Callable[[], None], ...]

    def close(self) -> None:
        """Close the client, then stop the server it started (if any)."""
        for release in reversed(self.releases):
            release()


def local_backend(settings: BackendSettings) -> BuiltBackend:
    """The backend ``[backend]`` or one ``[[backends]]`` table names: Ollama,
    OpenAI-compatible, or a simulated Ollama (its own server on loopback, one per backend)."""
    from actors.backends.ollama import OllamaBackend
    from actors.backends.openai_compat import OpenAICompatBackend, ResumeMode, SchemaForm

    if settings.kind == "openai":
        openai = OpenAICompatBackend(
            settings.url,
            resume=cast(ResumeMode, settings.resume),  # BackendSettings checked both
            schema_form=cast(SchemaForm, settings.schema_form),
            timeout=settings.request_timeout_s,
        )
        return BuiltBackend(openai, settings.url, (openai.close,))
    releases: list[Callable[[], None]] = []
    url = settings.url
    if settings.kind == "simulated":
        from actors.backends.simulated import SimulatedOllama

        server = SimulatedOllama()
        url = server.start()
        releases.append(server.stop)
    ollama = OllamaBackend(url, timeout=settings.request_timeout_s)
    releases.append(ollama.close)
    return BuiltBackend(ollama, url, tuple(releases))


def cloud_backend(settings: CloudSettings, environ: Mapping[str, str] = os.environ) -> BuiltBackend:
    """The Anthropic backend ``[cloud]`` names, keyed from ``settings.api_key_env``."""
    from actors.backends.anthropic import AnthropicBackend, ThinkingMode

    key = environ.get(settings.api_key_env, "")
    if not key:
        raise ValidationError(
            "cloud.api_key_env",
            f"cloud fallback is on but ${settings.api_key_env} is empty",
            allowed="an Anthropic API key in that environment variable",
        )
    cloud = AnthropicBackend(
        key,
        model=settings.model,
        base_url=settings.url,
        max_tokens=settings.max_tokens,
        thinking_mode=cast(ThinkingMode, settings.thinking_mode),  # CloudSettings checked it
        timeout=settings.request_timeout_s,
    )
    return BuiltBackend(cloud, settings.url, (cloud.close,))


class ReplaceableBackend:
    """A backend whose client a reload replaces: the cloud's, when ``[cloud]`` changes.

    Each call goes to the client in force when it starts; a call in flight finishes on
    the client it began on, so a replaced client is closed only with this one (reloads
    are an operator's, and rare).
    """

    def __init__(self, built: BuiltBackend) -> None:
        self._lock = threading.Lock()
        self._current = built
        self._retired: list[BuiltBackend] = []
        self.name = built.backend.name

    def replace(self, built: BuiltBackend) -> None:
        """Send new calls to ``built``'s client."""
        with self._lock:
            self._retired.append(self._current)
            self._current = built
            self.name = built.backend.name

    @property
    def current(self) -> Backend:
        """The client new calls go to."""
        with self._lock:
            return self._current.backend

    @property
    def carries(self) -> frozenset[str]:
        """The request features the current client carries."""
        return carried_features(self.current)

    def check_request(self, request: BackendRequest) -> None:
        """The current client's own check of ``request``, if it has one."""
        check = getattr(self.current, "check_request", None)
        if check is not None:
            check(request)

    def complete(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken
    ) -> BackendResult:
        """Run the call on the current client."""
        return self.current.complete(request, on_chunk, cancel)

    def embed(
        self,
        model: str,
        inputs: tuple[str, ...],
        options: Mapping[str, Any],
        cancel: CancelToken,
        *,
        keep_alive: str | float | None = None,
    ) -> EmbedResult:
        """Embed on the current client."""
        return self.current.embed(model, inputs, options, cancel, keep_alive=keep_alive)

    def loaded_models(self) -> tuple[LoadedModel, ...]:
        """The current client's resident models."""
        return self.current.loaded_models()

    def list_models(self) -> tuple[str, ...]:
        """The current client's catalog."""
        return self.current.list_models()

    def load(
        self, model: str, keep_alive: str | float | None = None, *, embedding: bool = False
    ) -> None:
        """Load on the current client."""
        self.current.load(model, keep_alive, embedding=embedding)

    def unload(self, model: str) -> None:
        """Unload on the current client."""
        self.current.unload(model)

    def close(self) -> None:
        """Close every client this one has held (what each started stops too)."""
        with self._lock:
            held, self._retired = [*self._retired, self._current], []
        for built in reversed(held):
            built.close()
