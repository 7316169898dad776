"""Deterministic "language model" text for the simulated Ollama server and the test fakes.

Each next token is a pure function of the model name and the last few words of the
context, exactly as a greedy-decoding language model is a function of its context.
That makes resuming work the way it does on a real model: a call whose context
already carries the first k tokens of an answer produces exactly the rest of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

__all__ = [
    "ASSISTANT_MARKER",
    "THINKING_TOKENS",
    "VOCABULARY",
    "WINDOW_WORDS",
    "Answer",
    "Scripted",
    "TokenSource",
    "Tokenizer",
    "embedding",
    "image_tag",
    "next_token",
    "render_chat",
    "render_generate",
    "stable_hash",
    "thinking",
]

# How many trailing words of context decide the next token.
WINDOW_WORDS = 8

# The chat template's marker for "the assistant speaks now"; a chat context ends with it
# (plus any prefill), so the first token of an answer is never the end of it.
ASSISTANT_MARKER = "<|assistant|>"

_VOCABULARY_TEXT = """
    the a model GPU queue answer token is runs on local memory fast slow and then we it can
    will load every request waits for its turn. scheduler picks next job, while bot asks
    again. weights stay resident when keep alive expires, Ollama unloads them. latency
    matters more than throughput here. each stream ends with done. context window holds
    words, not pages. prompt evaluation takes time before first appears. small models fit
    easily, large ones swap often. preemption frees card in milliseconds. resume continues
    where left off, so nothing repeats. callers share fairly by priority lane. internal work
    goes first, external after. embeddings bypass entirely. this simulation speaks same API
    as real server does, line per chunk. clock ticks quietly yet state survives crashes
    because SQLite commits group writes.
"""
VOCABULARY = tuple(_VOCABULARY_TEXT.split())

# How long a model thinks at most, by the request's ``think`` level (``true`` is medium).
THINKING_TOKENS = {"low": 16, "medium": 48, "high": 128, "max": 256}

_PIECE = re.compile(r"\s*\S+")


def stable_hash(*parts: str) -> int:
    """A stable 64-bit hash (Python's ``hash`` is salted per process)."""
    data = "\x1f".join(parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def render_chat(messages: Iterable[Mapping[str, Any]]) -> str:
    """The context a chat request decodes from: the rendered turns, then the assistant marker.

    A trailing assistant message is a prefill: its content follows the marker and the
    model continues it, as Ollama does for a final assistant message. A turn's images
    (see :func:`image_tag`), an assistant's tool calls and a tool result's ``tool_name``
    are part of its turn, as a chat template renders them.
    """
    turns = list(messages)
    prefill = ""
    if turns and turns[-1].get("role") == "assistant":
        prefill = str(turns.pop().get("content") or "")
    rendered = "".join(_render_turn(turn) for turn in turns)
    return f"{rendered}{ASSISTANT_MARKER}\n{prefill}"


def _render_turn(turn: Mapping[str, Any]) -> str:
    role = str(turn.get("role", ""))
    if turn.get("tool_name"):
        role = f"{role}:{turn['tool_name']}"
    tags = "".join(image_tag(i, image) for i, image in enumerate(turn.get("images") or ()))
    calls = "".join(
        f"<|tool_call|>{json.dumps(call, sort_keys=True)}\n"
        for call in turn.get("tool_calls") or ()
    )
    return f"<|{role}|>\n{tags}{turn.get('content') or ''}\n{calls}"


def image_tag(index: int, image: str) -> str:
    """How an image shows in the context: Ollama's ``[img-N]`` tag, with the image's hash so
    that another image gets another answer."""
    return f"[img-{index}:{stable_hash('image', image) % 16**8:08x}]"


def render_generate(prompt: str, system: str | None) -> str:
    """The context a generate request decodes from: the system text, then the raw prompt."""
    return f"{system}\n{prompt}" if system else prompt


def next_token(model: str, words: Sequence[str], mean_answer_tokens: int) -> str | None:
    """The token that follows ``words`` (the context split on whitespace), or None at the end.

    The end of the answer comes with probability 1/``mean_answer_tokens`` at each step,
    decided by the same hash that picks the word, but never right after the marker.
    The token carries its leading space except as the first word of a chat answer.
    """
    window = words[-WINDOW_WORDS:]
    value = stable_hash(model, *window)
    at_answer_start = bool(window) and window[-1] == ASSISTANT_MARKER
    if not at_answer_start and value % mean_answer_tokens == 0:
        return None
    word = VOCABULARY[(value // mean_answer_tokens) % len(VOCABULARY)]
    return word if at_answer_start else f" {word}"


class TokenSource(Protocol):
    """Tokens decoded one by one: an :class:`Answer`, or a :class:`Scripted` text."""

    @property
    def tokens(self) -> list[str]:
        """The tokens so far."""
        ...

    @property
    def done_reason(self) -> str:
        """``stop`` once it ended by itself, else ``length``."""
        ...

    def next(self) -> str | None:
        """The next token, or None once it has ended."""
        ...


class Answer:
    """One answer being decoded from ``context``: :meth:`next` gives its tokens one by one.

    It ends when the model ends it (``done_reason`` "stop") or after ``limit`` tokens
    ("length"); the simulated Ollama and the fake OpenAI and Anthropic servers all decode
    through it, so a resumed answer continues exactly where an interrupted one stopped.
    """

    def __init__(self, model: str, context: str, mean_answer_tokens: int, limit: int) -> None:
        self._model = model
        self._words = context.split()
        self._mean_answer_tokens = mean_answer_tokens
        self.prompt_tokens = len(self._words)
        self.limit = limit
        self.tokens: list[str] = []
        self.done_reason = "length"

    @property
    def exhausted(self) -> bool:
        """True once ``limit`` tokens were produced."""
        return len(self.tokens) >= self.limit

    @property
    def text(self) -> str:
        """The tokens so far, joined."""
        return "".join(self.tokens)

    def next(self) -> str | None:
        """The next token, or None once the answer has ended."""
        if self.exhausted:
            return None
        token = next_token(self._model, self._words, self._mean_answer_tokens)
        if token is None:
            self.done_reason = "stop"
            return None
        self._words.append(token.strip())
        self.tokens.append(token)
        return token


def embedding(model: str, text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text`` (equal texts give equal vectors)."""
    rng = random.Random(stable_hash("embed", model, text))
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class Scripted:
    """A text known in advance (JSON, a tool call), decoded piece by piece: each token is a
    run of non-space characters with the spaces before it. Ends after ``limit`` tokens
    ("length") or at the end of the text ("stop")."""

    def __init__(self, text: str, limit: int) -> None:
        self._pieces: list[str] = _PIECE.findall(text)
        self.limit = limit
        self.tokens: list[str] = []
        self.done_reason = "length"

    @property
    def text(self) -> str:
        """The tokens so far, joined."""
        return "".join(self.tokens)

    def next(self) -> str | None:
        """The next piece, or None at the end of the text or of ``limit``."""
        if len(self.tokens) >= self.limit:
            return None
        if len(self.tokens) == len(self._pieces):
            self.done_reason = "stop"
            return None
        token = self._pieces[len(self.tokens)]
        self.tokens.append(token)
        return token


def thinking(model: str, context: str, level: str, mean_answer_tokens: int, limit: int) -> Answer:
    """What a model thinks before answering ``context``: an answer to the context with the
    thinking ``level`` marked, at most that level's :data:`THINKING_TOKENS` and ``limit``."""
    marked = f"{context}\n<|think:{level}|>\n{ASSISTANT_MARKER}"
    return Answer(model, marked, mean_answer_tokens, min(THINKING_TOKENS[level], limit))


class Tokenizer:
    """Token ids for generate's ``context`` (words numbered as the server first sees them):
    the ids a generate answer returns give back its text when a request sends them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        self._words: list[str] = []

    def encode(self, text: str) -> list[int]:
        """The ids of the words of ``text``."""
        with self._lock:
            ids = []
            for word in text.split():
                if word not in self._ids:
                    self._ids[word] = len(self._words)
                    self._words.append(word)
                ids.append(self._ids[word])
            return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The words of ``ids`` with a space after each (ids never handed out are skipped)."""
        with self._lock:
            return "".join(f"{self._words[i]} " for i in ids if 0 <= i < len(self._words))
