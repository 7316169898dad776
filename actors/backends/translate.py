"""What the translated backends (OpenAI-compatible, Anthropic) share when they carry a
request field by field and read the answer back (docs/backends.md, "What each backend
carries").

- :func:`image_media_type`: an image's type from its first bytes, as both APIs want it
  named (a data URL's type, a ``source.media_type``).
- :func:`call_ids`: the ids that pair each tool call with the tool message answering it.
  OpenAI and Anthropic pair them by id, Ollama by the tool's name, so a call without an
  id gets a stable one and a tool message without one is matched by ``tool_name``.
- :class:`ToolCallAssembly`: tool calls that arrive in pieces (OpenAI's streamed
  ``delta.tool_calls``, Anthropic's ``input_json_delta``), each passed on only whole.
- :class:`Collector`: the answer's pieces passed on to the chunk sink and kept whole;
  :class:`Skipper` in front of it drops a prefix the server generated again (a resume
  that regenerates instead of continuing).
- :func:`openai_logprobs`: a choice's ``logprobs`` in either shape OpenAI-compatible
  servers send (chat, or the legacy completions maps).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from actors.backends.base import ChunkSink
from protocol import (
    BackendError,
    BackendResult,
    ChatMessage,
    Chunk,
    JobMetrics,
    Logprob,
    TokenLogprob,
    ToolCall,
    ValidationError,
)
from protocol.output import logprobs_from

__all__ = [
    "IMAGE_TYPES",
    "Collector",
    "Skipper",
    "ToolCallAssembly",
    "call_ids",
    "image_media_type",
    "openai_logprobs",
    "parse_arguments",
]

# The image types both APIs take (OpenAI's vision guide and Anthropic's
# Base64ImageSourceParam.media_type name the same four).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_HEAD_CHARS = 16  # base64 characters that decode to the 12 bytes the signatures need


def image_media_type(image: str, field: str) -> str:
    """The media type of a base64 image (Ollama's form), from its magic bytes; a
    ValidationError naming ``field`` if it is not base64 or not one of IMAGE_TYPES."""
    head = image[:_HEAD_CHARS]
    try:
        data = base64.b64decode(head + "=" * (-len(head) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(field, "is not base64 data", allowed="a base64 image") from None
    for magic, media_type in _SIGNATURES:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValidationError(
        field, "is not an image of a type the API takes (judged by its first bytes)", IMAGE_TYPES
    )


def call_ids(
    messages: Sequence[ChatMessage],
) -> tuple[list[tuple[str, ...]], list[str | None]]:
    """For each message, the ids of its tool calls and, for a tool message, the id of the
    call it answers (None if none can be found).

    A call keeps its own id, else gets ``call_<message>_<call>`` (stable, so a resumed or
    retried call sends the same body). A tool message answers its ``tool_call_id``, else
    the first earlier call of its ``tool_name`` no tool message answered yet, else (no
    name either) the first unanswered call.
    """
    ids: list[tuple[str, ...]] = []
    answers: list[str | None] = []
    pending: list[tuple[str, str]] = []  # (id, tool name) of calls not answered yet
    for m_index, message in enumerate(messages):
        calls = message.tool_calls
        own = tuple(call.id or f"call_{m_index}_{c}" for c, call in enumerate(calls))
        ids.append(own)
        pending.extend(zip(own, (call.name for call in calls), strict=True))
        answer: str | None = None
        if message.role == "tool":
            answer = message.tool_call_id or _match(pending, message.tool_name)
            pending = [(i, name) for i, name in pending if i != answer]
        answers.append(answer)
    return ids, answers


def _match(pending: Sequence[tuple[str, str]], name: str | None) -> str | None:
    for call_id, called in pending:
        if name is None or called == name:
            return call_id
    return None


def parse_arguments(text: str, field: str, where: str) -> dict[str, Any]:
    """A tool call's arguments sent as a JSON string (empty: none); a malformed one is a
    permanent BackendError naming ``field`` (the server broke its own API)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise BackendError(
            f"{where} sent a malformed tool call: {field} is not JSON: {text[:200]!r}",
            transient=False,
        ) from None
    if not isinstance(value, dict):
        raise BackendError(
            f"{where} sent a malformed tool call: {field} is not a JSON object: {text[:200]!r}",
            transient=False,
        )
    return value


@dataclasses.dataclass
class _Piecewise:
    """A tool call being assembled."""

    id: str | None = None
    name: str = ""
    arguments: list[str] = dataclasses.field(default_factory=list)
    whole: dict[str, Any] | None = None  # arguments that came as an object, not pieces


class ToolCallAssembly:
    """Tool calls that arrive in pieces, by index; each becomes a ToolCall once done.

    ``where`` names the server in the error a malformed call raises (permanent: the
    server broke its own API). The calls are numbered in the order they began.
    """

    def __init__(self, where: str) -> None:
        self._where = where
        self._open: dict[int, _Piecewise] = {}
        self._order = 0

    @property
    def open_indexes(self) -> tuple[int, ...]:
        """The indexes of the calls begun and not finished yet."""
        return tuple(self._open)

    def add(
        self,
        index: int,
        *,
        id: str | None = None,
        name: str | None = None,
        arguments: str = "",
        whole: dict[str, Any] | None = None,
    ) -> None:
        """A piece of call ``index``: its id and name (sent once), a fragment of its JSON
        arguments, or its arguments as an object."""
        call = self._open.setdefault(index, _Piecewise())
        call.id = id or call.id
        call.name += name or ""
        if arguments:
            call.arguments.append(arguments)
        if whole:
            call.whole = whole

    def finish(self, index: int) -> ToolCall:
        """Call ``index`` whole (it must have begun)."""
        call = self._open.pop(index)
        field = f"tool_calls[{self._order}]"
        if call.arguments:
            arguments = parse_arguments("".join(call.arguments), f"{field}.arguments", self._where)
        else:
            arguments = call.whole or {}
        try:
            made = ToolCall(call.name, arguments, id=call.id or None, index=self._order)
        except ValidationError as exc:
            raise BackendError(
                f"{self._where} sent a malformed tool call: {field}.{exc}", transient=False
            ) from None
        self._order += 1
        return made

    def finish_before(self, index: int) -> tuple[ToolCall, ...]:
        """The calls begun before ``index`` (a server sends them in index order, so a
        new index means they are done), whole."""
        return tuple(self.finish(i) for i in sorted(self._open) if i < index)

    def finish_all(self) -> tuple[ToolCall, ...]:
        """Every call begun and not finished yet, whole, in index order."""
        return tuple(self.finish(i) for i in sorted(self._open))


class Collector:
    """Passes each piece of an answer on to the chunk sink (none that is empty) and keeps
    them, to return the whole answer."""

    def __init__(self, on_chunk: ChunkSink) -> None:
        self._on_chunk = on_chunk
        self.pieces = 0
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._tool_calls: list[ToolCall] = []
        self._logprobs: list[Logprob] = []

    def emit(self, piece: Chunk) -> None:
        """Keep ``piece`` and pass it on."""
        if piece.is_empty:
            return
        self.pieces += 1
        self._text.append(piece.text)
        self._thinking.append(piece.thinking)
        self._tool_calls.extend(piece.tool_calls)
        self._logprobs.extend(piece.logprobs)
        self._on_chunk(piece)

    @property
    def thinking(self) -> str:
        """The thinking so far."""
        return "".join(self._thinking)

    def result(self, metrics: JobMetrics, done_reason: str) -> BackendResult:
        """The whole answer."""
        return BackendResult(
            text="".join(self._text),
            metrics=metrics,
            done_reason=done_reason,
            thinking=self.thinking,
            tool_calls=tuple(self._tool_calls),
            logprobs=tuple(self._logprobs),
        )


class Skipper:
    """Passes pieces on to a Collector after dropping the first ``skip`` characters of
    their text (a prefix the server generated again, which the caller has seen)."""

    def __init__(self, skip: int, collector: Collector) -> None:
        self._skip = skip
        self._collector = collector

    def __call__(self, piece: Chunk) -> None:
        if self._skip and piece.text:
            dropped = min(self._skip, len(piece.text))
            self._skip -= dropped
            rest = piece.text[dropped:]
            # A piece wholly repeated takes its logprobs along: they are the prefix's.
            piece = piece.with_parts(text=rest, logprobs=piece.logprobs if rest else ())
        self._collector.emit(piece)


def openai_logprobs(value: object, top: int) -> tuple[Logprob, ...]:
    """A choice's ``logprobs`` with at most ``top`` alternatives each: the chat shape
    (``content``: OpenAI, vLLM, llama.cpp, which uses it for completions too) or the
    legacy completions one (``tokens``, ``token_logprobs``, ``top_logprobs`` maps)."""
    if not isinstance(value, dict):
        return ()
    if isinstance(value.get("content"), list):
        items = logprobs_from(value["content"])
    else:
        tokens = value.get("tokens") or []
        chosen = value.get("token_logprobs") or []
        tops = value.get("top_logprobs") or []
        items = tuple(
            Logprob(
                str(token),
                float(logprob),
                top_logprobs=_ranked(tops[i] if i < len(tops) else None),
            )
            for i, (token, logprob) in enumerate(zip(tokens, chosen, strict=False))
            if isinstance(logprob, (int, float))
        )
    return tuple(item if len(item.top_logprobs) <= top else _with_top(item, top) for item in items)


def _ranked(alternatives: object) -> tuple[TokenLogprob, ...]:
    """The legacy ``{token: logprob}`` map as alternatives, likeliest first."""
    if not isinstance(alternatives, dict):
        return ()
    ranked = sorted(alternatives.items(), key=lambda item: -float(item[1]))
    return tuple(TokenLogprob(str(token), float(logprob)) for token, logprob in ranked)


def _with_top(item: Logprob, top: int) -> Logprob:
    return Logprob(item.token, item.logprob, item.bytes, item.top_logprobs[:top])
