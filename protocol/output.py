"""What a model produces: stream chunks and the answer, each a ``str`` carrying more.

A :class:`Chunk` is one streamed piece and an :class:`Answer` a finished job's answer.
Both are ``str`` subclasses equal to their text, so a caller that treats them as text
(``ticket.result() == "Hello"``, ``"".join(chunks)``) keeps working, while
``.thinking``, ``.tool_calls`` and ``.logprobs`` (and on an answer ``.done_reason`` and
generate's ``.context``) carry the rest (docs/embedding.md). :class:`Output` is the part
of an answer besides its text, as the job store keeps it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NoReturn

from protocol.jsondata import is_int
from protocol.tools import ToolCall

__all__ = ["Answer", "Chunk", "Logprob", "Output", "TokenLogprob", "logprobs_from"]


@dataclasses.dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token and its log probability (Ollama's ``TokenLogprob``)."""

    token: str
    logprob: float
    bytes: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenLogprob:
        """From Ollama's JSON form."""
        return cls(
            token=str(data.get("token", "")),
            logprob=float(data.get("logprob", 0.0)),
            bytes=tuple(int(b) for b in data.get("bytes") or () if is_int(b)),
        )

    def to_dict(self) -> dict[str, Any]:
        """Ollama's JSON form."""
        out: dict[str, Any] = {"token": self.token, "logprob": self.logprob}
        if self.bytes:
            out["bytes"] = list(self.bytes)
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class Logprob:
    """A generated token's log probability and, if asked for, the likeliest alternatives."""

    token: str
    logprob: float
    bytes: tuple[int, ...] = ()
    top_logprobs: tuple[TokenLogprob, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Logprob:
        """From Ollama's JSON form."""
        chosen = TokenLogprob.from_dict(data)
        return cls(
            token=chosen.token,
            logprob=chosen.logprob,
            bytes=chosen.bytes,
            top_logprobs=tuple(
                TokenLogprob.from_dict(top)
                for top in data.get("top_logprobs") or ()
                if isinstance(top, Mapping)
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """Ollama's JSON form."""
        out = TokenLogprob(self.token, self.logprob, self.bytes).to_dict()
        if self.top_logprobs:
            out["top_logprobs"] = [top.to_dict() for top in self.top_logprobs]
        return out


def logprobs_from(value: object) -> tuple[Logprob, ...]:
    """Ollama's ``logprobs`` list (None or absent: none)."""
    if not isinstance(value, (list, tuple)):
        return ()
    return tuple(Logprob.from_dict(item) for item in value if isinstance(item, Mapping))


@dataclasses.dataclass(frozen=True, slots=True)
class Output:
    """An answer besides its text: thinking, tool calls, logprobs, the backend's own done
    reason (``stop``, ``length``, ...) and, for generate, Ollama's ``context``."""

    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[Logprob, ...] = ()
    done_reason: str | None = None
    context: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the parts that are set (the store's form)."""
        out: dict[str, Any] = {}
        if self.thinking:
            out["thinking"] = self.thinking
        if self.tool_calls:
            out["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        if self.logprobs:
            out["logprobs"] = [item.to_dict() for item in self.logprobs]
        if self.done_reason is not None:
            out["done_reason"] = self.done_reason
        if self.context:
            out["context"] = list(self.context)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Output:
        """Inverse of :meth:`to_dict`."""
        done_reason = data.get("done_reason")
        return cls(
            thinking=str(data.get("thinking") or ""),
            tool_calls=tuple(
                ToolCall.parse(call, f"tool_calls[{i}]")
                for i, call in enumerate(data.get("tool_calls") or ())
            ),
            logprobs=logprobs_from(data.get("logprobs")),
            done_reason=None if done_reason is None else str(done_reason),
            context=tuple(int(token) for token in data.get("context") or ()),
        )


class _Frozen(str):
    """A str with extra attributes that cannot be changed once made."""

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _set(self, **fields: object) -> None:
        self.__dict__.update(fields)  # once, as it is made; __setattr__ refuses later changes

    @property
    def text(self) -> str:
        """The text alone, as a plain str."""
        return str.__str__(self)

    def _repr(self, fields: dict[str, object]) -> str:
        shown = [f"{name}={value!r}" for name, value in fields.items() if value]
        if not shown:
            return str.__repr__(self)
        return f"{type(self).__name__}({', '.join([str.__repr__(self), *shown])})"


class Chunk(_Frozen):
    """One streamed piece: new text (the str itself) plus new thinking, whole tool calls
    and the new tokens' logprobs. Any part may be empty."""

    thinking: str
    tool_calls: tuple[ToolCall, ...]
    logprobs: tuple[Logprob, ...]

    def __new__(
        cls,
        text: str = "",
        *,
        thinking: str = "",
        tool_calls: tuple[ToolCall, ...] = (),
        logprobs: tuple[Logprob, ...] = (),
    ) -> Chunk:
        chunk = super().__new__(cls, text)
        chunk._set(thinking=thinking, tool_calls=tuple(tool_calls), logprobs=tuple(logprobs))
        return chunk

    def __repr__(self) -> str:
        return self._repr(
            {"thinking": self.thinking, "tool_calls": self.tool_calls, "logprobs": self.logprobs}
        )

    @property
    def is_empty(self) -> bool:
        """True when the piece carries nothing at all."""
        return not (self.text or self.thinking or self.tool_calls or self.logprobs)

    @property
    def is_text_only(self) -> bool:
        """True when the piece is plain text, which a later call can continue exactly from
        (docs/architecture.md section 3, "Preempt"); thinking, tool calls and logprobs
        cannot be."""
        return not (self.thinking or self.tool_calls or self.logprobs)

    def with_parts(self, **changes: Any) -> Chunk:
        """A copy with some parts changed (``text=`` for the text)."""
        fields: dict[str, Any] = {
            "text": self.text,
            "thinking": self.thinking,
            "tool_calls": self.tool_calls,
            "logprobs": self.logprobs,
        }
        fields.update(changes)
        return Chunk(fields.pop("text"), **fields)


class Answer(_Frozen):
    """A finished job's answer: its text (the str itself) and the rest of its :class:`Output`."""

    output: Output

    def __new__(cls, text: str = "", output: Output | None = None) -> Answer:
        answer = super().__new__(cls, text)
        answer._set(output=output or Output())
        return answer

    def __repr__(self) -> str:
        return self._repr({"output": self.output if self.output != Output() else None})

    @property
    def thinking(self) -> str:
        """What the model thought before it answered (empty when it did not)."""
        return self.output.thinking

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tools the model asked to call, in order."""
        return self.output.tool_calls

    @property
    def logprobs(self) -> tuple[Logprob, ...]:
        """Each generated token's log probability, when the job asked for them."""
        return self.output.logprobs

    @property
    def done_reason(self) -> str | None:
        """Why the backend stopped (``stop``, ``length``, ...), as it said."""
        return self.output.done_reason

    @property
    def context(self) -> tuple[int, ...]:
        """Ollama's ``context`` of a generate answer, for the next request's ``context``."""
        return self.output.context
