"""Values that cross the backend seam: what a GPU slot asks a backend, and what comes back."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from protocol.enums import JobKind
from protocol.frozen import EMPTY_MAPPING
from protocol.job import Job, JobMetrics
from protocol.jsondata import is_int
from protocol.output import Logprob
from protocol.spec import ChatMessage, JobSpec
from protocol.tools import Tool, ToolCall

__all__ = [
    "REQUEST_FEATURES",
    "BackendRequest",
    "BackendResult",
    "EmbedResult",
    "LoadedModel",
]

# The parts of a request that not every backend can carry: a backend declares which of
# these it carries (``actors.backends.base``), and a request using another is refused with
# the field's name. "messages.<part>" are parts of chat messages.
REQUEST_FEATURES = frozenset(
    {
        "format", "tools", "think", "images", "raw", "suffix", "template", "context",
        "logprobs", "top_logprobs", "messages.images", "messages.thinking",
        "messages.tool_calls", "messages.tool_name", "messages.tool_call_id",
    }
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class BackendRequest:
    """One chat or generate call. ``resume_prefix`` is text already produced by an earlier
    call for the same job: the backend continues after it (assistant prefill for chat,
    prompt continuation for generate) and returns only the new text. ``max_tokens`` is
    the budget left to this call (docs/architecture.md section 3, "Preempt"); 0 means the
    job has spent it, and the slot ends the job without a call. ``prefix_tokens`` is what
    the earlier calls' usage counted for ``resume_prefix``: a backend that decodes the
    prefix again (the OpenAI-compatible ``regenerate`` resume) asks for them on top of
    ``max_tokens`` and leaves them out of its usage, so the job's summed usage counts
    each token of the answer once."""

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
    tools: tuple[Tool, ...] = ()
    think: bool | str | None = None
    images: tuple[str, ...] = ()
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: tuple[int, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    prefix_tokens: int = 0

    @classmethod
    def for_spec(cls, spec: JobSpec) -> BackendRequest:
        """The request that runs ``spec`` from its start."""
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
            tools=spec.tools,
            think=spec.think,
            images=spec.images,
            raw=spec.raw,
            suffix=spec.suffix,
            template=spec.template,
            context=spec.context,
            logprobs=spec.logprobs,
            top_logprobs=spec.top_logprobs,
        )

    @classmethod
    def for_job(cls, job: Job) -> BackendRequest:
        """The request that runs (or resumes) ``job``: after the text it has so far (and
        the tokens ``job.segments`` counted for it), with the token budget its earlier
        calls left (``max_tokens``, else a positive ``num_predict`` option, less those
        tokens)."""
        request = cls.for_spec(job.spec)
        produced = sum(segment.eval_count for segment in job.segments)
        limit = job.spec.max_tokens
        predict = job.spec.options.get("num_predict")
        if limit is None and is_int(predict) and predict > 0:
            limit = predict
        if produced and limit is not None:
            request = dataclasses.replace(request, max_tokens=max(0, limit - produced))
        return dataclasses.replace(
            request, resume_prefix=job.partial_output, prefix_tokens=produced
        )

    @property
    def budget_spent(self) -> bool:
        """True when earlier calls of the job produced its whole token budget."""
        return self.max_tokens == 0

    def features(self) -> tuple[tuple[str, str], ...]:
        """Each feature of :data:`REQUEST_FEATURES` this request uses, with the path of the
        first field that uses it (``messages[2].tool_calls``), in field order."""
        used: dict[str, str] = {}
        for name in ("format", "tools", "think", "images", "raw", "suffix", "template"):
            value = getattr(self, name)
            # think=False asks for something too: that the model not think.
            if value is not None and value != () and (value is not False or name == "think"):
                used[name] = name
        for name in ("context", "logprobs", "top_logprobs"):
            if getattr(self, name):
                used[name] = name
        for index, message in enumerate(self.messages):
            for part in ("images", "thinking", "tool_calls", "tool_name", "tool_call_id"):
                value = getattr(message, part)
                if value is not None and value != "" and value != ():
                    used.setdefault(f"messages.{part}", f"messages[{index}].{part}")
        return tuple(used.items())


@dataclasses.dataclass(frozen=True, slots=True)
class BackendResult:
    """A finished call: the new text (without the resume prefix), the backend's metrics and
    its own done reason, and what else the model produced: thinking, tool calls, logprobs,
    and for generate Ollama's ``context``."""

    text: str
    metrics: JobMetrics = JobMetrics()
    done_reason: str = "stop"
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[Logprob, ...] = ()
    context: tuple[int, ...] = ()


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
