"""The OpenAI-compatible backend: vLLM, llama.cpp's server, llama-cpp-python, LM Studio.

Chat jobs go to ``/v1/chat/completions`` and generate jobs to ``/v1/completions`` (a
raw prompt with no chat template, which is what Ollama's ``/api/generate`` with
``raw`` comes closest to and what makes resuming exact: the text so far is simply
appended to the prompt). Streams are server-sent events ending with ``data: [DONE]``;
``stream_options.include_usage`` asks for the token counts, which become JobMetrics.

The request is carried field by field, in the shapes of openai-python's ``types/chat``
(docs/backends.md, "What each backend carries"): ``tools``; a message's tool calls as
``tool_calls`` with JSON-string arguments and an id each, a tool result as role ``tool``
with the ``tool_call_id`` it answers (``actors.backends.translate.call_ids``) and its
``tool_name`` as ``name``; a message's thinking as ``reasoning_content`` (llama.cpp) and
``reasoning`` (vLLM); images as ``image_url`` content parts with data URLs; ``think`` as
``chat_template_kwargs.enable_thinking``, a level also as ``reasoning_effort``;
``format`` as ``response_format`` (a schema in the form ``schema_form`` names, below);
``logprobs``/``top_logprobs``; generate's ``suffix``.
Streamed ``delta.tool_calls`` are assembled by index and passed on whole,
``reasoning_content``/``reasoning`` come back as thinking, and the finish reason is the
done reason as the server gave it (``tool_calls`` after a tool call). Refused by name:
generate's images, raw, template and context, and ``think`` on a generate job (no chat
template applies there, so no server knob reaches the model).

Resuming a preempted chat job needs the server to continue a final assistant message
instead of answering it. Servers differ, so ``resume`` says how (docs/backends.md):

- ``"prefill"``: send the text so far as a final assistant message; llama.cpp's C++
  server (``llama-server``) continues it.
- ``"continue_final_message"``: the same plus vLLM's ``continue_final_message: true``
  and ``add_generation_prompt: false`` request fields.
- ``"regenerate"``: for servers that answer a final assistant message as a new turn
  (llama-cpp-python's server, for one): ask again without it and drop the first
  ``len(prefix)`` characters of the new answer, so the caller sees no repeated text.
  The server decodes the prefix again, so the call asks for the prefix's tokens
  (``BackendRequest.prefix_tokens``) on top of the budget left, and its usage leaves
  them out (the calls that produced them counted them). This spends the GPU time of the
  prefix again; with greedy sampling the new answer starts with the same prefix,
  otherwise the seam may not read smoothly.

Servers take a JSON schema in one of two forms, so ``schema_form`` says which to send
(docs/backends.md): ``"json_schema"``, OpenAI's ``{"type": "json_schema", "json_schema":
{"schema": ...}}`` (vLLM, llama.cpp's C++ server, LM Studio, OpenAI), or
``"json_object"``, ``{"type": "json_object", "schema": ...}`` (llama-cpp-python's server,
whose request model takes no other; llama.cpp's C++ server takes it too, vLLM reads
it as "any JSON object" and ignores the schema).

Cancelling shuts the call's socket (``actors.backends.http``); every server named above
stops generating when its client goes away.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any, Literal

import httpx

from actors.backends.base import CancelToken, ChunkSink, refuse_unsupported
from actors.backends.http import (
    decode_object,
    drain,
    guarded,
    int_field,
    iter_sse,
    new_client,
    raise_for_status,
)
from actors.backends.translate import (
    Collector,
    Skipper,
    ToolCallAssembly,
    call_ids,
    image_media_type,
    openai_logprobs,
)
from protocol import (
    BackendError,
    BackendRequest,
    BackendResult,
    ChatMessage,
    Chunk,
    EmbedResult,
    JobKind,
    JobMetrics,
    LoadedModel,
    ToolCall,
    ValidationError,
    thaw,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "RESUME_MODES",
    "SCHEMA_FORMS",
    "OpenAICompatBackend",
    "ResumeMode",
    "SchemaForm",
]

DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)

ResumeMode = Literal["prefill", "continue_final_message", "regenerate"]
RESUME_MODES: tuple[ResumeMode, ...] = ("prefill", "continue_final_message", "regenerate")
SchemaForm = Literal["json_schema", "json_object"]
SCHEMA_FORMS: tuple[SchemaForm, ...] = ("json_schema", "json_object")

# Ollama option names that mean the same in the OpenAI API (or in the llama.cpp and vLLM
# extensions of it). Runner options such as num_ctx are the server's start-up settings
# there, so they are not sent.
_OPTION_NAMES: Mapping[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
}
# Where a message's thinking goes, and where an answer's comes from: llama.cpp (and
# DeepSeek, LM Studio, SGLang) name it reasoning_content, vLLM since 0.11 reasoning.
_THINKING_KEYS = ("reasoning_content", "reasoning")
_SERVER = "the OpenAI-compatible server"


class OpenAICompatBackend:
    """A Backend (``actors.backends.base``) for one OpenAI-compatible server, over httpx.

    ``api_key`` is sent as a bearer token when given (vLLM's ``--api-key``, LM Studio's
    optional key). ``transport`` replaces the network (e.g. ``httpx.MockTransport`` in
    tests); with it a cancel closes the response instead of shutting the socket. See the
    module docstring for ``resume``, ``schema_form`` and what is carried.
    """

    carries = frozenset(
        {
            "format", "tools", "think", "suffix", "logprobs", "top_logprobs",
            "messages.images", "messages.thinking", "messages.tool_calls",
            "messages.tool_name", "messages.tool_call_id",
        }
    )  # fmt: skip

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        resume: ResumeMode = "prefill",
        schema_form: SchemaForm = "json_schema",
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        name: str = "openai",
    ) -> None:
        if resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
        if schema_form not in SCHEMA_FORMS:
            raise ValueError(f"schema_form must be one of {SCHEMA_FORMS}, got {schema_form!r}")
        self.name = name
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.resume: ResumeMode = resume
        self.schema_form: SchemaForm = schema_form
        self._client = new_client(self.base_url, timeout, transport)
        if api_key:
            self._client.headers["Authorization"] = f"Bearer {api_key}"

    # ------------------------------------------------------------------ Backend

    def check_request(self, request: BackendRequest) -> None:
        """Refuse, naming the field, what this API cannot carry in ``request``: ``think``
        on a generate job, an image of a type a data URL cannot name."""
        if request.kind is JobKind.GENERATE and request.think is not None:
            raise ValidationError(
                "think",
                "a generate job goes to /v1/completions, where no chat template applies, so "
                "nothing can turn the model's thinking on or off",
                allowed="think on chat jobs",
            )
        for m_index, message in enumerate(request.messages):
            for i_index, image in enumerate(message.images):
                image_media_type(image, f"messages[{m_index}].images[{i_index}]")

    def complete(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken
    ) -> BackendResult:
        """Run one chat or generate call, streaming each new piece (a ``protocol.Chunk``:
        text, thinking, whole tool calls, logprobs) to ``on_chunk``.

        With a ``resume_prefix`` only what comes after it comes back (see ``resume``).
        """
        refuse_unsupported(self, request)
        path, body = self._body(request)
        collector = Collector(on_chunk)
        regenerates = self._regenerates(request)
        skip = len(request.resume_prefix) if regenerates else 0
        reader = _Reader(request, path, Skipper(skip, collector))
        began = time.monotonic_ns()
        with (
            guarded(cancel, self.base_url, _SERVER) as abort,
            self._client.stream("POST", path, json=body, extensions=abort.extensions) as response,
        ):
            abort.watch(response)
            _raise_for_status(response)
            if request.stream:
                result = _read_stream(response, reader, collector, began)
            else:
                data = decode_object(response.read(), path)
                reader.take(_first_choice(data), whole=True)
                metrics = _metrics(data, time.monotonic_ns() - began)
                result = collector.result(metrics, _finish_reason(data) or "stop")
        if not regenerates:
            return result
        # The server decoded the prefix again; the calls that produced it counted its tokens.
        new_tokens = max(0, result.metrics.eval_count - request.prefix_tokens)
        metrics = dataclasses.replace(result.metrics, eval_count=new_tokens)
        return dataclasses.replace(result, metrics=metrics)

    def embed(
        self,
        model: str,
        inputs: tuple[str, ...],
        options: Mapping[str, Any],
        cancel: CancelToken,
        *,
        keep_alive: str | float | None = None,
    ) -> EmbedResult:
        """Embed each input with ``/v1/embeddings`` (``options`` may carry ``dimensions``).
        ``keep_alive`` has nothing to do: the server keeps its models for its whole life."""
        body: dict[str, Any] = {"model": model, "input": list(inputs)}
        if "dimensions" in options:
            body["dimensions"] = options["dimensions"]
        data = self._exchange("POST", "/v1/embeddings", body, cancel)
        items = data.get("data")
        if not isinstance(items, list) or len(items) != len(inputs):
            raise BackendError(
                f"/v1/embeddings answered {len(items) if isinstance(items, list) else 'no'} "
                f"vector(s) for {len(inputs)} input(s)",
                transient=True,
            )
        ordered = sorted(items, key=lambda item: int_field(item.get("index")))
        usage = data.get("usage")
        prompt_tokens = int_field(usage.get("prompt_tokens")) if isinstance(usage, dict) else 0
        return EmbedResult(
            model=model,
            embeddings=tuple(tuple(float(x) for x in item["embedding"]) for item in ordered),
            metrics=JobMetrics(prompt_eval_count=prompt_tokens),
        )

    def loaded_models(self) -> tuple[LoadedModel, ...]:
        """The models the server serves, from ``/v1/models`` (they stay loaded while it runs)."""
        data = self._exchange("GET", "/v1/models", None, None)
        models = data.get("data") or []
        return tuple(
            LoadedModel(name=str(m["id"]), context_length=_context_length(m))
            for m in models
            if isinstance(m, dict) and m.get("id")
        )

    def list_models(self) -> tuple[str, ...]:
        """The models the server can run: the ids ``/v1/models`` lists (all loaded, as above)."""
        return tuple(m.name for m in self.loaded_models())

    def load(
        self, model: str, keep_alive: str | float | None = None, *, embedding: bool = False
    ) -> None:
        """Check that the server serves ``model`` (of any kind): these servers load at
        start-up, so there is nothing to load; an unknown model is a permanent error (404)."""
        served = self.list_models()
        if model not in served:
            message = f"{self.base_url} does not serve {model!r} (it serves {sorted(served)})"
            raise BackendError(message, transient=False, status=404)

    def unload(self, model: str) -> None:
        """Nothing to do: an OpenAI-compatible server keeps its models for its whole life,
        and the API has no call to evict one (restart the server with other models)."""

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._client.close()

    # ----------------------------------------------------------------- plumbing

    def _regenerates(self, request: BackendRequest) -> bool:
        return (
            self.resume == "regenerate"
            and request.kind is JobKind.CHAT
            and bool(request.resume_prefix)
        )

    def _body(self, request: BackendRequest) -> tuple[str, dict[str, Any]]:
        """The path and JSON body for a chat or generate request (with resume)."""
        body: dict[str, Any] = {"model": request.model, "stream": request.stream}
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        if request.max_tokens is not None:
            # A regenerated prefix is decoded again: its tokens come on top of the budget left.
            again = request.prefix_tokens if self._regenerates(request) else 0
            body["max_tokens"] = request.max_tokens + again
        options = thaw(request.options)
        for ollama_name, value in options.items():
            if ollama_name in _OPTION_NAMES:
                body[_OPTION_NAMES[ollama_name]] = value
        if "num_predict" in options and request.max_tokens is None:
            body["max_tokens"] = options["num_predict"]
        if request.format is not None:
            body["response_format"] = self._response_format(request.format)
        prefix = request.resume_prefix
        if request.kind is JobKind.GENERATE:
            system = f"{request.system}\n\n" if request.system else ""
            body["prompt"] = system + request.prompt + prefix
            if request.suffix is not None:
                body["suffix"] = request.suffix
            if request.logprobs or request.top_logprobs:
                # The legacy API's logprobs is the number of alternatives; asking for one
                # makes every server (llama.cpp too) report the chosen token's.
                body["logprobs"] = max(1, request.top_logprobs)
            return "/v1/completions", body
        messages = _messages(request.messages)
        if request.system:
            messages.insert(0, {"role": "system", "content": request.system})
        if prefix and self.resume != "regenerate":
            last = messages[-1]
            if _is_prefill(last):
                # The caller's own prefill was continued; the prefix carries on after it.
                messages[-1] = {**last, "content": last["content"] + prefix}
            else:
                messages.append({"role": "assistant", "content": prefix})
            if self.resume == "continue_final_message":
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
        body["messages"] = messages
        if request.tools:
            body["tools"] = [tool.to_dict() for tool in request.tools]  # OpenAI's shape too
        if request.think is not None:
            # Chat templates that can think (Qwen3, DeepSeek-R1 distills, GLM, ...) read
            # enable_thinking, which vLLM and llama.cpp pass to the template; a level is
            # OpenAI's reasoning_effort (gpt-oss on vLLM and llama.cpp).
            body["chat_template_kwargs"] = {"enable_thinking": request.think is not False}
            if isinstance(request.think, str):
                body["reasoning_effort"] = request.think
        if request.logprobs or request.top_logprobs:
            body["logprobs"] = True
            if request.top_logprobs:
                body["top_logprobs"] = request.top_logprobs
        return "/v1/chat/completions", body

    def _response_format(self, format: str | Mapping[str, Any]) -> dict[str, Any]:
        """``format`` as ``response_format``: "json" as ``json_object``, a schema in the
        form ``schema_form`` names (strict, as Ollama constrains decoding to the schema)."""
        if format == "json":
            return {"type": "json_object"}
        schema = thaw(format)
        if self.schema_form == "json_object":
            return {"type": "json_object", "schema": schema}
        return {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }

    def _exchange(
        self, method: str, path: str, body: Mapping[str, Any] | None, cancel: CancelToken | None
    ) -> dict[str, Any]:
        """One request whose answer is a single JSON object."""
        with (
            guarded(cancel, self.base_url, _SERVER) as abort,
            self._client.stream(method, path, json=body, extensions=abort.extensions) as response,
        ):
            abort.watch(response)
            _raise_for_status(response)
            return decode_object(response.read(), path)


def _messages(messages: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    """The chat messages in OpenAI's shape (module docstring)."""
    ids, answers = call_ids(messages)
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        turn: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.images:
            parts: list[dict[str, Any]] = []
            if message.content:
                parts.append({"type": "text", "text": message.content})
            for i_index, image in enumerate(message.images):
                media_type = image_media_type(image, f"messages[{index}].images[{i_index}]")
                url = f"data:{media_type};base64,{image}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
            turn["content"] = parts
        if message.thinking:
            turn.update(dict.fromkeys(_THINKING_KEYS, message.thinking))
        if message.tool_calls:
            turn["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": json.dumps(thaw(call.arguments), ensure_ascii=False),
                    },
                }
                for call_id, call in zip(ids[index], message.tool_calls, strict=True)
            ]
        if answers[index] is not None:
            turn["tool_call_id"] = answers[index]
        if message.tool_name is not None:
            turn["name"] = message.tool_name
        out.append(turn)
    return out


def _is_prefill(turn: Mapping[str, Any]) -> bool:
    """True for a final assistant message of plain text, which a resume continues."""
    return (
        turn["role"] == "assistant"
        and isinstance(turn["content"], str)
        and not turn.get("tool_calls")
    )


class _Reader:
    """Turns what the server sends (stream chunks or one answer) into pieces: text,
    thinking, logprobs, and tool calls once whole."""

    def __init__(self, request: BackendRequest, path: str, emit: Skipper) -> None:
        self._chat = request.kind is JobKind.CHAT
        self._top = request.top_logprobs
        self._emit = emit
        self._calls = ToolCallAssembly(f"{_SERVER}'s {path}")
        self.counted = 0  # pieces with output: the tokens, when the server sends no usage

    def take(self, choice: Mapping[str, Any], *, whole: bool) -> None:
        """Pass on what one choice carries: a stream chunk's ``delta`` or, ``whole``, an
        answer's ``message``; a finish reason (or a whole answer) finishes its tool calls."""
        if self._chat:
            found = choice.get("message" if whole else "delta")
            source: Mapping[str, Any] = found if isinstance(found, dict) else {}
            text = source.get("content")
        else:
            source = {}
            text = choice.get("text")
        thinking = next((source[key] for key in _THINKING_KEYS if source.get(key)), "")
        deltas = source.get("tool_calls")
        deltas = deltas if isinstance(deltas, list) else []
        done: list[ToolCall] = []
        for position, delta in enumerate(deltas):
            if isinstance(delta, dict):
                done.extend(self._add_call(delta, position))
        if whole or choice.get("finish_reason"):
            done.extend(self._calls.finish_all())
        text = text if isinstance(text, str) else ""
        thinking = thinking if isinstance(thinking, str) else ""
        self.counted += bool(text or thinking or deltas)
        logprobs = openai_logprobs(choice.get("logprobs"), self._top)
        self._emit(Chunk(text, thinking=thinking, tool_calls=tuple(done), logprobs=logprobs))

    def finish(self) -> None:
        """The stream ended: pass on the tool calls it left open."""
        self._emit(Chunk(tool_calls=self._calls.finish_all()))

    def _add_call(self, delta: Mapping[str, Any], position: int) -> tuple[ToolCall, ...]:
        """Add one ``tool_calls`` item; returns the calls it shows are done."""
        index = delta.get("index")
        index = index if isinstance(index, int) else position
        done = self._calls.finish_before(index)
        function = delta.get("function")
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments")
        name = function.get("name")
        call_id = delta.get("id")
        self._calls.add(
            index,
            id=call_id if isinstance(call_id, str) else None,
            name=name if isinstance(name, str) else None,
            arguments=arguments if isinstance(arguments, str) else "",
            whole=arguments if isinstance(arguments, dict) else None,
        )
        return done


def _read_stream(
    response: httpx.Response, reader: _Reader, collector: Collector, began_ns: int
) -> BackendResult:
    """Read an SSE stream to ``data: [DONE]``; usage comes in a chunk without choices.

    A server that streams without usage (llama-cpp-python ignores ``stream_options``)
    sends one token per chunk, so the chunks with output count the generated tokens. A
    stream with no finish reason was stopped before the answer was done (llama-cpp-python
    sends ``[DONE]`` early when another request arrives): a transient error, never an
    answer cut short in silence.
    """
    path = response.request.url.path
    finish: str | None = None
    usage_chunk: dict[str, Any] = {}
    lines = response.iter_lines()
    for event in iter_sse(lines):
        if event.data == "[DONE]":
            drain(lines)
            break
        chunk = decode_object(event.data, path)
        if event.event == "error" or "error" in chunk:  # llama.cpp names it; vLLM does not
            raise BackendError(_error_message(chunk) or event.data, transient=True)
        reader.take(_first_choice(chunk), whole=False)
        finish = _finish_reason(chunk) or finish
        if chunk.get("usage") or chunk.get("timings"):
            usage_chunk = chunk
    if finish is None:
        raise BackendError(
            f"the stream from {path} ended without a finish reason after {collector.pieces} "
            "chunk(s): the server stopped the answer (llama-cpp-python's server does when "
            "another request arrives, unless started with --interrupt_requests false)",
            transient=True,
        )
    reader.finish()
    if not usage_chunk.get("usage"):
        usage_chunk = {**usage_chunk, "usage": {"completion_tokens": reader.counted}}
    metrics = _metrics(usage_chunk, time.monotonic_ns() - began_ns)
    return collector.result(metrics, finish)


def _first_choice(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The first choice of a chunk or answer (a usage chunk has none: empty)."""
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def _finish_reason(data: Mapping[str, Any]) -> str | None:
    reason = _first_choice(data).get("finish_reason")
    return str(reason) if reason else None


def _metrics(data: Mapping[str, Any], total_ns: int) -> JobMetrics:
    """Token counts from ``usage``; llama.cpp's ``timings`` (ms) give the durations."""
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    timings = data.get("timings")
    timings = timings if isinstance(timings, dict) else {}

    def ms(key: str) -> int:
        value = timings.get(key)
        return int(value * 1_000_000) if isinstance(value, (int, float)) else 0

    return JobMetrics(
        prompt_eval_count=int_field(usage.get("prompt_tokens")),
        prompt_eval_duration_ns=ms("prompt_ms"),
        eval_count=int_field(usage.get("completion_tokens")),
        eval_duration_ns=ms("predicted_ms"),
        total_duration_ns=total_ns,
    )


def _context_length(model: Mapping[str, Any]) -> int | None:
    """vLLM's ``max_model_len`` or llama.cpp's ``meta.n_ctx_train``, when given."""
    meta = model.get("meta")
    value = model.get("max_model_len") or (meta.get("n_ctx_train") if isinstance(meta, dict) else 0)
    return int_field(value) or None


def _error_message(data: object) -> str:
    """The server's own message: ``{"error": {"message"}}`` (OpenAI, llama.cpp),
    ``{"message"}`` (vLLM) or ``{"detail"}`` (FastAPI servers)."""
    if not isinstance(data, dict):
        return ""
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    for key in ("message", "detail"):
        if isinstance(data.get(key), str):
            return str(data[key])
    return ""


def _raise_for_status(response: httpx.Response) -> None:
    """Raise BackendError with the server's own message for an error status: transient
    as the status says, except a 5xx that reports this request's body as invalid, which
    is the permanent 400 it should have been (see :func:`_refuses_the_body`); a 503
    (llama.cpp's "Loading model") and a proxy's 502 or 504 are the server's outage."""
    try:
        raise_for_status(response, _error_message)
    except BackendError as exc:
        if exc.status is not None and exc.status >= 500 and _refuses_the_body(exc.message):
            raise BackendError(exc.message, transient=False, status=400) from None
        raise


# llama-cpp-python's server answers every exception with a 500, the request validation
# of FastAPI too (server/errors.py, RouteErrorHandler): its message is that error's
# text, which names each field at fault by its location in the request, ('body', ...)
# (pydantic 2, which the server requires). Sending the same body again fails the same way.
_BODY_AT_FAULT = "'loc': ('body',"


def _refuses_the_body(message: str) -> bool:
    """True for a server error whose message is a validation error of the request body."""
    return "validation error" in message and _BODY_AT_FAULT in message
