"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions`` (JSON and server-sent
events), ``/v1/embeddings`` (``/v1/models`` is in :mod:`actors.gateway.catalog`).

Completions are gpulane jobs like Ollama's ``/api/chat`` and ``/api/generate``; sampling
parameters map onto Ollama runner options, and the chat format's tools, structured
output, reasoning, images and logprobs are translated in :mod:`actors.gateway.openai_chat`.
Errors use OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape; an error
after the stream began is an in-band ``error`` event, which the official client raises as
``APIError``.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from actors.gateway.auth import Caller
from actors.gateway.core import CallerDep, failure_status, gateway_of
from actors.gateway.errors import GatewayError
from actors.gateway.ollama_api import CLOUD_HEADER, cloud_asked, scheduling
from actors.gateway.openai_chat import (
    ChatAnswers,
    ChatMessageIn,
    ReasoningEffort,
    ResponseFormat,
    chat_messages,
    finish_reason,
    response_format,
    think_for,
    tools_for,
)
from actors.gateway.request_fields import labels_asked, refuse_uncarried
from actors.gateway.streams import JobStream, answer_when_done, sse_comment
from protocol import Answer, Chunk, Job, JobCancelledError, JobFailedError, JobMetrics, JobSpec

__all__ = ["router"]

router = APIRouter(tags=["openai"])


class StreamOptions(BaseModel):
    """``include_usage`` adds a final chunk with token counts."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Sampling(BaseModel):
    """The parameters both completion APIs take; the sampling ones as Ollama runner options.

    Unknown fields are ignored, as Ollama's and vLLM's OpenAI layers ignore them; fields
    OpenAI defines that a job cannot carry are refused by name when they ask for something
    (docs/gateway.md, "Compatibility").
    """

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    logit_bias: dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage event."""
        return self.stream_options is not None and self.stream_options.include_usage

    def job_fields(self, request: Request, caller: Caller) -> dict[str, Any]:
        """The JobSpec fields both completion APIs fill alike."""
        if self.n not in (None, 1):
            raise GatewayError(
                400, f"asks for {self.n} choices; gpulane answers each request with one",
                field="n", allowed="1",
            )  # fmt: skip
        refuse_uncarried([("logit_bias", bool(self.logit_bias), "Ollama has no logit bias")])
        lane, priority = scheduling(request, caller)
        return {
            "allow_cloud": caller.cloud_for(cloud_asked(request), CLOUD_HEADER),
            "labels": labels_asked(request),
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
        for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.stop is not None:
            out["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return out


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions`` (openai-python's ``completion_create_params``)."""

    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: ReasoningEffort | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    store: bool | None = None
    verbosity: str | None = None
    moderation: dict[str, Any] | None = None

    def refuse_uncarried(self) -> None:
        """The fields OpenAI defines that a job cannot carry, when they ask for something."""
        refuse_uncarried(
            (
                ("audio", self.audio is not None, "gpulane answers in text only"),
                ("modalities", any(m != "text" for m in self.modalities or ()),
                 "gpulane answers in text only"),
                ("functions", bool(self.functions),
                 "the deprecated function calling; send tools"),
                ("function_call", self.function_call is not None,
                 "the deprecated function calling; send tool_choice"),
                ("prediction", self.prediction is not None, "Ollama has no predicted outputs"),
                ("web_search_options", self.web_search_options is not None,
                 "gpulane searches nothing"),
                ("store", bool(self.store), "gpulane keeps no completions to fetch later"),
                ("verbosity", self.verbosity is not None,
                 "a model server has no verbosity setting"),
                ("moderation", self.moderation is not None, "gpulane moderates nothing"),
                ("top_logprobs", bool(self.top_logprobs) and not self.logprobs,
                 "top_logprobs needs logprobs: true, as OpenAI requires"),
            )
        )  # fmt: skip


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: one text prompt (a list of one is accepted too)."""

    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=1)]
    )
    suffix: str | None = None
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def refuse_uncarried(self) -> None:
        """The fields of the older API a generate job cannot carry."""
        refuse_uncarried(
            (
                ("echo", bool(self.echo), "an answer holds the new text only"),
                ("best_of", self.best_of not in (None, 1),
                 "gpulane runs one completion per request"),
                ("logprobs", self.logprobs is not None,
                 "the older API's logprobs; /v1/chat/completions carries logprobs"),
            )
        )  # fmt: skip


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
    code = {409: "cancelled", 404: "model_not_found", 400: "refused"}.get(status, "upstream")
    body = _error_body(
        job.error or job.state.value,
        "server_error" if status >= 500 else "invalid_request_error",
        code,
    )
    return JSONResponse(body, status_code=status)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class _Answers(Protocol):
    """How one completion API spells one request's answer: ids, object names, choices."""

    id_prefix: str
    whole_object: str
    piece_object: str

    def opening(self) -> list[dict[str, Any]]:
        """The choices that open a stream."""
        ...

    def whole(self, job: Job, answer: Answer) -> dict[str, Any]:
        """The choice of a whole answer."""
        ...

    def pieces(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The stream choices of one piece."""
        ...

    def finish(self, job: Job) -> dict[str, Any]:
        """The stream's last choice."""
        ...


class _TextAnswers:
    """The older completions API's answer: text only."""

    id_prefix = "cmpl-"
    whole_object = "text_completion"
    piece_object = "text_completion"

    def opening(self) -> list[dict[str, Any]]:
        return []

    def whole(self, job: Job, answer: Answer) -> dict[str, Any]:
        return self._choice(answer.text, finish_reason(job, False))

    def pieces(self, chunk: Chunk) -> list[dict[str, Any]]:
        return [self._choice(chunk.text, None)] if chunk.text else []

    def finish(self, job: Job) -> dict[str, Any]:
        return self._choice("", finish_reason(job, False))

    @staticmethod
    def _choice(text: str, finish: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}


async def _answer(
    request: Request,
    spec: JobSpec,
    answers: Callable[[str], _Answers],
    include_usage: bool,
) -> Response:
    """Run ``spec`` as a job and answer it as ``answers(job_id)`` spells it, whole or as
    events."""
    gateway = gateway_of(request)
    by_default = cloud_asked(request) is None
    ticket = await gateway.submit(spec, detach=False, cloud_by_default=by_default)
    wire = answers(ticket.job_id)
    completion_id = f"{wire.id_prefix}{ticket.job_id}"
    created = int(time.time())
    if not spec.stream:

        def whole(job: Job) -> Response:
            answer = job.answer
            if answer is None:
                return _ended_badly(job)
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": wire.whole_object,
                    "created": created,
                    "model": spec.model,
                    "choices": [wire.whole(job, answer)],
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
        for choice in wire.opening():
            yield _sse(event([choice]))
        try:
            async for piece in stream.pieces():
                for choice in wire.pieces(piece):
                    yield _sse(event([choice]))
        except (JobFailedError, JobCancelledError) as exc:
            yield _sse(_error_body(str(exc), "server_error", "job_ended"))
            return
        job = stream.final
        yield _sse(event([wire.finish(job)]))
        if include_usage:
            yield _sse(event([]) | {"usage": _usage(job)})
        yield b"data: [DONE]\n\n"

    return stream.respond(events(), "text/event-stream", sse_comment)


@router.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible)")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: CallerDep
) -> Response:
    """OpenAI's chat completions, as a gpulane job: tools, structured output, reasoning,
    images and logprobs carried; what cannot be is refused by name."""
    body.refuse_uncarried()
    gateway = gateway_of(request)
    spec = JobSpec.chat(
        messages=chat_messages(
            body.messages,
            name_tools=gateway.upstream_kind != "openai",
            max_image_bytes=gateway.settings.max_image_bytes,
        ),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        format=response_format(body.response_format),
        tools=tools_for(body.tools, body.tool_choice),
        think=think_for(body.reasoning_effort),
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
        **body.job_fields(request, caller),
    )
    parallel, logprobs = body.parallel_tool_calls is not False, bool(body.logprobs)
    return await _answer(
        request,
        spec,
        lambda job_id: ChatAnswers(job_id, parallel_tool_calls=parallel, logprobs=logprobs),
        body.include_usage,
    )


@router.post("/v1/completions", summary="Text completion (OpenAI-compatible, legacy)")
async def completions(body: CompletionRequest, request: Request, caller: CallerDep) -> Response:
    """OpenAI's older text completions, as a gpulane generate job (``suffix`` carried)."""
    body.refuse_uncarried()
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    spec = JobSpec.generate(
        prompt=prompt,
        suffix=body.suffix,
        max_tokens=body.max_tokens,
        **body.job_fields(request, caller),
    )
    return await _answer(request, spec, lambda _: _TextAnswers(), body.include_usage)


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
