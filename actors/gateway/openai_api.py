"""OpenAI-compatible ``/v1/chat/completions`` (JSON and server-sent events), ``/v1/embeddings``
and ``/v1/models``.

Chat completions are gpulane jobs like Ollama's ``/api/chat``; sampling parameters map
onto Ollama runner options. Errors use OpenAI's ``{"error": {"message", "type", "param",
"code"}}`` shape; an error after the stream began is an in-band ``error`` event, which
the official client raises as ``APIError``.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from actors.gateway.core import CallerDep, failure_status, gateway_of
from actors.gateway.errors import GatewayError
from actors.gateway.ollama_api import done_reason, scheduling, upstream_json
from actors.gateway.streams import JobStream, wait_for_job
from protocol import Job, JobCancelledError, JobFailedError, JobMetrics, JobSpec

__all__ = ["router"]

router = APIRouter(tags=["openai"])


class TextPart(BaseModel):
    """One part of a multi-part message; only text parts are supported."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class OpenAIMessage(BaseModel):
    """One chat turn; ``developer`` is treated as ``system``."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The message text, parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFormat(BaseModel):
    """``{"type": "json_object"}`` maps to Ollama's ``format: "json"``."""

    type: Literal["text", "json_object"]


class StreamOptions(BaseModel):
    """``include_usage`` adds a final chunk with token counts."""

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)
    response_format: ResponseFormat | None = None

    def options(self) -> dict[str, Any]:
        """The Ollama runner options these parameters stand for."""
        out: dict[str, Any] = {}
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.seed is not None:
            out["seed"] = self.seed
        if self.stop is not None:
            out["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return out


def _usage(job: Job) -> dict[str, int]:
    metrics = job.metrics or JobMetrics()
    prompt, completion = metrics.prompt_eval_count, metrics.eval_count
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _error_body(message: str, kind: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _ended_badly(job: Job) -> JSONResponse:
    status = failure_status(job)
    code = "cancelled" if status == 409 else "model_not_found" if status == 404 else "upstream"
    body = _error_body(
        job.error or job.state.value,
        "server_error" if status >= 500 else "invalid_request_error",
        code,
    )
    return JSONResponse(body, status_code=status)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


@router.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible)")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: CallerDep
) -> Response:
    """OpenAI's chat completions, as a gpulane job."""
    gateway = gateway_of(request)
    lane, priority = scheduling(request, caller)
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    json_mode = body.response_format is not None and body.response_format.type == "json_object"
    spec = JobSpec.chat(
        model=body.model,
        messages=messages,
        options=body.options(),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        format="json" if json_mode else None,
        stream=body.stream,
        lane=lane,
        priority=priority,
        caller=caller.name,
    )
    ticket = await gateway.submit(spec, detach=False)
    completion_id = f"chatcmpl-{ticket.job_id}"
    created = int(time.time())
    if not body.stream:
        job = await wait_for_job(request, gateway, ticket)
        if job.result is None:
            return _ended_badly(job)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": spec.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": job.result},
                        "finish_reason": done_reason(job),
                    }
                ],
                "usage": _usage(job),
            }
        )
    stream = JobStream(request, gateway, ticket)
    ended = await stream.start()
    if ended is not None and ended.result is None:
        return _ended_badly(ended)
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": spec.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    async def events() -> AsyncIterator[bytes]:
        yield _sse(chunk({"role": "assistant", "content": ""}, None))
        try:
            async for piece in stream.pieces():
                yield _sse(chunk({"content": piece}, None))
        except (JobFailedError, JobCancelledError) as exc:
            yield _sse(_error_body(str(exc), "server_error", "job_ended"))
            return
        job = stream.final
        yield _sse(chunk({}, done_reason(job)))
        if include_usage:
            usage = chunk({}, None)
            usage.update(choices=[], usage=_usage(job))
            yield _sse(usage)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


class EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings``: text input only (token arrays are not supported)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


def _encoded(vector: tuple[float, ...], encoding: str) -> list[float] | str:
    """A vector as floats, or as base64 of little-endian float32 (what OpenAI's client asks)."""
    if encoding == "float":
        return list(vector)
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post("/v1/embeddings", summary="Embeddings (OpenAI-compatible): not queued")
async def embeddings(body: EmbeddingsRequest, request: Request, caller: CallerDep) -> Response:
    """OpenAI's embeddings, past the GPU queue like Ollama's ``/api/embed``."""
    if body.dimensions is not None:
        raise GatewayError(
            400, "cannot be chosen: the model answers with its own size", field="dimensions"
        )
    lane, _ = scheduling(request, caller)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    result = await gateway_of(request).embed(caller, body.model, inputs, lane, {})
    tokens = result.metrics.prompt_eval_count
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": _encoded(vector, body.encoding_format),
                }
                for index, vector in enumerate(result.embeddings)
            ],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


@router.get("/v1/models", summary="Models (OpenAI-compatible)")
async def models(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The model server's catalog in OpenAI's list shape."""
    data = await upstream_json(gateway_of(request), "/api/tags")
    entries = [] if data is None else data.get("models", [])
    if not isinstance(entries, list):
        raise GatewayError(502, "the model server sent a malformed catalog", reason="upstream")
    return {
        "object": "list",
        "data": [
            {"id": str(m.get("name", "")), "object": "model", "created": 0, "owned_by": "gpulane"}
            for m in entries
            if isinstance(m, dict)
        ],
    }
