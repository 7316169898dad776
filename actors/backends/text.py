"""A model server's text made valid Unicode before anything else sees it.

A server may split a character outside the Basic Multilingual Plane (an emoji) into its
two UTF-16 halves across stream pieces, each a ``\\ud83d``-style JSON escape; Python
decodes such a half to a lone surrogate, which has no UTF-8 form: the job store could
not write the answer and the gateway could not send it. The GPU slot passes every piece
through a TextMender: a half at the end of a piece waits for the next one, and a half
that never finds its partner becomes U+FFFD, the replacement character. Thinking, tool
calls and logprobs come from the same JSON, so they are mended alike (ChunkMender).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from protocol import BackendResult, Chunk, Logprob, ToolCall, freeze

__all__ = ["ChunkMender", "TextMender", "mend_result", "mend_text", "mend_value"]

_HIGH_SURROGATES = ("\ud800", "\udbff")


def mend_text(text: str) -> str:
    """``text`` with surrogate pairs joined and lone surrogates replaced by U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class TextMender:
    """Mends a stream of pieces so that, joined, they equal :func:`mend_text` of the whole."""

    def __init__(self) -> None:
        self._held = ""  # a high surrogate that ended the last piece

    def feed(self, piece: str) -> str:
        """The valid text of ``piece`` so far (may be empty while a half waits)."""
        text = self._held + piece
        self._held = ""
        if text and _HIGH_SURROGATES[0] <= text[-1] <= _HIGH_SURROGATES[1]:
            self._held, text = text[-1], text[:-1]
        return mend_text(text)

    def flush(self) -> str:
        """What is still held, mended (a lone half becomes U+FFFD); call at the end."""
        held, self._held = self._held, ""
        return mend_text(held)


def mend_value(value: Any) -> Any:
    """JSON-like ``value`` with every string in it (keys too) mended; other values as is."""
    if isinstance(value, str):
        return mend_text(value)
    if isinstance(value, Mapping):
        return freeze({mend_text(str(k)): mend_value(v) for k, v in value.items()})
    if isinstance(value, tuple):
        return tuple(mend_value(v) for v in value)
    return value


def mend_tool_calls(calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
    """Tool calls with their names, ids and arguments mended."""
    return tuple(
        dataclasses.replace(
            call,
            name=mend_text(call.name),
            id=None if call.id is None else mend_text(call.id),
            arguments=mend_value(call.arguments),
        )
        for call in calls
    )


def mend_logprobs(logprobs: tuple[Logprob, ...]) -> tuple[Logprob, ...]:
    """Logprobs with each token's text mended."""
    return tuple(
        dataclasses.replace(
            item,
            token=mend_text(item.token),
            top_logprobs=tuple(
                dataclasses.replace(top, token=mend_text(top.token)) for top in item.top_logprobs
            ),
        )
        for item in logprobs
    )


def mend_result(result: BackendResult) -> BackendResult:
    """A finished call's output with all its text mended."""
    return dataclasses.replace(
        result,
        text=mend_text(result.text),
        thinking=mend_text(result.thinking),
        tool_calls=mend_tool_calls(result.tool_calls),
        logprobs=mend_logprobs(result.logprobs),
    )


class ChunkMender:
    """Mends a stream of chunks: text and thinking each through a TextMender (a half
    surrogate waits for the next piece), tool calls and logprobs whole."""

    def __init__(self) -> None:
        self._text = TextMender()
        self._thinking = TextMender()

    def feed(self, piece: str) -> Chunk:
        """The valid parts of ``piece`` (a str or a Chunk) so far."""
        chunk = piece if isinstance(piece, Chunk) else Chunk(piece)
        if chunk.is_text_only:
            text = self._text.feed(chunk.text)
            return chunk if text == chunk else Chunk(text)  # most pieces: plain valid text
        return Chunk(
            self._text.feed(chunk.text),
            thinking=self._thinking.feed(chunk.thinking),
            tool_calls=mend_tool_calls(chunk.tool_calls),
            logprobs=mend_logprobs(chunk.logprobs),
        )

    def flush(self) -> Chunk:
        """What is still held, mended; call at the end."""
        return Chunk(self._text.flush(), thinking=self._thinking.flush())
