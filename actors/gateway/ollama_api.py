"""The Ollama API, so any Ollama client can use gpulane (docs/architecture.md section 10).

``/api/chat`` and ``/api/generate`` are jobs like any other: queued, scheduled and
preemptible. Streaming answers are NDJSON exactly as Ollama writes them (one object
per line, no blank keep-alive lines, a final line with ``done``, ``done_reason`` and the
duration and count metrics, an error after output as a final ``{"error": ...}`` line).
``/api/embed`` goes past the GPU queue (``GpuLane.embed``): embedding calls are short
and the embedding model stays resident beside the chat model. The catalog routes
(``/api/tags``, ``/api/show``, ``/api/ps``, ``/api/version``) are in
:mod:`actors.gateway.catalog`, the model-management routes in
:mod:`actors.gateway.model_admin`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from actors.gateway.auth import Caller
from actors.gateway.core import CallerDep, Gateway, failure_status, gateway_of
from actors.gateway.errors import GatewayError
from actors.gateway.streams import Heartbeat, JobStream, answer_when_done
from protocol import Job, JobCancelledError, JobFailedError, JobMetrics, JobSpec, Lane, Priority

__all__ = ["GATEWAY_VERSION", "rfc3339", "rfc3339_now", "router", "scheduling"]

GATEWAY_VERSION = "0.1.0"
NDJSON = "application/x-ndjson"

router = APIRouter(tags=["ollama"])


class OllamaMessage(BaseModel):
    """One chat turn as Ollama takes it (unknown fields, such as ``thinking``, are ignored)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    stream: bool = Field(default=True, strict=True)
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None


class ChatRequest(_Common):
    """``POST /api/chat``."""

    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Common):
    """``POST /api/generate``."""

    prompt: str = ""
    system: str | None = None
    images: list[str] | None = None


class EmbedRequest(BaseModel):
    """``POST /api/embed``: one text or a list of them."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] = Field(min_length=1)
    options: dict[str, Any] | None = None
    dimensions: int | None = None


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
    """``length`` when the token limit cut the answer, else ``stop``."""
    limit = job.spec.max_tokens or job.spec.options.get("num_predict")
    metrics = job.metrics or JobMetrics()
    if isinstance(limit, int) and limit > 0 and metrics.eval_count >= limit:
        return "length"
    return "stop"


def _line(model: str, kind: str, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": rfc3339_now()}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    return out


def _final(job: Job, kind: str, text: str, started_ns: int) -> dict[str, Any]:
    """The last object: ``done`` with Ollama's metrics; total_duration includes queueing."""
    metrics = job.metrics or JobMetrics()
    out = _line(job.spec.model, kind, text)
    out.update(
        done_reason=done_reason(job),
        done=True,
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
    return lambda waiting: _encode(
        _line(model, kind, "") | {"done": False, "gpulane": waiting.to_dict()}
    )


def _ended_badly(job: Job) -> JSONResponse:
    return JSONResponse({"error": job.error or job.state.value}, status_code=failure_status(job))


async def _respond(request: Request, gateway: Gateway, spec: JobSpec, kind: str) -> Response:
    started = time.monotonic_ns()
    ticket = await gateway.submit(spec, detach=False)
    if not spec.stream:

        def whole(job: Job) -> Response:
            if job.result is None:
                return _ended_badly(job)
            return JSONResponse(_final(job, kind, job.result, started))

        return await answer_when_done(request, gateway, ticket, whole)
    stream = JobStream(request, gateway, ticket)
    ended = await stream.start()
    if ended is not None and ended.result is None:
        return _ended_badly(ended)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for piece in stream.pieces():
                yield _encode(_line(spec.model, kind, piece) | {"done": False})
        except (JobFailedError, JobCancelledError) as exc:
            yield _encode({"error": str(exc)})
            return
        yield _encode(_final(stream.final, kind, "", started))

    return stream.respond(body(), NDJSON, _waiting_line(spec.model, kind))


def _spec_fields(body: _Common, request: Request, caller: Caller) -> dict[str, Any]:
    lane, priority = scheduling(request, caller)
    return {
        "model": body.model,
        "options": body.options or {},
        "format": body.format or None,
        "keep_alive": body.keep_alive,
        "stream": body.stream,
        "lane": lane,
        "priority": priority,
        "caller": caller.name,
    }


@router.post("/api/chat", summary="Chat (Ollama): queued as a job; NDJSON stream or one object")
async def chat(body: ChatRequest, request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/chat``."""
    if body.tools:
        raise GatewayError(400, "tool calling is not supported by gpulane", field="tools")
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    spec = JobSpec.chat(messages=messages, **_spec_fields(body, request, caller))
    return await _respond(request, gateway_of(request), spec, "chat")


@router.post("/api/generate", summary="Generate (Ollama): queued as a job")
async def generate(body: GenerateRequest, request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/generate``."""
    if body.images:
        raise GatewayError(400, "images are supported on /api/chat only", field="images")
    spec = JobSpec.generate(
        prompt=body.prompt, system=body.system, **_spec_fields(body, request, caller)
    )
    return await _respond(request, gateway_of(request), spec, "generate")


@router.post("/api/embed", summary="Embed (Ollama): straight to the model server, not queued")
async def embed(body: EmbedRequest, request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/embed``: admitted by the RateLimiter, then past the GPU queue."""
    if body.dimensions is not None:
        raise GatewayError(
            400, "cannot be chosen: the model answers with its own size", field="dimensions"
        )
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


class LegacyEmbeddingsRequest(BaseModel):
    """``POST /api/embeddings``, Ollama's older form: one ``prompt``, one vector back."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1)
    options: dict[str, Any] | None = None


@router.post("/api/embeddings", summary="Embed one text (Ollama's older route): not queued")
async def embeddings(
    body: LegacyEmbeddingsRequest, request: Request, caller: CallerDep
) -> Response:
    """Ollama's deprecated ``/api/embeddings``, answered through ``/api/embed``.

    So the vector is normalised, as ``/api/embed`` returns it (Ollama's own older route
    is not); cosine similarity, what embeddings are used for, is the same.
    """
    lane, _ = scheduling(request, caller)
    gateway = gateway_of(request)
    result = await gateway.embed(caller, body.model, [body.prompt], lane, body.options or {})
    return JSONResponse({"embedding": list(result.embeddings[0])})
