"""The Anthropic Messages API backend: the cloud slot's backend for cloud fallback.

``POST /v1/messages`` with the ``x-api-key`` and ``anthropic-version`` headers; streams
are server-sent events (``message_start``, ``content_block_delta``, ``message_delta``,
``message_stop``, ``ping``, ``error``). Jobs name local models, so the backend sends its
own ``model`` (a Claude model) instead. A generate job becomes one user message with
the prompt. Resuming uses assistant prefill, which the API continues; it refuses a
prefill that ends in whitespace, so that is trimmed and the same whitespace is dropped
from the start of the answer, so the caller sees the text join up as it would have.

Failures: 429 (rate limit), 5xx and 529 (overloaded) and ``overloaded_error`` /
``api_error`` events are transient; 400, 401, 403, 404 and 413 are permanent. The API
has no embeddings; residency is not ours to manage, so load and unload do nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

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

__all__ = ["ANTHROPIC_URL", "ANTHROPIC_VERSION", "AnthropicBackend"]

ANTHROPIC_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
_TRANSIENT_ERROR_TYPES = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)
_DONE_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
_OPTION_NAMES = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k"}
_SERVER = "the Anthropic API"
# Reads wait long: a long answer streams for minutes.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


class AnthropicBackend:
    """A Backend (``actors.backends.base``) for the Anthropic Messages API, over httpx.

    ``model`` replaces every job's (local) model name; ``max_tokens`` is used when a job
    sets none (the API requires one). ``transport`` replaces the network (e.g.
    ``httpx.MockTransport`` in tests); with it a cancel closes the response instead of
    shutting the socket.
    """

    def __init__(
        self,
        api_key: str,
        *,
        model: str,
        base_url: str = ANTHROPIC_URL,
        max_tokens: int = 1024,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        name: str = "anthropic",
    ) -> None:
        self.name = name
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.max_tokens = max_tokens
        self._client = new_client(self.base_url, timeout, transport)
        self._client.headers.update({"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION})

    def complete(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken
    ) -> BackendResult:
        """Run one call, streaming each text delta to ``on_chunk`` (see the module docstring)."""
        body, trimmed = self._body(request)
        emit = _Emitter(trimmed, on_chunk)
        began = time.monotonic_ns()
        with (
            guarded(cancel, self.base_url, _SERVER) as abort,
            self._client.stream(
                "POST", "/v1/messages", json=body, extensions=abort.extensions
            ) as response,
        ):
            abort.watch(response)
            _raise_for_status(response)
            if not request.stream:
                message = decode_object(response.read(), "/v1/messages")
                for block in message.get("content") or []:
                    if isinstance(block, dict) and block.get("type") == "text":
                        emit(str(block.get("text", "")))
                usage = message.get("usage")
                usage = usage if isinstance(usage, dict) else {}
                return emit.result(message.get("stop_reason"), usage, began)
            return _read_stream(response, emit, began)

    def embed(
        self, model: str, inputs: tuple[str, ...], options: Mapping[str, Any], cancel: CancelToken
    ) -> EmbedResult:
        """The Messages API has no embeddings: a permanent error."""
        raise BackendError("the Anthropic API has no embeddings endpoint", transient=False)

    def loaded_models(self) -> tuple[LoadedModel, ...]:
        """The models the key may use, from ``GET /v1/models``."""
        with (
            guarded(None, self.base_url, _SERVER) as abort,
            self._client.stream("GET", "/v1/models", extensions=abort.extensions) as response,
        ):
            _raise_for_status(response)
            data = decode_object(response.read(), "/v1/models")
        return tuple(
            LoadedModel(name=str(m["id"]))
            for m in data.get("data") or []
            if isinstance(m, dict) and m.get("id")
        )

    def load(self, model: str, keep_alive: str | float | None = None) -> None:
        """Nothing to do: cloud models are always there."""

    def unload(self, model: str) -> None:
        """Nothing to do: cloud models are not ours to evict."""

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def _body(self, request: BackendRequest) -> tuple[dict[str, Any], str]:
        """The JSON body, and the whitespace trimmed off the end of the prefill."""
        system = [request.system] if request.system else []
        messages: list[dict[str, str]] = []
        if request.kind is JobKind.GENERATE:
            messages.append({"role": "user", "content": request.prompt})
        for m in request.messages:
            if m.role == "system":
                system.append(m.content)
            else:
                role = "assistant" if m.role == "assistant" else "user"
                messages.append({"role": role, "content": m.content})
        prefill = request.resume_prefix
        if messages[-1]["role"] == "assistant":
            prefill = messages.pop()["content"] + prefill
        kept = prefill.rstrip()
        if kept:
            messages.append({"role": "assistant", "content": kept})
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens or self.max_tokens,
            "messages": messages,
            "stream": request.stream,
        }
        if system:
            body["system"] = "\n\n".join(system)
        options = thaw(request.options)
        for name, value in options.items():
            if name in _OPTION_NAMES:
                body[_OPTION_NAMES[name]] = value
        if "stop" in options:
            body["stop_sequences"] = options["stop"]
        return body, prefill[len(kept) :]


class _Emitter:
    """Passes text deltas on, first dropping the whitespace that was trimmed off the prefill
    (when the answer starts with it), and keeps what it passed on."""

    def __init__(self, trimmed: str, on_chunk: ChunkSink) -> None:
        self._trimmed = trimmed
        self._on_chunk = on_chunk
        self.pieces: list[str] = []

    def __call__(self, text: str) -> None:
        if self._trimmed:
            common = len(text) - len(text.lstrip())
            text = text[min(common, len(self._trimmed)) :]
            self._trimmed = "" if text else self._trimmed[common:]
        if text:
            self.pieces.append(text)
            self._on_chunk(text)

    def result(self, stop_reason: object, usage: Mapping[str, Any], began: int) -> BackendResult:
        return BackendResult(
            text="".join(self.pieces),
            metrics=JobMetrics(
                prompt_eval_count=int_field(usage.get("input_tokens")),
                eval_count=int_field(usage.get("output_tokens")),
                total_duration_ns=time.monotonic_ns() - began,
            ),
            done_reason=_DONE_REASONS.get(str(stop_reason), str(stop_reason or "stop")),
        )


def _read_stream(response: httpx.Response, emit: _Emitter, began: int) -> BackendResult:
    """Follow the event stream to ``message_stop``; usage comes in message_start and
    message_delta."""
    usage: dict[str, Any] = {}
    stop_reason: object = None
    lines = response.iter_lines()
    for event in iter_sse(lines):
        data = decode_object(event.data, "/v1/messages")
        kind = data.get("type", event.event)
        if kind == "error":
            found = data.get("error")
            error: dict[str, Any] = found if isinstance(found, dict) else {}
            message = str(error.get("message") or error.get("type") or "stream error")
            transient = error.get("type") in _TRANSIENT_ERROR_TYPES
            raise BackendError(message, transient=transient)
        if kind == "message_start":
            usage.update(data.get("message", {}).get("usage") or {})
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                emit(str(delta.get("text", "")))
        elif kind == "message_delta":
            stop_reason = (data.get("delta") or {}).get("stop_reason")
            usage.update(data.get("usage") or {})
        elif kind == "message_stop":
            drain(lines)
            return emit.result(stop_reason, usage, began)
    raise BackendError(
        f"the stream from {_SERVER} ended without message_stop after {len(emit.pieces)} chunk(s)",
        transient=True,
    )


def _raise_for_status(response: httpx.Response) -> None:
    """Raise BackendError with the API's own message for an error status."""
    status = response.status_code
    if status < 400:
        return
    response.read()
    message = ""
    try:
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message = f"{error.get('type', 'error')}: {error.get('message', '')}"
    except ValueError:
        message = response.text.strip()
    raise BackendError(
        message or f"HTTP {status} {response.reason_phrase}",
        transient=is_transient_status(status),
        status=status,
    )
