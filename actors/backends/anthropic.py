"""The Anthropic Messages API backend: the cloud slot's backend for cloud fallback.

``POST /v1/messages`` with the ``x-api-key`` and ``anthropic-version`` headers; streams
are server-sent events (``message_start``, ``content_block_start``/``_delta``/``_stop``,
``message_delta``, ``message_stop``, ``ping``, ``error``). Jobs name local models, so
the backend sends its own ``model`` (a Claude model) instead. A generate job becomes one
user message with the prompt. Resuming uses assistant prefill, which the API continues;
it refuses a prefill that ends in whitespace, so that is trimmed and the same
whitespace is dropped from the start of the answer.

The request is carried field by field, in the shapes of anthropic-sdk-python's
``types`` (docs/backends.md, "What each backend carries"): tools as ``{name,
description, input_schema}``; a message's tool calls as ``tool_use`` blocks and a tool
result as a ``tool_result`` block in a user turn (``actors.backends.translate.call_ids``
pairs them); images as base64 ``image`` blocks; ``think`` as ``thinking`` (a token
budget per level, or adaptive thinking with an effort: ``thinking_mode``); a ``format``
schema as ``output_config.format``. Streamed ``tool_use`` blocks are assembled from
their ``input_json_delta`` pieces and passed on whole; ``thinking`` blocks come back as
thinking. The API takes a thinking block back only with the ``signature`` it gave it,
which gpulane's messages have no place for, so the backend keeps the signed blocks of
the answers it read (by their thinking text and tool call ids, the latest
``SIGNED_ANSWERS``) and sends them back with the assistant turn they belong to.
Refused by name: raw, suffix, template, context, logprobs, ``format: "json"`` (the API
constrains output to a schema only), thinking it did not sign, and ``think`` with what
the API does not allow beside it (a prefill, ``temperature``, ``top_k``, a budget).

Failures: 429 (rate limit), 5xx and 529 (overloaded) and ``overloaded_error`` /
``api_error`` events are transient; 529, 503, a proxy's 502 and an ``overloaded_error``
event are the API's outage, not the request's failure; 400, 401, 403, 404 and 413 are
permanent. The API has no embeddings; residency is not ours to manage, so load and
unload do nothing.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
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
    ToolCallAssembly,
    call_ids,
    image_media_type,
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
    ValidationError,
    thaw,
)

__all__ = [
    "ANTHROPIC_URL",
    "ANTHROPIC_VERSION",
    "SIGNED_ANSWERS",
    "THINKING_BUDGETS",
    "AnthropicBackend",
    "ThinkingMode",
]

ANTHROPIC_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
_TRANSIENT_ERROR_TYPES = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)
# The API's outage, as anthropic-sdk-python's _exceptions.py names the statuses: 529
# OverloadedError (overloaded_error), 503 ServiceUnavailableError, and a proxy's 502.
# Its 504 is DeadlineExceededError (timeout_error): this request took too long, which is
# the request's failure, not the API's outage.
_OUTAGES = frozenset({502, 503, 529})
_OVERLOADED = "overloaded_error"
_DONE_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
_OPTION_NAMES = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k"}
_SERVER = "the Anthropic API"
# Reads wait long: a long answer streams for minutes.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)

ThinkingMode = Literal["budget", "adaptive"]
# The thinking budget per ``think`` level (true is medium): the API's least is 1024, and
# it advises batches above 32k.
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "max": 32000}
# How many answers' signed thinking blocks the backend keeps for their next turn.
SIGNED_ANSWERS = 1024


class AnthropicBackend:
    """A Backend (``actors.backends.base``) for the Anthropic Messages API, over httpx.

    ``model`` replaces every job's (local) model name; ``max_tokens`` is used when a job
    sets none (the API requires one; with a thinking budget the budget comes on top).
    ``thinking_mode`` is how ``think`` is sent: ``"budget"`` (``thinking: {type:
    enabled, budget_tokens}``, THINKING_BUDGETS; Claude 3.7 to 4.5) or ``"adaptive"``
    (``thinking: {type: adaptive}`` and a level as ``output_config.effort``; Claude 4.6
    and later, which deprecate or refuse budgets). ``transport`` replaces the network
    (e.g. ``httpx.MockTransport`` in tests); with it a cancel closes the response
    instead of shutting the socket.
    """

    carries = frozenset(
        {
            "format", "tools", "think", "images", "messages.images", "messages.thinking",
            "messages.tool_calls", "messages.tool_name", "messages.tool_call_id",
        }
    )  # fmt: skip

    def __init__(
        self,
        api_key: str,
        *,
        model: str,
        base_url: str = ANTHROPIC_URL,
        max_tokens: int = 1024,
        thinking_mode: ThinkingMode = "budget",
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        name: str = "anthropic",
    ) -> None:
        if thinking_mode not in ("budget", "adaptive"):
            raise ValueError(f"thinking_mode must be budget or adaptive, got {thinking_mode!r}")
        self.name = name
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.max_tokens = max_tokens
        self.thinking_mode: ThinkingMode = thinking_mode
        self._signed = _SignedThinking(SIGNED_ANSWERS)
        self._client = new_client(self.base_url, timeout, transport)
        self._client.headers.update({"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION})

    def check_request(self, request: BackendRequest) -> None:
        """Refuse, naming the field, what the API cannot carry in ``request`` (module
        docstring)."""
        if request.format == "json":
            raise ValidationError(
                "format",
                "the Anthropic API constrains an answer to a JSON schema, not to any JSON",
                allowed="a JSON schema object",
            )
        thinks = request.think not in (None, False)
        for name in ("temperature", "top_k"):
            if thinks and name in request.options:
                raise ValidationError(
                    f"options.{name}", "the Anthropic API takes no sampling change with think"
                )
        prefilled = bool(request.messages) and request.messages[-1].role == "assistant"
        if thinks and (prefilled or request.resume_prefix):
            raise ValidationError(
                "think",
                "the Anthropic API does not continue an assistant's answer with thinking on "
                "(this one ends in an assistant message, or resumes a cut-off answer)",
            )
        limit = request.max_tokens
        if thinks and self.thinking_mode == "budget" and limit and limit <= THINKING_BUDGETS["low"]:
            raise ValidationError(
                "think",
                f"needs max_tokens above {THINKING_BUDGETS['low']}: the Anthropic API's "
                "thinking budget is at least that and less than max_tokens",
            )
        for index, image in enumerate(request.images):
            image_media_type(image, f"images[{index}]")
        _, answers = call_ids(request.messages)
        for index, message in enumerate(request.messages):
            self._check_message(index, message, answers[index])

    def _check_message(self, index: int, message: ChatMessage, answer: str | None) -> None:
        field = f"messages[{index}]"
        if message.images and message.role in ("assistant", "system"):
            raise ValidationError(
                f"{field}.images",
                f"the Anthropic API takes no images in {message.role} turns",
                allowed="images on user and tool messages",
            )
        for i_index, image in enumerate(message.images):
            image_media_type(image, f"{field}.images[{i_index}]")
        if message.role == "tool" and answer is None:
            raise ValidationError(
                f"{field}.tool_name" if message.tool_name else f"{field}.tool_call_id",
                "answers no earlier tool call, and the Anthropic API pairs every tool "
                "result with the call it answers",
                allowed="a tool message after the assistant message that made the call",
            )
        if message.thinking and self._signed.for_text(message.thinking) is None:
            raise ValidationError(
                f"{field}.thinking",
                "the Anthropic API takes back only thinking it signed, and this backend "
                "has no signature for it (thinking from another model, or from before a "
                "restart)",
                allowed="the thinking of an answer this backend read, or none",
            )

    def complete(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken
    ) -> BackendResult:
        """Run one call, streaming each new piece (text, thinking, whole tool calls) to
        ``on_chunk`` (see the module docstring)."""
        refuse_unsupported(self, request)
        body, trimmed = self._body(request)
        collector = Collector(on_chunk)
        reader = _Reader(_Trimmer(trimmed, collector))
        began = time.monotonic_ns()
        with (
            guarded(cancel, self.base_url, _SERVER) as abort,
            self._client.stream(
                "POST", "/v1/messages", json=body, extensions=abort.extensions
            ) as response,
        ):
            abort.watch(response)
            _raise_for_status(response)
            if request.stream:
                stop_reason, usage = reader.stream(response)
            else:
                message = decode_object(response.read(), "/v1/messages")
                stop_reason, usage = reader.whole(message)
        self._signed.keep(collector.thinking, reader.signed_blocks, reader.call_ids)
        metrics = JobMetrics(
            prompt_eval_count=int_field(usage.get("input_tokens")),
            eval_count=int_field(usage.get("output_tokens")),
            total_duration_ns=time.monotonic_ns() - began,
        )
        reason = str(stop_reason or "stop")
        return collector.result(metrics, _DONE_REASONS.get(reason, reason))

    def embed(
        self,
        model: str,
        inputs: tuple[str, ...],
        options: Mapping[str, Any],
        cancel: CancelToken,
        *,
        keep_alive: str | float | None = None,
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

    def list_models(self) -> tuple[str, ...]:
        """Refused: the cloud fallback answers every job with its own ``model``, so it has
        no catalog of the names jobs carry (its Claude model would match no job)."""
        why = f"it answers every job with {self.model!r}, whatever model the job names"
        raise BackendError(f"the Anthropic backend has no catalog: {why}", transient=False)

    def load(
        self, model: str, keep_alive: str | float | None = None, *, embedding: bool = False
    ) -> None:
        """Nothing to do: cloud models are always there."""

    def unload(self, model: str) -> None:
        """Nothing to do: cloud models are not ours to evict."""

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    # ----------------------------------------------------------------- the body

    def _body(self, request: BackendRequest) -> tuple[dict[str, Any], str]:
        """The JSON body, and the whitespace trimmed off the end of the prefill."""
        system = [request.system] if request.system else []
        turns: list[tuple[str, list[dict[str, Any]]]] = []
        if request.kind is JobKind.GENERATE:
            blocks = _image_blocks(request.images, "images")
            turns.append(("user", [*blocks, {"type": "text", "text": request.prompt}]))
        ids, answers = call_ids(request.messages)
        for index, message in enumerate(request.messages):
            if message.role == "system":
                system.append(message.content)
                continue
            role, blocks = self._turn(index, message, ids[index], answers[index])
            if turns and turns[-1][0] == role:  # the API joins such turns too
                turns[-1][1].extend(blocks)
            else:
                turns.append((role, blocks))
        prefill = request.resume_prefix
        if turns and turns[-1][0] == "assistant" and _texts_only(turns[-1][1]):
            prefill = "".join(block["text"] for block in turns.pop()[1]) + prefill
        kept = prefill.rstrip()
        if kept:
            turns.append(("assistant", [{"type": "text", "text": kept}]))
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens or self.max_tokens,
            "messages": [{"role": role, "content": _content(blocks)} for role, blocks in turns],
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
        if request.tools:
            body["tools"] = [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": thaw(tool.parameters) or {"type": "object"},
                }
                for tool in request.tools
            ]
        if request.format is not None:
            schema = {"type": "json_schema", "schema": thaw(request.format)}
            body["output_config"] = {"format": schema}
        self._think(body, request)
        return body, prefill[len(kept) :]

    def _turn(
        self, index: int, message: ChatMessage, ids: Sequence[str], answer: str | None
    ) -> tuple[str, list[dict[str, Any]]]:
        """One message as a (role, content blocks) turn."""
        images = _image_blocks(message.images, f"messages[{index}].images")
        text = [{"type": "text", "text": message.content}] if message.content else []
        if message.role == "tool":
            if answer is None:  # check_request names it
                raise ValidationError(f"messages[{index}]", "answers no earlier tool call")
            content = [*text, *images] if images else message.content
            return "user", [{"type": "tool_result", "tool_use_id": answer, "content": content}]
        if message.role == "assistant":
            uses = [
                {
                    "type": "tool_use",
                    "id": call_id,
                    "name": call.name,
                    "input": thaw(call.arguments),
                }
                for call_id, call in zip(ids, message.tool_calls, strict=True)
            ]
            return "assistant", [*self._signed_blocks(index, message, ids), *text, *uses]
        return "user", [*images, *(text or [{"type": "text", "text": ""}])]

    def _signed_blocks(
        self, index: int, message: ChatMessage, ids: Sequence[str]
    ) -> tuple[dict[str, Any], ...]:
        """The signed thinking blocks of an assistant turn this backend read: found by the
        turn's thinking, or, when a client left the thinking out, by its tool calls (the
        API needs them back while a tool call is answered, with thinking on)."""
        if message.thinking:
            blocks = self._signed.for_text(message.thinking)
            if blocks is None:  # check_request names it
                raise ValidationError(f"messages[{index}].thinking", "was not signed by the API")
            return blocks
        return next((b for b in map(self._signed.for_call, ids) if b is not None), ())

    def _think(self, body: dict[str, Any], request: BackendRequest) -> None:
        """``think`` as the configured thinking mode sends it (class docstring)."""
        if request.think is None:
            return
        level = "medium" if request.think is True else request.think
        if self.thinking_mode == "adaptive":
            if request.think is False:
                body["thinking"] = {"type": "disabled"}
                return
            body["thinking"] = {"type": "adaptive"}
            if isinstance(request.think, str):
                body.setdefault("output_config", {})["effort"] = level
            return
        if request.think is False:  # these models think only when asked to
            return
        budget = THINKING_BUDGETS[str(level)]
        if request.max_tokens:
            budget = min(budget, request.max_tokens - 1)
        else:
            body["max_tokens"] = self.max_tokens + budget
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _image_blocks(images: Sequence[str], field: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": image_media_type(image, f"{field}[{index}]"),
                "data": image,
            },
        }
        for index, image in enumerate(images)
    ]


def _texts_only(blocks: Sequence[Mapping[str, Any]]) -> bool:
    return all(block["type"] == "text" for block in blocks)


def _content(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A turn's content: a lone text block as the plain string the API also takes."""
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return str(blocks[0]["text"])
    return blocks


class _SignedThinking:
    """The signed thinking blocks of the latest answers, by their thinking text and by
    their tool call ids (thread-safe: the cloud slots share the backend)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._blocks: OrderedDict[tuple[str, str], tuple[dict[str, Any], ...]] = OrderedDict()

    def keep(self, thinking: str, blocks: Sequence[dict[str, Any]], ids: Sequence[str]) -> None:
        """Remember an answer's blocks (none: nothing to remember)."""
        if not blocks:
            return
        keys = [("call", call_id) for call_id in ids]
        if thinking:
            keys.append(("text", thinking))
        with self._lock:
            for key in keys:
                self._blocks[key] = tuple(blocks)
                self._blocks.move_to_end(key)
            while len(self._blocks) > self._size:
                self._blocks.popitem(last=False)

    def for_text(self, thinking: str) -> tuple[dict[str, Any], ...] | None:
        with self._lock:
            return self._blocks.get(("text", thinking))

    def for_call(self, call_id: str) -> tuple[dict[str, Any], ...] | None:
        with self._lock:
            return self._blocks.get(("call", call_id))


class _Trimmer:
    """Passes pieces on to the collector, first dropping the whitespace that was trimmed
    off the prefill from the start of the answer's text (when it starts with it)."""

    def __init__(self, trimmed: str, collector: Collector) -> None:
        self._trimmed = trimmed
        self._collector = collector

    def __call__(self, piece: Chunk) -> None:
        if self._trimmed and piece.text:
            text = piece.text
            common = len(text) - len(text.lstrip())
            text = text[min(common, len(self._trimmed)) :]
            self._trimmed = "" if text else self._trimmed[common:]
            piece = piece.with_parts(text=text)
        self._collector.emit(piece)


class _Reader:
    """Reads an answer's content blocks (streamed or whole) into pieces, and keeps its
    signed thinking blocks and tool call ids for the next turn."""

    def __init__(self, emit: _Trimmer) -> None:
        self._emit = emit
        self._calls = ToolCallAssembly(_SERVER)
        self._open: dict[int, dict[str, Any]] = {}  # streamed blocks not stopped yet
        self.signed_blocks: list[dict[str, Any]] = []
        self.call_ids: list[str] = []

    def whole(self, message: Mapping[str, Any]) -> tuple[object, Mapping[str, Any]]:
        """Read a whole message; its stop reason and usage."""
        text: list[str] = []
        thinking: list[str] = []
        for index, block in enumerate(message.get("content") or []):
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                text.append(str(block.get("text", "")))
            elif kind == "thinking":
                thinking.append(str(block.get("thinking", "")))
            if kind == "tool_use":
                self._begin(index, block)
            elif kind in ("thinking", "redacted_thinking"):
                self.signed_blocks.append(block)
        calls = self._calls.finish_all()
        self.call_ids.extend(call.id for call in calls if call.id)
        self._emit(Chunk("".join(text), thinking="".join(thinking), tool_calls=calls))
        usage = message.get("usage")
        return message.get("stop_reason"), usage if isinstance(usage, dict) else {}

    def stream(self, response: httpx.Response) -> tuple[object, Mapping[str, Any]]:
        """Follow the event stream to ``message_stop``; its stop reason and usage (from
        ``message_start`` and ``message_delta``)."""
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
                error_type = error.get("type")
                raise BackendError(
                    message,
                    transient=error_type in _TRANSIENT_ERROR_TYPES,
                    outage=error_type == _OVERLOADED,
                )
            if kind == "message_start":
                usage.update(data.get("message", {}).get("usage") or {})
            elif kind == "content_block_start":
                self._begin(int_field(data.get("index")), data.get("content_block") or {})
            elif kind == "content_block_delta":
                self._delta(int_field(data.get("index")), data.get("delta") or {})
            elif kind == "content_block_stop":
                self._stop(int_field(data.get("index")))
            elif kind == "message_delta":
                stop_reason = (data.get("delta") or {}).get("stop_reason")
                usage.update(data.get("usage") or {})
            elif kind == "message_stop":
                drain(lines)
                return stop_reason, usage
        raise BackendError(f"the stream from {_SERVER} ended without message_stop", transient=True)

    def _begin(self, index: int, block: Mapping[str, Any]) -> None:
        kind = block.get("type")
        if kind == "tool_use":
            self._calls.add(
                index,
                id=str(block.get("id") or ""),
                name=str(block.get("name") or ""),
                whole=block.get("input") if isinstance(block.get("input"), dict) else None,
            )
        elif kind in ("thinking", "redacted_thinking"):
            self._open[index] = dict(block)
        if kind == "text" and block.get("text"):
            self._emit(Chunk(str(block["text"])))

    def _delta(self, index: int, delta: Mapping[str, Any]) -> None:
        kind = delta.get("type")
        if kind == "text_delta":
            self._emit(Chunk(str(delta.get("text", ""))))
        elif kind == "thinking_delta":
            piece = str(delta.get("thinking", ""))
            block = self._open.get(index)
            if block is not None:
                block["thinking"] = str(block.get("thinking", "")) + piece
            self._emit(Chunk(thinking=piece))
        elif kind == "signature_delta" and index in self._open:
            self._open[index]["signature"] = str(delta.get("signature", ""))
        elif kind == "input_json_delta":
            self._calls.add(index, arguments=str(delta.get("partial_json", "")))

    def _stop(self, index: int) -> None:
        if index in self._open:
            self.signed_blocks.append(self._open.pop(index))
        elif index in self._calls.open_indexes:
            call = self._calls.finish(index)
            self.call_ids.extend([call.id] if call.id else [])
            self._emit(Chunk(tool_calls=(call,)))


def _raise_for_status(response: httpx.Response) -> None:
    """Raise BackendError with the API's own message for an error status (see _OUTAGES
    for which are the API's outage)."""
    raise_for_status(response, _error_message, _OUTAGES)


def _error_message(data: object) -> str:
    """The API's ``{"error": {"type", "message"}}`` as ``type: message``."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return ""
    return f"{error.get('type', 'error')}: {error.get('message', '')}"
