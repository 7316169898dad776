"""The Ollama API, so any Ollama client can use gpulane (docs/architecture.md section 10).

``/api/chat`` and ``/api/generate`` are jobs like any other: queued, scheduled and
preemptible. They take the whole request (``api/types.go``): tools, ``think``, ``format``
as ``"json"`` or a schema, logprobs, messages' images, thinking, tool calls and tool
names, generate's images, ``raw``, ``suffix``, ``template``, ``system`` and ``context``;
unknown keys are ignored, as Ollama ignores them, and a field Ollama has that a job cannot
carry is refused by name (docs/gateway.md, "Compatibility"). Streaming answers are NDJSON
exactly as Ollama writes them (one object per line, no blank keep-alive lines, each piece's
text, thinking, tool calls and logprobs, a final line with ``done``, the backend's
``done_reason``, a generate's ``context`` and the duration and count metrics, an error
after output as a final ``{"error": ...}`` line). ``/api/embed`` goes past the GPU queue
(``GpuLane.embed``): embedding calls are short and the embedding model stays resident
beside the chat model. The catalog routes (``/api/tags``, ``/api/show``, ``/api/ps``,
``/api/version``) are in :mod:`actors.gateway.catalog`, the model-management routes in
:mod:`actors.gateway.model_admin`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from actors.gateway.auth import Caller
from actors.gateway.core import CallerDep, Gateway, failure_status, gateway_of
from actors.gateway.errors import GatewayError
from actors.gateway.request_fields import check_image, labels_asked, refuse_uncarried
from actors.gateway.streams import Heartbeat, JobStream, answer_when_done
from protocol import (
    Chunk,
    Job,
    JobCancelledError,
    JobFailedError,
    JobMetrics,
    JobSpec,
    Lane,
    Logprob,
    Priority,
    ToolCall,
)

__all__ = [
    "CLOUD_HEADER",
    "GATEWAY_VERSION",
    "checked_images",
    "cloud_asked",
    "ollama_messages",
    "rfc3339",
    "rfc3339_now",
    "router",
    "scheduling",
]

GATEWAY_VERSION = "0.1.0"
NDJSON = "application/x-ndjson"
CLOUD_HEADER = "x-gpulane-cloud"
CLOUD_CHOICES = {"allow": True, "never": False}

router = APIRouter(tags=["ollama"])


class OllamaMessage(BaseModel):
    """One chat turn as Ollama takes it (``api.Message``): the role (any case, as Ollama
    lowers it), text, base64 images, an assistant turn's thinking and tool calls, a tool
    turn's tool name or call id. Unknown keys are ignored, as Go's JSON decoding does."""

    model_config = ConfigDict(extra="ignore")

    role: Annotated[
        Literal["system", "user", "assistant", "tool"],
        BeforeValidator(lambda role: role.lower() if isinstance(role, str) else role),
    ]
    content: str | None = ""
    images: list[str] | None = None
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class _Common(BaseModel):
    """The fields ``/api/chat`` and ``/api/generate`` share (unknown keys are ignored, as
    Ollama ignores them)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    stream: bool = Field(default=True, strict=True)
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None
    think: StrictBool | str | None = None
    logprobs: bool = Field(default=False, strict=True)
    top_logprobs: int = Field(default=0, strict=True)
    truncate: bool | None = Field(default=None, strict=True)
    shift: bool | None = Field(default=None, strict=True)
    debug_render_only: bool = Field(default=False, strict=True, alias="_debug_render_only")

    def refuse_uncarried(self) -> None:
        """Ollama's own fields a job has no place for: accepted at Ollama's default, a 400
        naming the field when the request asks for something else."""
        refuse_uncarried(
            (
                ("truncate", self.truncate is False,
                 "the model server truncates a prompt longer than its context, as Ollama "
                 "does by default"),
                ("shift", self.shift is False,
                 "the model server shifts the context when it is full, as Ollama does by "
                 "default"),
                ("_debug_render_only", self.debug_render_only,
                 "every request runs the model; ask the model server itself for its template"),
            )
        )  # fmt: skip


class ChatRequest(_Common):
    """``POST /api/chat``."""

    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Common):
    """``POST /api/generate``."""

    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = Field(default=False, strict=True)
    images: list[str] | None = None


class _EmbedCommon(BaseModel):
    """What both embedding routes take besides their text."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None

    def refuse_uncarried(self, *more: tuple[str, bool, str]) -> None:
        """``keep_alive`` (and ``more``), which an embedding call cannot carry."""
        refuse_uncarried(
            (
                ("keep_alive", self.keep_alive is not None,
                 "an embedding call goes past the queue and leaves the model server's "
                 "keep_alive as it is"),
                *more,
            )
        )  # fmt: skip


class EmbedRequest(_EmbedCommon):
    """``POST /api/embed``: one text or a list of them."""

    input: str | list[str] = Field(min_length=1)
    dimensions: int | None = None
    truncate: bool | None = Field(default=None, strict=True)


def scheduling(request: Request, caller: Caller) -> tuple[Lane, Priority]:
    """Lane and priority from ``X-Gpulane-Lane`` / ``X-Gpulane-Priority``, checked for rights."""
    raw_lane = request.headers.get("x-gpulane-lane")
    lane = caller.default_lane if raw_lane is None else Lane.parse(raw_lane, "x-gpulane-lane")
    raw_priority = request.headers.get("x-gpulane-priority")
    priority = (
        Priority.NORMAL
        if raw_priority is None
        else Priority.parse(raw_priority, "x-gpulane-priority")
    )
    return caller.check_lane(lane), priority


def cloud_asked(request: Request) -> bool | None:
    """What ``X-Gpulane-Cloud`` asks: ``allow`` (True), ``never`` (False), or nothing (None:
    the API key's ``allow_cloud`` decides)."""
    raw = request.headers.get(CLOUD_HEADER)
    if raw is None:
        return None
    choice = CLOUD_CHOICES.get(raw.strip().lower())
    if choice is None:
        raise GatewayError(
            400, f"unknown value {raw!r}", field=CLOUD_HEADER, allowed=list(CLOUD_CHOICES)
        )
    return choice


def rfc3339_now() -> str:
    """Now as Go's RFC3339Nano in UTC, as Ollama stamps ``created_at``."""
    return rfc3339(time.time_ns())


def rfc3339(epoch_ns: int) -> str:
    """A time as Go's RFC3339Nano in UTC, as Ollama writes its times."""
    seconds, nanos = divmod(epoch_ns, 10**9)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def done_reason(job: Job) -> str:
    """The backend's own reason for stopping, in Ollama's words: ``stop`` when it gave none,
    and for an OpenAI-compatible server's ``tool_calls`` (Ollama says ``stop`` there)."""
    reason = (job.output.done_reason if job.output is not None else None) or "stop"
    return "stop" if reason == "tool_calls" else reason


def _parts(
    kind: str,
    text: str,
    thinking: str = "",
    tool_calls: tuple[ToolCall, ...] = (),
    logprobs: tuple[Logprob, ...] = (),
) -> dict[str, Any]:
    """An answer's parts where Ollama puts them: a chat's in ``message``, a generate's beside
    ``response``; logprobs at the top. Parts that are empty are left out, as Ollama does."""
    head: dict[str, Any] = (
        {"role": "assistant", "content": text} if kind == "chat" else {"response": text}
    )
    if thinking:
        head["thinking"] = thinking
    if tool_calls:
        head["tool_calls"] = [call.to_dict() for call in tool_calls]
    out: dict[str, Any] = {"message": head} if kind == "chat" else head
    if logprobs:
        out["logprobs"] = [item.to_dict() for item in logprobs]
    return out


def _line(model: str, kind: str, piece: Chunk) -> dict[str, Any]:
    """One streamed piece: its text, thinking, tool calls and logprobs."""
    parts = _parts(kind, piece.text, piece.thinking, piece.tool_calls, piece.logprobs)
    return {"model": model, "created_at": rfc3339_now(), **parts, "done": False}


def _final(job: Job, kind: str, started_ns: int, *, whole: bool) -> dict[str, Any]:
    """The last object: the whole answer (``whole``) or, ending a stream, none of it; then
    ``done``, the backend's done reason, a generate's ``context`` and Ollama's metrics
    (total_duration includes queueing)."""
    metrics = job.metrics or JobMetrics()
    answer = job.answer if whole else None
    parts = (
        _parts(kind, "")
        if answer is None
        else _parts(kind, answer.text, answer.thinking, answer.tool_calls, answer.logprobs)
    )
    out: dict[str, Any] = {"model": job.spec.model, "created_at": rfc3339_now(), **parts}
    out.update(done=True, done_reason=done_reason(job))
    if job.output is not None and job.output.context:
        out["context"] = list(job.output.context)
    out.update(
        total_duration=time.monotonic_ns() - started_ns,
        load_duration=metrics.load_duration_ns,
        prompt_eval_count=metrics.prompt_eval_count,
        prompt_eval_duration=metrics.prompt_eval_duration_ns,
        eval_count=metrics.eval_count,
        eval_duration=metrics.eval_duration_ns,
    )
    return out


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _waiting_line(model: str, kind: str) -> Heartbeat:
    """A heartbeat as Ollama's clients take it: an empty piece (they add nothing to the
    text), saying where the job stands under ``gpulane`` (a key they ignore)."""
    return lambda waiting: _encode(_line(model, kind, Chunk()) | {"gpulane": waiting.to_dict()})


def _ended_badly(job: Job) -> JSONResponse:
    return JSONResponse({"error": job.error or job.state.value}, status_code=failure_status(job))


async def _respond(request: Request, gateway: Gateway, spec: JobSpec, kind: str) -> Response:
    started = time.monotonic_ns()
    by_default = cloud_asked(request) is None
    ticket = await gateway.submit(spec, detach=False, cloud_by_default=by_default)
    if not spec.stream:

        def whole(job: Job) -> Response:
            if job.result is None:
                return _ended_badly(job)
            return JSONResponse(_final(job, kind, started, whole=True))

        return await answer_when_done(request, gateway, ticket, whole)
    stream = JobStream(request, gateway, ticket)
    ended = await stream.start()
    if ended is not None and ended.result is None:
        return _ended_badly(ended)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for piece in stream.pieces():
                if not piece.is_empty:
                    yield _encode(_line(spec.model, kind, piece))
        except (JobFailedError, JobCancelledError) as exc:
            yield _encode({"error": str(exc)})
            return
        yield _encode(_final(stream.final, kind, started, whole=False))

    return stream.respond(body(), NDJSON, _waiting_line(spec.model, kind))


def _spec_fields(body: _Common, request: Request, caller: Caller) -> dict[str, Any]:
    """The JobSpec fields both routes fill alike."""
    body.refuse_uncarried()
    lane, priority = scheduling(request, caller)
    return {
        "allow_cloud": caller.cloud_for(cloud_asked(request), CLOUD_HEADER),
        "labels": labels_asked(request),
        "model": body.model,
        "options": body.options or {},
        "format": body.format or None,
        "keep_alive": body.keep_alive,
        "stream": body.stream,
        "think": body.think,
        "logprobs": body.logprobs,
        "top_logprobs": body.top_logprobs,
        "lane": lane,
        "priority": priority,
        "caller": caller.name,
    }


def checked_images(field: str, images: list[str] | None, max_bytes: int) -> tuple[str, ...]:
    """Each image checked: base64, at most ``max_bytes`` decoded."""
    return tuple(
        check_image(f"{field}[{i}]", image, max_bytes) for i, image in enumerate(images or ())
    )


def ollama_messages(messages: list[OllamaMessage], max_image_bytes: int) -> list[dict[str, Any]]:
    """The messages as JobSpec takes them, their images checked first."""
    for index, message in enumerate(messages):
        checked_images(f"messages[{index}].images", message.images, max_image_bytes)
    return [message.model_dump(exclude_none=True) for message in messages]


@router.post("/api/chat", summary="Chat (Ollama): queued as a job; NDJSON stream or one object")
async def chat(body: ChatRequest, request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/chat``: tools, thinking, structured output, images and logprobs."""
    gateway = gateway_of(request)
    spec = JobSpec.chat(
        messages=ollama_messages(body.messages, gateway.settings.max_image_bytes),
        tools=tuple(body.tools or ()),
        **_spec_fields(body, request, caller),
    )
    return await _respond(request, gateway, spec, "chat")


@router.post("/api/generate", summary="Generate (Ollama): queued as a job")
async def generate(body: GenerateRequest, request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/generate``: images, raw, suffix, template, system and context too."""
    gateway = gateway_of(request)
    spec = JobSpec.generate(
        prompt=body.prompt,
        system=body.system,
        suffix=body.suffix,
        template=body.template,
        context=tuple(body.context or ()),
        raw=body.raw,
        images=checked_images("images", body.images, gateway.settings.max_image_bytes),
        **_spec_fields(body, request, caller),
    )
    return await _respond(request, gateway, spec, "generate")


@router.post("/api/embed", summary="Embed (Ollama): straight to the model server, not queued")
async def embed(body: EmbedRequest, request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/embed``: admitted by the RateLimiter, then past the GPU queue."""
    if body.dimensions is not None:
        raise GatewayError(
            400, "cannot be chosen: the model answers with its own size", field="dimensions"
        )
    body.refuse_uncarried(
        ("truncate", body.truncate is False,
         "the model server truncates an input longer than its context, as Ollama does by "
         "default"),
    )  # fmt: skip
    started = time.monotonic_ns()
    lane, _ = scheduling(request, caller)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    result = await gateway_of(request).embed(caller, body.model, inputs, lane, body.options or {})
    return JSONResponse(
        {
            "model": body.model,
            "embeddings": [list(vector) for vector in result.embeddings],
            "total_duration": time.monotonic_ns() - started,
            "load_duration": result.metrics.load_duration_ns,
            "prompt_eval_count": result.metrics.prompt_eval_count,
        }
    )


class LegacyEmbeddingsRequest(_EmbedCommon):
    """``POST /api/embeddings``, Ollama's older form: one ``prompt``, one vector back."""

    prompt: str = Field(min_length=1)


@router.post("/api/embeddings", summary="Embed one text (Ollama's older route): not queued")
async def embeddings(
    body: LegacyEmbeddingsRequest, request: Request, caller: CallerDep
) -> Response:
    """Ollama's deprecated ``/api/embeddings``, answered through ``/api/embed``.

    So the vector is normalised, as ``/api/embed`` returns it (Ollama's own older route
    is not); cosine similarity, what embeddings are used for, is the same.
    """
    body.refuse_uncarried()
    lane, _ = scheduling(request, caller)
    gateway = gateway_of(request)
    result = await gateway.embed(caller, body.model, [body.prompt], lane, body.options or {})
    return JSONResponse({"embedding": list(result.embeddings[0])})
