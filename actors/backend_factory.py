"""Builds the backends a configuration names: the local model server and the cloud fallback.

One place turns ``[backend]`` and ``[cloud]`` into running clients (and, for
``kind = "simulated"``, a simulated Ollama server on loopback), so the facade and
``gpulane serve`` drive the same backend for the same settings.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import cast

from actors.backends.base import Backend
from actors.config import BackendSettings, CloudSettings
from protocol import ValidationError

__all__ = ["BuiltBackend", "cloud_backend", "local_backend"]


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
    """The backend ``[backend]`` names: Ollama, OpenAI-compatible, or a simulated Ollama."""
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
