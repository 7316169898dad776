"""OpenAI's chat format and a gpulane job, both ways (docs/gateway.md, "Compatibility").

A chat completion request becomes JobSpec fields: messages with their content parts
(text, and images as ``data:`` URLs), an assistant's ``tool_calls`` (their JSON-string
arguments decoded) and reasoning, ``tool`` messages answering a call by
``tool_call_id``; ``tools`` and ``tool_choice``; ``response_format`` as ``format``;
``reasoning_effort`` as ``think``; logprobs. What a job cannot carry is a 400 naming the
field. The answer goes back as OpenAI's message (``tool_calls`` with JSON-string
arguments, ``reasoning_content`` for thinking, as vLLM and DeepSeek send it), stream
deltas and ``finish_reason``; the shapes follow openai-python's ``types/chat`` and the
translation Ollama's own ``openai/openai.go`` makes, where the two agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from actors.gateway.errors import GatewayError
from actors.gateway.request_fields import check_image, refuse_uncarried
from protocol import Answer, Chunk, Job, Logprob, ToolCall
from protocol.frozen import thaw

__all__ = [
    "ChatAnswers",
    "ChatMessageIn",
    "ReasoningEffort",
    "ResponseFormat",
    "chat_messages",
    "finish_reason",
    "response_format",
    "think_for",
    "tools_for",
]

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max", "ultra"]
# reasoning_effort → think, as Ollama's openai.go maps it: OpenAI's scale reaches past
# Ollama's at both ends, so "minimal" is "low" and "xhigh" (and "ultra") "max".
_THINK_FOR: Mapping[ReasoningEffort, bool | str] = {
    "none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
    "xhigh": "max", "max": "max", "ultra": "max",
}  # fmt: skip
_PART_TYPES = ("text", "image_url")
_TOOL_CHOICES = ("auto", "none")
_FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")


class ImageURL(BaseModel):
    """An ``image_url`` part's image: a ``data:`` URL (``detail`` is a hint for OpenAI's
    own image tiling, which a local model does not have)."""

    model_config = ConfigDict(extra="ignore")

    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(BaseModel):
    """One part of a message's content; the type is checked when the message is translated,
    so that the error names the part."""

    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None


class CallFunction(BaseModel):
    """The function of an assistant's tool call: its arguments a JSON string (an object is
    taken too)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str | dict[str, Any] = ""


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant turn."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    type: str = "function"
    function: CallFunction


class ChatMessageIn(BaseModel):
    """One chat turn as OpenAI's clients send it; ``developer`` is ``system``. ``reasoning``
    is Ollama's name for ``reasoning_content``."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema the answer must satisfy (Ollama holds the
    model to it with a grammar, so ``strict`` is honoured either way)."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: free text, any JSON object, or JSON satisfying a schema."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


# --------------------------------------------------------------------------- request


def chat_messages(
    messages: list[ChatMessageIn], *, name_tools: bool, max_image_bytes: int
) -> list[dict[str, Any]]:
    """The messages as JobSpec takes them. ``name_tools``: give a ``tool`` message the name
    of the call it answers (found by ``tool_call_id``), as Ollama's own OpenAI layer does
    for the Ollama models whose templates show a tool result under its tool's name; an
    image over ``max_image_bytes`` (decoded) is a 413 naming its part."""
    called: dict[str, str] = {}  # tool call id -> function name, the latest call winning
    out = []
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        refuse_uncarried(
            (
                (f"{field}.name", message.name is not None and message.role != "tool",
                 "a model server takes no participant names"),
                (f"{field}.refusal", bool(message.refusal),
                 "send an assistant's refusal as its content"),
                (f"{field}.audio", message.audio is not None, "gpulane answers in text only"),
                (f"{field}.function_call", message.function_call is not None,
                 "the deprecated function calling; send tool_calls"),
            )
        )  # fmt: skip
        text, images = _content(field, message, max_image_bytes)
        turn: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": text,
        }
        if images:
            turn["images"] = images
        thinking = message.reasoning_content or message.reasoning
        if thinking:
            turn["thinking"] = thinking
        calls = [
            _call(f"{field}.tool_calls[{j}]", c) for j, c in enumerate(message.tool_calls or ())
        ]
        if calls:
            turn["tool_calls"] = calls
        if message.role == "tool":
            turn["tool_call_id"] = message.tool_call_id
            by_id = called.get(message.tool_call_id or "") if name_tools else None
            turn["tool_name"] = message.name or by_id
        called.update((c["id"], c["function"]["name"]) for c in calls if "id" in c)
        out.append(turn)
    return out


def _content(field: str, message: ChatMessageIn, max_image_bytes: int) -> tuple[str, list[str]]:
    """A message's text (text parts joined by line breaks, as vLLM joins them) and images."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[str] = []
    for index, part in enumerate(content):
        where = f"{field}.content[{index}]"
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type == "image_url" and part.image_url is not None:
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            images.append(_image(f"{where}.image_url", url, max_image_bytes))
        elif part.type == "image_url":
            raise GatewayError(400, "is missing", field=f"{where}.image_url")
        else:
            raise GatewayError(
                400, f"gpulane cannot carry a {part.type!r} part", field=f"{where}.type",
                allowed=_PART_TYPES,
            )  # fmt: skip
    return "\n".join(texts), images


def _image(field: str, url: str, max_bytes: int) -> str:
    """The base64 image of a ``data:`` URL (``data:image/png;base64,...``, or with no
    media type, as Ollama takes it); a remote URL is refused: gpulane fetches nothing."""
    allowed = "a data URL, data:image/png;base64,..."
    if url.startswith(("http://", "https://")):
        raise GatewayError(
            400, "is a remote image; gpulane does not fetch images", field=field, allowed=allowed
        )
    head, comma, data = url.partition(",")
    media = head.removeprefix("data:").removesuffix(";base64")
    if not (comma and head.startswith("data:") and head.endswith(";base64")) or not (
        media == "" or media.startswith("image/")
    ):
        raise GatewayError(
            400, "is not a base64 data URL of an image", field=field, allowed=allowed
        )
    return check_image(field, data, max_bytes)


def _call(field: str, call: ToolCallIn) -> dict[str, Any]:
    """An earlier tool call as JobSpec takes it: its arguments decoded into an object."""
    if call.type != "function":
        raise GatewayError(
            400, f"unknown tool call type {call.type!r}", field=f"{field}.type",
            allowed=("function",),
        )  # fmt: skip
    arguments: Any = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise GatewayError(
                400, f"is not JSON: {exc}", field=f"{field}.function.arguments",
                allowed="a JSON object, as a string",
            ) from None  # fmt: skip
    if not isinstance(arguments, dict):
        raise GatewayError(
            400, f"is JSON but not an object: {call.function.arguments!r}"[:300],
            field=f"{field}.function.arguments", allowed="a JSON object, as a string",
        )  # fmt: skip
    out: dict[str, Any] = {"function": {"name": call.function.name, "arguments": arguments}}
    if call.id:
        out["id"] = call.id
    return out


def tools_for(
    tools: list[dict[str, Any]] | None, choice: str | dict[str, Any] | None
) -> tuple[Any, ...]:
    """The tools a job offers: function tools (OpenAI's ``strict``, a promise that the
    arguments satisfy the schema, only when false) as ``tool_choice`` leaves them:
    ``auto`` all, ``none`` none; a choice that forces a call cannot be carried."""
    if choice not in (None, *_TOOL_CHOICES):
        forced = "a tool call" if choice == "required" else "a call of one tool"
        raise GatewayError(
            400, f"gpulane cannot make the model make {forced}: a model server only offers "
            "tools, which the model may call or not", field="tool_choice", allowed=_TOOL_CHOICES,
        )  # fmt: skip
    if choice == "none":
        return ()
    offered = []
    for index, tool in enumerate(tools or ()):
        kind = tool.get("type", "function")
        if kind != "function":
            raise GatewayError(
                400, f"gpulane cannot carry a {kind!r} tool", field=f"tools[{index}].type",
                allowed=("function",),
            )  # fmt: skip
        function = tool.get("function")
        if isinstance(function, Mapping) and "strict" in function:
            if function["strict"] is True:
                raise GatewayError(
                    400, "gpulane cannot carry it: a model server does not hold tool "
                    "arguments to their schema", field=f"tools[{index}].function.strict",
                    allowed=("false", "null"),
                )  # fmt: skip
            tool = {**tool, "function": {k: v for k, v in function.items() if k != "strict"}}
        offered.append(tool)
    return tuple(offered)


def response_format(given: ResponseFormat | None) -> str | dict[str, Any] | None:
    """``format``: ``"json"`` for ``json_object`` (and a ``json_schema`` without a schema),
    the schema for ``json_schema``, none for ``text``."""
    if given is None or given.type == "text":
        return None
    if given.type == "json_object":
        return "json"
    if given.json_schema is None:
        raise GatewayError(400, "is missing", field="response_format.json_schema")
    return given.json_schema.json_schema or "json"


def think_for(effort: ReasoningEffort | None) -> bool | str | None:
    """``think`` for a ``reasoning_effort`` (None: the model's default)."""
    return None if effort is None else _THINK_FOR[effort]


# --------------------------------------------------------------------------- answer


def finish_reason(job: Job, called: bool) -> str:
    """OpenAI's finish reason for the backend's own done reason: ``tool_calls`` when the
    answer has calls (in place of ``stop``), ``length`` when the token limit cut it."""
    reason = (job.output.done_reason if job.output is not None else None) or "stop"
    if reason in ("stop", "tool_calls"):
        return "tool_calls" if called else "stop"
    return reason if reason in _FINISH_REASONS else "stop"


def _logprob(item: Logprob) -> dict[str, Any]:
    """One token's logprob as OpenAI spells it (bytes: the token's UTF-8 when the backend
    gave none)."""

    def spelled(token: str, logprob: float, raw: tuple[int, ...]) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(raw or token.encode())}

    top = [spelled(t.token, t.logprob, t.bytes) for t in item.top_logprobs]
    return spelled(item.token, item.logprob, item.bytes) | {"top_logprobs": top}


class ChatAnswers:
    """One request's answer in OpenAI's chat shape, whole or as stream choices.

    Tool calls are numbered across the answer; with ``parallel_tool_calls: false`` only the
    first is kept (as vLLM does). A call without an id gets one made from the job's.
    """

    id_prefix = "chatcmpl-"
    whole_object = "chat.completion"
    piece_object = "chat.completion.chunk"

    def __init__(self, job_id: str, *, parallel_tool_calls: bool, logprobs: bool) -> None:
        self._call_prefix = f"call_{job_id[-10:].lower()}"
        self._parallel = parallel_tool_calls
        self._logprobs = logprobs
        self._calls = 0

    def opening(self) -> list[dict[str, Any]]:
        """The role, first, as OpenAI streams begin."""
        return [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]

    def whole(self, job: Job, answer: Answer) -> dict[str, Any]:
        """The choice of a whole answer."""
        calls = self._kept(answer.tool_calls)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if calls and not answer.text else answer.text,
        }
        if answer.thinking:
            message["reasoning_content"] = answer.thinking
        if calls:
            message["tool_calls"] = [self._call(call, n) for n, call in calls]
        return {
            "index": 0,
            "message": message,
            "logprobs": self._choice_logprobs(answer.logprobs),
            "finish_reason": finish_reason(job, bool(calls)),
        }

    def pieces(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The stream choices of one piece: its reasoning, its text, then each tool call as
        two deltas (its id, type and name, then its arguments), logprobs on the first."""
        deltas: list[dict[str, Any]] = []
        if chunk.thinking:
            deltas.append({"reasoning_content": chunk.thinking})
        if chunk.text or (chunk.logprobs and not chunk.thinking):
            deltas.append({"content": chunk.text})
        for n, call in self._kept(chunk.tool_calls):
            opened = self._call(call, n)
            arguments = opened["function"]["arguments"]
            opened["function"]["arguments"] = ""
            deltas.append({"tool_calls": [{"index": n, **opened}]})
            deltas.append({"tool_calls": [{"index": n, "function": {"arguments": arguments}}]})
        choices = [{"index": 0, "delta": delta, "finish_reason": None} for delta in deltas]
        if choices and chunk.logprobs and self._logprobs:
            choices[0]["logprobs"] = self._choice_logprobs(chunk.logprobs)
        return choices

    def finish(self, job: Job) -> dict[str, Any]:
        """The last choice: no delta, the finish reason."""
        return {"index": 0, "delta": {}, "finish_reason": finish_reason(job, self._calls > 0)}

    def _kept(self, calls: tuple[ToolCall, ...]) -> list[tuple[int, ToolCall]]:
        """The calls to answer with, each with its number in the answer."""
        kept = []
        for call in calls:
            if self._parallel or self._calls == 0:
                kept.append((self._calls, call))
                self._calls += 1
        return kept

    def _call(self, call: ToolCall, number: int) -> dict[str, Any]:
        arguments = json.dumps(thaw(call.arguments), ensure_ascii=False, separators=(",", ":"))
        return {
            "id": call.id or f"{self._call_prefix}{number}",
            "type": "function",
            "function": {"name": call.name, "arguments": arguments},
        }

    def _choice_logprobs(self, logprobs: tuple[Logprob, ...]) -> dict[str, Any] | None:
        if not self._logprobs:
            return None
        return {"content": [_logprob(item) for item in logprobs], "refusal": None}
