"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions`` (JSON and server-sent
events), ``/v1/embeddings`` (``/v1/models`` is in :mod:`actors.gateway.catalog`).

Completions are gpulane jobs like Ollama's ``/api/chat`` and ``/api/generate``;
sampling parameters map onto Ollama runner options. Errors use OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape; an error after the stream
began is an in-band ``error`` event, which the official client raises as ``APIError``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from actors.gateway.auth import Caller
from actors.gateway.core import CallerDep, failure_status, gateway_of
from actors.gateway.errors import GatewayError
from actors.gateway.ollama_api import done_reason, scheduling
from actors.gateway.streams import JobStream, answer_when_done, sse_comment
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


class _Sampling(BaseModel):
    """The sampling parameters both completion APIs take, as Ollama runner options."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage event."""
        return self.stream_options is not None and self.stream_options.include_usage

    def job_fields(self, request: Request, caller: Caller) -> dict[str, Any]:
        """The JobSpec fields both completion APIs fill alike."""
        lane, priority = scheduling(request, caller)
        return {
            "model": self.model,
            "options": self.options(),
            "stream": self.stream,
            "lane": lane,
            "priority": priority,
            "caller": caller.name,
        }

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


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[OpenAIMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: one text prompt (a list of one is accepted too)."""

    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=1)]
    )


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


@dataclasses.dataclass(frozen=True, slots=True)
class _Wire:
    """How one OpenAI completion API spells its answer: ids, object names and choices."""

    id_prefix: str
    whole_object: str
    piece_object: str
    whole_choice: Callable[[str, str], dict[str, Any]]  # (text, finish_reason)
    piece_choice: Callable[[str | None, str | None], dict[str, Any]]  # (text or None, finish)
    opening: Callable[[], dict[str, Any]] | None = None  # a first choice (chat's role delta)


_CHAT = _Wire(
    id_prefix="chatcmpl-",
    whole_object="chat.completion",
    piece_object="chat.completion.chunk",
    whole_choice=lambda text, finish: {
        "index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
    },
    piece_choice=lambda text, finish: {
        "index": 0, "delta": {} if text is None else {"content": text}, "finish_reason": finish,
    },
    opening=lambda: {
        "index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
    },
)  # fmt: skip

_TEXT = _Wire(
    id_prefix="cmpl-",
    whole_object="text_completion",
    piece_object="text_completion",
    whole_choice=lambda text, finish: {
        "index": 0, "text": text, "finish_reason": finish, "logprobs": None,
    },
    piece_choice=lambda text, finish: {
        "index": 0, "text": text or "", "finish_reason": finish, "logprobs": None,
    },
)  # fmt: skip


async def _answer(request: Request, spec: JobSpec, wire: _Wire, include_usage: bool) -> Response:
    """Run ``spec`` as a job and answer it in ``wire``'s shape, whole or as events."""
    gateway = gateway_of(request)
    ticket = await gateway.submit(spec, detach=False)
    completion_id = f"{wire.id_prefix}{ticket.job_id}"
    created = int(time.time())
    if not spec.stream:

        def whole(job: Job) -> Response:
            if job.result is None:
                return _ended_badly(job)
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": wire.whole_object,
                    "created": created,
                    "model": spec.model,
                    "choices": [wire.whole_choice(job.result, done_reason(job))],
                    "usage": _usage(job),
                }
            )

        return await answer_when_done(request, gateway, ticket, whole)

    stream = JobStream(request, gateway, ticket)
    ended = await stream.start()
    if ended is not None and ended.result is None:
        return _ended_badly(ended)

    def event(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": wire.piece_object,
            "created": created,
            "model": spec.model,
            "choices": choices,
        }

    async def events() -> AsyncIterator[bytes]:
        if wire.opening is not None:
            yield _sse(event([wire.opening()]))
        try:
            async for piece in stream.pieces():
                yield _sse(event([wire.piece_choice(piece, None)]))
        except (JobFailedError, JobCancelledError) as exc:
            yield _sse(_error_body(str(exc), "server_error", "job_ended"))
            return
        job = stream.final
        yield _sse(event([wire.piece_choice(None, done_reason(job))]))
        if include_usage:
            yield _sse(event([]) | {"usage": _usage(job)})
        yield b"data: [DONE]\n\n"

    return stream.respond(events(), "text/event-stream", sse_comment)


@router.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible)")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: CallerDep
) -> Response:
    """OpenAI's chat completions, as a gpulane job."""
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    json_mode = body.response_format is not None and body.response_format.type == "json_object"
    spec = JobSpec.chat(
        messages=messages,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        format="json" if json_mode else None,
        **body.job_fields(request, caller),
    )
    return await _answer(request, spec, _CHAT, body.include_usage)


@router.post("/v1/completions", summary="Text completion (OpenAI-compatible, legacy)")
async def completions(body: CompletionRequest, request: Request, caller: CallerDep) -> Response:
    """OpenAI's older text completions, as a gpulane generate job."""
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    spec = JobSpec.generate(
        prompt=prompt, max_tokens=body.max_tokens, **body.job_fields(request, caller)
    )
    return await _answer(request, spec, _TEXT, body.include_usage)


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
