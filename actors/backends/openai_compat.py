"""The OpenAI-compatible backend: vLLM, llama.cpp's server, llama-cpp-python, LM Studio.

Chat jobs go to ``/v1/chat/completions`` and generate jobs to ``/v1/completions`` (a
raw prompt with no chat template, which is what Ollama's ``/api/generate`` with
``raw`` comes closest to and what makes resuming exact: the text so far is simply
appended to the prompt). Streams are server-sent events ending with ``data: [DONE]``;
``stream_options.include_usage`` asks for the token counts, which become JobMetrics.

Resuming a preempted chat job needs the server to continue a final assistant message
instead of answering it. Servers differ, so ``resume`` says how (docs/backends.md):

- ``"prefill"``: send the text so far as a final assistant message; llama.cpp's C++
  server (``llama-server``) continues it.
- ``"continue_final_message"``: the same plus vLLM's ``continue_final_message: true``
  and ``add_generation_prompt: false`` request fields.
- ``"regenerate"``: for servers that answer a final assistant message as a new turn
  (llama-cpp-python's server, for one): ask again without it and drop the first
  ``len(prefix)`` characters of the new answer, so the caller sees no repeated text.
  This spends the GPU time of the prefix again; with greedy sampling the new answer
  starts with the same prefix, otherwise the seam may not read smoothly.

Cancelling shuts the call's socket (``actors.backends.http``); every server named above
stops generating when its client goes away.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import httpx

from actors.backends.base import CancelToken, ChunkSink
from actors.backends.http import (
    decode_object,
    drain,
    guarded,
    int_field,
    is_transient_status,
    iter_sse,
    new_client,
)
from protocol import (
    BackendError,
    BackendRequest,
    BackendResult,
    EmbedResult,
    JobKind,
    JobMetrics,
    LoadedModel,
    thaw,
)

__all__ = ["DEFAULT_TIMEOUT", "RESUME_MODES", "OpenAICompatBackend", "ResumeMode"]

DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)

ResumeMode = Literal["prefill", "continue_final_message", "regenerate"]
RESUME_MODES: tuple[ResumeMode, ...] = ("prefill", "continue_final_message", "regenerate")

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


class OpenAICompatBackend:
    """A Backend (``actors.backends.base``) for one OpenAI-compatible server, over httpx.

    ``api_key`` is sent as a bearer token when given (vLLM's ``--api-key``, LM Studio's
    optional key). ``transport`` replaces the network (e.g. ``httpx.MockTransport`` in
    tests); with it a cancel closes the response instead of shutting the socket. See the
    module docstring for ``resume``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        resume: ResumeMode = "prefill",
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        name: str = "openai",
    ) -> None:
        if resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
        self.name = name
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.resume: ResumeMode = resume
        self._client = new_client(self.base_url, timeout, transport)
        if api_key:
            self._client.headers["Authorization"] = f"Bearer {api_key}"

    # ------------------------------------------------------------------ Backend

    def complete(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken
    ) -> BackendResult:
        """Run one chat or generate call, streaming each new piece of text to ``on_chunk``.

        With a ``resume_prefix`` only text after it comes back (see ``resume``).
        """
        path, body = self._body(request)
        skip = len(request.resume_prefix) if self._regenerates(request) else 0
        emit = _Skipper(skip, on_chunk)
        began = time.monotonic_ns()
        with (
            guarded(cancel, self.base_url, "the OpenAI-compatible server") as abort,
            self._client.stream("POST", path, json=body, extensions=abort.extensions) as response,
        ):
            abort.watch(response)
            _raise_for_status(response)
            if not request.stream:
                data = decode_object(response.read(), path)
                emit(_choice_text(data, request.kind))
                return emit.result(data, _finish_reason(data) or "stop", began)
            return _read_stream(response, path, request.kind, emit, began)

    def embed(
        self, model: str, inputs: tuple[str, ...], options: Mapping[str, Any], cancel: CancelToken
    ) -> EmbedResult:
        """Embed each input with ``/v1/embeddings`` (``options`` may carry ``dimensions``)."""
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

    def load(self, model: str, keep_alive: str | float | None = None) -> None:
        """Check that the server serves ``model``: these servers load at start-up, so there
        is nothing to load; an unknown model is a permanent error (404)."""
        served = {m.name for m in self.loaded_models()}
        if model not in served:
            raise BackendError(
                f"{self.base_url} does not serve {model!r} (it serves {sorted(served)})",
                transient=False,
                status=404,
            )

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
            body["max_tokens"] = request.max_tokens
        options = thaw(request.options)
        for ollama_name, value in options.items():
            if ollama_name in _OPTION_NAMES:
                body[_OPTION_NAMES[ollama_name]] = value
        if "num_predict" in options and request.max_tokens is None:
            body["max_tokens"] = options["num_predict"]
        if request.format == "json":
            body["response_format"] = {"type": "json_object"}
        elif request.format is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": thaw(request.format)},
            }
        prefix = request.resume_prefix
        if request.kind is JobKind.GENERATE:
            system = f"{request.system}\n\n" if request.system else ""
            body["prompt"] = system + request.prompt + prefix
            return "/v1/completions", body
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.system:
            messages.insert(0, {"role": "system", "content": request.system})
        if prefix and self.resume != "regenerate":
            if messages[-1]["role"] == "assistant":
                # The caller's own prefill was continued; the prefix carries on after it.
                messages[-1] = {**messages[-1], "content": messages[-1]["content"] + prefix}
            else:
                messages.append({"role": "assistant", "content": prefix})
            if self.resume == "continue_final_message":
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
        body["messages"] = messages
        return "/v1/chat/completions", body

    def _exchange(
        self, method: str, path: str, body: Mapping[str, Any] | None, cancel: CancelToken | None
    ) -> dict[str, Any]:
        """One request whose answer is a single JSON object."""
        with (
            guarded(cancel, self.base_url, "the OpenAI-compatible server") as abort,
            self._client.stream(method, path, json=body, extensions=abort.extensions) as response,
        ):
            abort.watch(response)
            _raise_for_status(response)
            return decode_object(response.read(), path)


class _Skipper:
    """Passes text on to the chunk sink after dropping its first ``skip`` characters
    (the regenerated prefix), and keeps what it passed on."""

    def __init__(self, skip: int, on_chunk: ChunkSink) -> None:
        self._skip = skip
        self._on_chunk = on_chunk
        self.pieces: list[str] = []

    def __call__(self, text: str) -> None:
        if self._skip:
            dropped = min(self._skip, len(text))
            text, self._skip = text[dropped:], self._skip - dropped
        if text:
            self.pieces.append(text)
            self._on_chunk(text)

    def result(self, data: Mapping[str, Any], done_reason: str, began_ns: int) -> BackendResult:
        return BackendResult(
            text="".join(self.pieces),
            metrics=_metrics(data, time.monotonic_ns() - began_ns),
            done_reason=done_reason,
        )


def _read_stream(
    response: httpx.Response, path: str, kind: JobKind, emit: _Skipper, began_ns: int
) -> BackendResult:
    """Read an SSE stream to ``data: [DONE]``; usage comes in a chunk without choices.

    A server that streams without usage (llama-cpp-python ignores ``stream_options``)
    sends one token per chunk, so the chunks with text count the generated tokens.
    """
    finish: str | None = None
    usage_chunk: dict[str, Any] = {}
    text_chunks = 0
    lines = response.iter_lines()
    for event in iter_sse(lines):
        if event.data == "[DONE]":
            drain(lines)
            break
        chunk = decode_object(event.data, path)
        if event.event == "error" or "error" in chunk:  # llama.cpp names it; vLLM does not
            raise BackendError(_error_message(chunk) or event.data, transient=True)
        text = _choice_text(chunk, kind)
        text_chunks += bool(text)
        emit(text)
        finish = _finish_reason(chunk) or finish
        if chunk.get("usage") or chunk.get("timings"):
            usage_chunk = chunk
    else:
        if finish is None:
            raise BackendError(
                f"the stream from {path} ended without [DONE] after {len(emit.pieces)} chunk(s)",
                transient=True,
            )
    if not usage_chunk.get("usage"):
        usage_chunk = {**usage_chunk, "usage": {"completion_tokens": text_chunks}}
    return emit.result(usage_chunk, finish or "stop", began_ns)


def _choice_text(data: Mapping[str, Any], kind: JobKind) -> str:
    """The new text in one chunk (``delta.content``) or answer (``message.content``)."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    if kind is JobKind.GENERATE:
        text = choice.get("text")
    else:
        message = choice.get("delta") or choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    return text if isinstance(text, str) else ""


def _finish_reason(data: Mapping[str, Any]) -> str | None:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return str(reason) if reason else None
    return None


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


def _error_message(data: Mapping[str, Any]) -> str:
    """The server's own message: ``{"error": {"message"}}`` (OpenAI, llama.cpp),
    ``{"message"}`` (vLLM) or ``{"detail"}`` (FastAPI servers)."""
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
    """Raise BackendError with the server's own message for an error status."""
    status = response.status_code
    if status < 400:
        return
    response.read()
    try:
        data = response.json()
        message = _error_message(data) if isinstance(data, dict) else ""
    except ValueError:
        message = response.text.strip()
    raise BackendError(
        message or f"HTTP {status} {response.reason_phrase}",
        transient=is_transient_status(status),
        status=status,
    )
