"""The Ollama backend: chat, generate, embed and residency calls over httpx.

Every call can be cancelled from another thread: cancelling shuts the call's socket,
which makes Ollama stop generating (it stops when its client goes away); see
``actors.backends.http``. Failures become ``protocol.BackendError`` with ``transient``
set as docs/architecture.md section 3 says.

Ollama is spoken natively: every request field is sent as Ollama's ``api/types.go``
names it (tools, think, format, images, raw, suffix, template, context, logprobs and
top_logprobs, and messages' thinking, tool calls and tool names), and every stream line
is read for its text, thinking, tool calls and logprobs, the last one for the done
reason, the metrics and generate's context.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from actors.backends.base import CancelToken, ChunkSink
from actors.backends.http import (
    decode_object,
    drain,
    guarded,
    int_field,
    new_client,
    raise_for_status,
)
from protocol import (
    REQUEST_FEATURES,
    BackendError,
    BackendRequest,
    BackendResult,
    Chunk,
    EmbedResult,
    JobKind,
    JobMetrics,
    LoadedModel,
    ToolCall,
    ValidationError,
    thaw,
)
from protocol.output import Logprob, logprobs_from

__all__ = ["DEFAULT_TIMEOUT", "OllamaBackend"]

# Reads wait long: a first token can follow a model load of a minute or more.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)

# Ollama reports "keep forever" as now plus Go's largest duration (about 292 years).
_FOREVER_AFTER_SECONDS = 100 * 365 * 86_400


class OllamaBackend:
    """A Backend (``actors.backends.base``) for one Ollama server, over one httpx.Client.

    ``transport`` replaces the network (e.g. ``httpx.MockTransport`` in tests); with a
    custom transport a cancel closes the response instead of shutting the socket.
    """

    carries = REQUEST_FEATURES  # Ollama's API is the model of the request: all of it

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        name: str = "ollama",
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._client = new_client(self.base_url, timeout, transport)

    # ------------------------------------------------------------------ Backend

    def complete(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken
    ) -> BackendResult:
        """Run one chat or generate call, streaming each new piece (a ``protocol.Chunk``:
        text, thinking, tool calls, logprobs) to ``on_chunk``.

        With a ``resume_prefix`` the model continues after it and only new text comes back.
        """
        path, body = _completion_body(request)
        answer = _Answer()
        with guarded(cancel, self.base_url, "Ollama") as abort:
            with self._client.stream(
                "POST", path, json=body, extensions=abort.extensions
            ) as response:
                abort.watch(response)
                _raise_for_status(response)
                lines = response.iter_lines()
                for line in lines:
                    if not line.strip():
                        continue
                    part = decode_object(line, path)
                    if "error" in part:
                        raise BackendError(str(part["error"]), transient=True)
                    piece = _piece(part, request.kind, path)
                    if not piece.is_empty:
                        answer.add(piece)
                        on_chunk(piece)
                    if part.get("done"):
                        drain(lines)
                        return answer.result(part)
            raise BackendError(
                f"the stream from {path} ended without its final line after "
                f"{answer.pieces} chunk(s)",
                transient=True,
            )

    def embed(
        self,
        model: str,
        inputs: tuple[str, ...],
        options: Mapping[str, Any],
        cancel: CancelToken,
        *,
        keep_alive: str | float | None = None,
    ) -> EmbedResult:
        """Embed each input with ``/api/embed`` (``keep_alive`` sent when given)."""
        body: dict[str, Any] = {"model": model, "input": list(inputs)}
        if options:
            body["options"] = thaw(options)
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        data = self._exchange("POST", "/api/embed", body, cancel)
        vectors = data.get("embeddings")
        if not isinstance(vectors, list):
            raise BackendError("/api/embed answered without embeddings", transient=True)
        return EmbedResult(
            model=model,
            embeddings=tuple(tuple(float(x) for x in vector) for vector in vectors),
            metrics=_metrics(data),
        )

    def loaded_models(self) -> tuple[LoadedModel, ...]:
        """The models resident now, from ``/api/ps`` (names as Ollama spells them)."""
        data = self._exchange("GET", "/api/ps", None, None)
        models = data.get("models") or []
        return tuple(
            LoadedModel(
                name=str(m.get("name") or m.get("model") or ""),
                size_bytes=int_field(m.get("size")),
                size_vram_bytes=int_field(m.get("size_vram")),
                expires_at=_expiry(m.get("expires_at")),
                context_length=int_field(m.get("context_length")) or None,
            )
            for m in models
            if isinstance(m, dict)
        )

    def list_models(self) -> tuple[str, ...]:
        """The models the server has, from ``/api/tags``: each entry's ``name`` (its
        ListHandler answers ``{"models": [...]}``, ``null`` when there are none;
        server/routes.go, api/types.go ListResponse)."""
        data = self._exchange("GET", "/api/tags", None, None)
        return tuple(
            str(m.get("name") or m.get("model"))
            for m in data.get("models") or []
            if isinstance(m, dict) and (m.get("name") or m.get("model"))
        )

    def load(
        self, model: str, keep_alive: str | float | None = None, *, embedding: bool = False
    ) -> None:
        """Load ``model`` with an empty request, as Ollama loads one: a generate request
        for a chat model, an embed request for an embedding model.

        Ollama refuses an empty ``/api/generate`` for a model without the completion
        capability (400 ``"<model>" does not support generate``), while its EmbedHandler
        loads any model through scheduleRunner and answers an empty ``input`` with no
        embeddings (server/routes.go).
        """
        body: dict[str, Any] = {"model": model}
        if embedding:
            path, body["input"] = "/api/embed", []
        else:
            path, body["stream"] = "/api/generate", False
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        self._exchange("POST", path, body, None)

    def unload(self, model: str) -> None:
        """Evict ``model`` now: an empty generate request with ``keep_alive`` 0."""
        self._exchange("POST", "/api/generate", {"model": model, "keep_alive": 0}, None)

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._client.close()

    # ----------------------------------------------------------------- plumbing

    def _exchange(
        self, method: str, path: str, body: Mapping[str, Any] | None, cancel: CancelToken | None
    ) -> dict[str, Any]:
        """One request whose answer is a single JSON object."""
        with (
            guarded(cancel, self.base_url, "Ollama") as abort,
            self._client.stream(method, path, json=body, extensions=abort.extensions) as response,
        ):
            abort.watch(response)
            _raise_for_status(response)
            return decode_object(response.read(), path)


class _Answer:
    """The pieces of one call's answer, gathered as they stream."""

    def __init__(self) -> None:
        self.pieces = 0
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._tool_calls: list[ToolCall] = []
        self._logprobs: list[Logprob] = []

    def add(self, piece: Chunk) -> None:
        self.pieces += 1
        self._text.append(piece.text)
        self._thinking.append(piece.thinking)
        self._tool_calls.extend(piece.tool_calls)
        self._logprobs.extend(piece.logprobs)

    def result(self, final: Mapping[str, Any]) -> BackendResult:
        """The whole answer, with the final line's done reason, metrics and context."""
        context = final.get("context")
        return BackendResult(
            text="".join(self._text),
            metrics=_metrics(final),
            done_reason=str(final.get("done_reason") or "stop"),
            thinking="".join(self._thinking),
            tool_calls=tuple(self._tool_calls),
            logprobs=tuple(self._logprobs),
            context=tuple(int_field(t) for t in context) if isinstance(context, list) else (),
        )


def _completion_body(request: BackendRequest) -> tuple[str, dict[str, Any]]:
    """The Ollama path and JSON body for a chat or generate request (with resume)."""
    body: dict[str, Any] = {"model": request.model, "stream": request.stream}
    options = dict(thaw(request.options))
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if options:
        body["options"] = options
    if request.format is not None:
        body["format"] = thaw(request.format)
    if request.keep_alive is not None:
        body["keep_alive"] = request.keep_alive
    if request.think is not None:
        body["think"] = request.think
    if request.logprobs:
        body["logprobs"] = True
    if request.top_logprobs:
        body["top_logprobs"] = request.top_logprobs
    prefix = request.resume_prefix
    if request.kind is JobKind.CHAT:
        messages = [m.to_dict() for m in request.messages]
        if request.system:
            messages.insert(0, {"role": "system", "content": request.system})
        if prefix and messages and messages[-1]["role"] == "assistant":
            # The caller's own prefill was continued; the prefix carries on after it.
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + prefix}
        elif prefix:
            messages.append({"role": "assistant", "content": prefix})
        body["messages"] = messages
        if request.tools:
            body["tools"] = [tool.to_dict() for tool in request.tools]
        return "/api/chat", body
    body["prompt"] = request.prompt + prefix
    if request.system is not None:
        body["system"] = request.system
    for name in ("suffix", "template"):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    if request.images:
        body["images"] = list(request.images)
    if request.context:
        body["context"] = list(request.context)
    if request.raw:
        body["raw"] = True
    return "/api/generate", body


def _piece(part: Mapping[str, Any], kind: JobKind, path: str) -> Chunk:
    """What is new in one response line: text, thinking, tool calls, logprobs (chat keeps
    the first three in ``message``, generate at the top level)."""
    if kind is JobKind.CHAT:
        message = part.get("message")
        source: Mapping[str, Any] = message if isinstance(message, dict) else {}
        text = source.get("content")
    else:
        source = part
        text = part.get("response")
    thinking = source.get("thinking")
    try:
        calls = tuple(
            ToolCall.parse(call, f"tool_calls[{index}]")
            for index, call in enumerate(source.get("tool_calls") or ())
        )
    except ValidationError as exc:
        raise BackendError(f"{path} sent a malformed tool call: {exc}", transient=False) from None
    return Chunk(
        text if isinstance(text, str) else "",
        thinking=thinking if isinstance(thinking, str) else "",
        tool_calls=calls,
        logprobs=logprobs_from(part.get("logprobs")),
    )


def _raise_for_status(response: httpx.Response) -> None:
    """Raise BackendError with Ollama's own message for an error status; a 503 (the
    scheduler's ErrMaxQueue, "server busy", server/sched.go) is the server's outage."""
    raise_for_status(response, _error_message)


def _error_message(data: object) -> str:
    """Ollama's ``{"error": "..."}``."""
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else ""


def _metrics(part: Mapping[str, Any]) -> JobMetrics:
    """The timings and counts Ollama reports on a final line, in nanoseconds."""
    return JobMetrics(
        load_duration_ns=int_field(part.get("load_duration")),
        prompt_eval_count=int_field(part.get("prompt_eval_count")),
        prompt_eval_duration_ns=int_field(part.get("prompt_eval_duration")),
        eval_count=int_field(part.get("eval_count")),
        eval_duration_ns=int_field(part.get("eval_duration")),
        total_duration_ns=int_field(part.get("total_duration")),
    )


def _expiry(value: object) -> float | None:
    """``expires_at`` as epoch seconds; None for "forever" (a far-future year) or unknown."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.year <= 1:  # Go's zero time: no expiry set
        return None
    epoch = moment.timestamp()
    return None if epoch - time.time() > _FOREVER_AFTER_SECONDS else epoch
