"""Values that cross the backend seam: what a GPU slot asks a backend, and what comes back."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from protocol.enums import JobKind
from protocol.frozen import EMPTY_MAPPING
from protocol.job import Job, JobMetrics
from protocol.spec import ChatMessage

__all__ = ["BackendRequest", "BackendResult", "EmbedResult", "LoadedModel"]


@dataclasses.dataclass(frozen=True, slots=True)
class BackendRequest:
    """One chat or generate call. ``resume_prefix`` is text already produced by an earlier
    call for the same job: the backend continues after it (assistant prefill for chat,
    prompt continuation for generate) and returns only the new text."""

    kind: JobKind
    model: str
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    system: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: EMPTY_MAPPING)
    format: str | Mapping[str, Any] | None = None
    max_tokens: int | None = None
    keep_alive: str | float | None = None
    resume_prefix: str = ""
    stream: bool = True

    @classmethod
    def for_job(cls, job: Job) -> BackendRequest:
        """The request that runs (or resumes) ``job``."""
        spec = job.spec
        return cls(
            kind=spec.kind,
            model=spec.model,
            messages=spec.messages,
            prompt=spec.prompt,
            system=spec.system,
            options=spec.options,
            format=spec.format,
            max_tokens=spec.max_tokens,
            keep_alive=spec.keep_alive,
            resume_prefix=job.partial_output,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class BackendResult:
    """A finished call: the new text (without the resume prefix) and the backend's metrics."""

    text: str
    metrics: JobMetrics = JobMetrics()
    done_reason: str = "stop"


@dataclasses.dataclass(frozen=True, slots=True)
class EmbedResult:
    """Embeddings for each input, in order."""

    model: str
    embeddings: tuple[tuple[float, ...], ...]
    metrics: JobMetrics = JobMetrics()


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model resident on a backend, as ``/api/ps`` reports it."""

    name: str
    size_bytes: int = 0
    size_vram_bytes: int = 0
    expires_at: float | None = None  # epoch seconds; None: never
    context_length: int | None = None
