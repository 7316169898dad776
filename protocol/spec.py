"""What a caller asks for: a chat or generate request plus how it is to be scheduled.

The request fields are Ollama's ``/api/chat`` and ``/api/generate`` (``api/types.go``);
every one is validated where it comes in, with an error that names its path.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, cast

from protocol.enums import JobKind, Lane, Priority
from protocol.errors import ValidationError
from protocol.frozen import EMPTY_MAPPING, thaw
from protocol.jsondata import (
    INT_MIN,
    JSON_DATA,
    check_json_data,
    check_text,
    frozen_json,
    is_int,
)
from protocol.tools import Tool, ToolCall, parse_tool_calls, parse_tools
from protocol.webhook import check_webhook_url

__all__ = [
    "JSON_DATA",
    "MAX_TOP_LOGPROBS",
    "RELOAD_OPTIONS",
    "ROLES",
    "THINK_LEVELS",
    "ChatMessage",
    "JobSpec",
    "check_json_data",
    "check_text",
    "model_of_key",
    "normalise_model_name",
    "parse_labels",
]

ROLES = ("system", "user", "assistant", "tool")
_ROLE_NAMES = {role: role for role in ROLES}

# Ollama runner options that force a model reload when they change: part of the residency key.
RELOAD_OPTIONS = ("num_ctx", "num_gpu", "num_batch", "main_gpu", "use_mmap", "num_thread")

# ``think`` takes true/false or a level; Ollama's ThinkValue.IsValid also accepts "max".
THINK_LEVELS = ("low", "medium", "high", "max")
MAX_TOP_LOGPROBS = 20  # Ollama refuses more (server/routes.go)

MAX_MODEL_NAME = 200
_DEFAULT_TAG = ":latest"
MAX_CALLER = 200
MAX_ID_FIELD = 200
MAX_ATTEMPTS_LIMIT = 100
_MESSAGE_KEYS = (
    "role", "content", "images", "thinking", "tool_calls", "tool_name", "tool_call_id",
)  # fmt: skip
# keep_alive as Ollama parses it (api.Duration): seconds as a number, or a string Go's
# time.ParseDuration takes ("5m", "1h30m", "-1s", "0"), at most about 292 years.
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_DURATION = re.compile(r"[-+]?(?:0|(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                 "m": 60.0, "h": 3600.0}  # fmt: skip
_MAX_DURATION_S = (2**63 - 1) / 1e9
# Fields only /api/generate has; a chat job refuses them by name.
_GENERATE_ONLY = ("images", "raw", "suffix", "template", "context")
# A backend label a job may require (``labels``): what [[backends]] tables can carry.
MAX_LABEL = 64
_LABEL = re.compile(rf"[A-Za-z0-9_.:=-]{{1,{MAX_LABEL}}}")


@dataclasses.dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat turn, as Ollama's ``/api/chat`` takes it.

    ``thinking`` is an assistant turn's reasoning, ``tool_calls`` the calls it made; a
    ``tool`` turn answers a call and names it by ``tool_name`` (Ollama) or
    ``tool_call_id`` (OpenAI).
    """

    role: str
    content: str
    images: tuple[str, ...] = ()
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_name: str | None = None
    tool_call_id: str | None = None

    @classmethod
    def parse(cls, value: ChatMessage | Mapping[str, Any], index: int) -> ChatMessage:
        """Build from a mapping like ``{"role": "user", "content": "hi"}``; names the bad field.

        A ChatMessage built directly is checked the same way, as its fields were not.
        """
        if isinstance(value, ChatMessage):
            value = value._parts()
        field = f"messages[{index}]"
        if not isinstance(value, Mapping):
            raise ValidationError(field, f"must be an object, got {type(value).__name__}")
        role = value.get("role")
        if role not in ROLES:
            raise ValidationError(f"{field}.role", f"unknown role {role!r}", allowed=ROLES)
        role = _ROLE_NAMES[role]  # one copy of each role's name, not one per message
        content = value.get("content")
        content = _text(f"{field}.content", "" if content is None else content)
        if len(value) == 1 + ("content" in value):  # only a role and its text: no more to do
            return cls(role=role, content=content)
        unknown = sorted(str(key) for key in value if key not in _MESSAGE_KEYS)
        if unknown:
            raise ValidationError(f"{field}.{unknown[0]}", "unknown field", allowed=_MESSAGE_KEYS)
        thinking = _text(f"{field}.thinking", value.get("thinking") or "")
        tool_calls = parse_tool_calls(value.get("tool_calls"), f"{field}.tool_calls")
        if tool_calls and role != "assistant":
            raise ValidationError(
                f"{field}.tool_calls", f"a {role} message cannot carry tool calls",
                allowed="tool calls on assistant messages",
            )  # fmt: skip
        answers: dict[str, str | None] = {}
        for name in ("tool_name", "tool_call_id"):
            given = value.get(name)
            if given is None or given == "":
                answers[name] = None
                continue
            if role != "tool":
                raise ValidationError(
                    f"{field}.{name}", f"a {role} message does not answer a tool call",
                    allowed=f"{name} on tool messages",
                )  # fmt: skip
            _check_name(f"{field}.{name}", given, MAX_ID_FIELD)
            answers[name] = given
        return cls(
            role=role,
            content=content,
            images=_images(f"{field}.images", value.get("images")),
            thinking=thinking,
            tool_calls=tool_calls,
            tool_name=answers["tool_name"],
            tool_call_id=answers["tool_call_id"],
        )

    def _parts(self) -> dict[str, Any]:
        """The fields that are set, as :meth:`parse` takes them."""
        parts = {"role": self.role, "content": self.content}
        for name in ("images", "thinking", "tool_calls", "tool_name", "tool_call_id"):
            value = getattr(self, name)
            if value or (value is not None and not isinstance(value, (str, tuple))):
                parts[name] = value
        return parts

    def to_dict(self) -> dict[str, Any]:
        """The Ollama JSON form of this message (parts that are not set are left out)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.images:
            out["images"] = list(self.images)
        if self.thinking:
            out["thinking"] = self.thinking
        if self.tool_calls:
            out["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        if self.tool_name is not None:
            out["tool_name"] = self.tool_name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class JobSpec:
    """An immutable, validated request: what to run and how to schedule it.

    Build one with :meth:`chat` or :meth:`generate`; every field is checked and
    a ValidationError names the first bad one. ``tools`` are for chat jobs; ``images``,
    ``raw``, ``suffix``, ``template`` and ``context`` are /api/generate's; ``think``,
    ``format``, ``logprobs`` and ``top_logprobs`` are for both. ``webhook`` is a URL the
    job's end is posted to, signed (docs/operations.md, "Webhooks"). ``labels`` are the
    backend labels the job requires: it runs only on a backend carrying every one
    (docs/scheduling.md, "Placement across backends").
    """

    kind: JobKind
    model: str
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    system: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: EMPTY_MAPPING)
    format: str | Mapping[str, Any] | None = None
    max_tokens: int | None = None
    lane: Lane = Lane.EXTERNAL
    priority: Priority = Priority.NORMAL
    caller: str = "anonymous"
    task_type: str | None = None
    task_id: str | None = None
    chain_id: str | None = None
    allow_cloud: bool = False
    stream: bool = False
    max_attempts: int = 3
    keep_alive: str | float | None = None
    tools: tuple[Tool, ...] = ()
    think: bool | str | None = None
    images: tuple[str, ...] = ()
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: tuple[int, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    webhook: str | None = None  # posted, signed, when the job ends (protocol.webhook)
    labels: tuple[str, ...] = ()  # backend labels the job requires, sorted, no duplicates

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "kind", _parse_kind(self.kind))
        set_(self, "lane", Lane.parse(self.lane))
        set_(self, "priority", Priority.parse(self.priority))
        _check_name("model", self.model, MAX_MODEL_NAME)
        _check_name("caller", self.caller, MAX_CALLER)
        # A deep queue holds a few models and callers many times over: one copy of each.
        for name in ("model", "caller"):
            value = getattr(self, name)
            if type(value) is str:  # sys.intern takes no subclass
                set_(self, name, sys.intern(value))
        for name in ("task_type", "task_id", "chain_id"):
            value = getattr(self, name)
            if value is not None:
                _check_name(name, value, MAX_ID_FIELD)
        if not isinstance(self.messages, (tuple, list)):
            raise ValidationError("messages", "must be a list of messages")
        set_(
            self,
            "messages",
            tuple(ChatMessage.parse(m, i) for i, m in enumerate(self.messages)),
        )
        if self.kind is JobKind.CHAT and not self.messages:
            raise ValidationError("messages", "a chat job needs at least one message")
        _text("prompt", self.prompt)
        if self.system is not None:
            if not isinstance(self.system, str):
                raise ValidationError("system", "must be a string or null")
            check_text("system", self.system)
        if self.kind is JobKind.GENERATE and self.messages:
            raise ValidationError("messages", "a generate job takes a prompt, not messages")
        if not isinstance(self.options, Mapping):
            raise ValidationError("options", "must be an object of runner options")
        set_(
            self, "options", frozen_json("options", self.options) if self.options else EMPTY_MAPPING
        )
        set_(self, "format", _parse_format(self.format))
        if self.max_tokens is not None and (
            not is_int(self.max_tokens) or not 1 <= self.max_tokens <= 1_000_000
        ):
            raise ValidationError(
                "max_tokens", f"must be an integer from 1 to 1000000, got {self.max_tokens!r}"
            )
        if not is_int(self.max_attempts) or not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValidationError(
                "max_attempts",
                f"must be an integer from 1 to {MAX_ATTEMPTS_LIMIT}, got {self.max_attempts!r}",
            )
        for name in ("allow_cloud", "stream", "raw", "logprobs"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(name, "must be true or false")
        if self.keep_alive is not None and not isinstance(self.keep_alive, (str, int, float)):
            raise ValidationError("keep_alive", "must be a duration such as '5m' or seconds")
        if isinstance(self.keep_alive, str):
            check_text("keep_alive", self.keep_alive)
            _check_duration(self.keep_alive)
        if self.webhook is not None:
            check_webhook_url(self.webhook)
        if self.labels != ():
            set_(self, "labels", parse_labels("labels", self.labels))
        self._check_model_fields()

    def _check_model_fields(self) -> None:
        """The fields #14 added: tools, thinking, generate's own fields and logprobs."""
        if self._model_fields_unset():
            return
        set_ = object.__setattr__
        set_(self, "tools", parse_tools(self.tools))
        if self.tools and self.kind is JobKind.GENERATE:
            raise ValidationError("tools", "a generate job takes no tools", allowed="a chat job")
        thinks = self.think is None or isinstance(self.think, bool) or self.think in THINK_LEVELS
        if not thinks:
            raise ValidationError(
                "think", f"unknown thinking level {self.think!r}",
                allowed=("true", "false", *THINK_LEVELS),
            )  # fmt: skip
        set_(self, "images", _images("images", self.images))
        for name in ("suffix", "template"):
            value = getattr(self, name)
            set_(self, name, None if value is None or value == "" else _text(name, value))
        set_(self, "context", _context(self.context))
        if not is_int(self.top_logprobs) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValidationError(
                "top_logprobs",
                f"must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {self.top_logprobs!r}",
            )
        if self.kind is JobKind.CHAT:
            for name in _GENERATE_ONLY:
                if getattr(self, name):
                    where = "on its messages" if name == "images" else "only on generate jobs"
                    raise ValidationError(name, f"a chat job takes {name} {where}")
        elif self.raw:
            # Ollama refuses these with raw (server/routes.go): the prompt goes unformatted.
            for name in ("template", "system", "context"):
                if getattr(self, name):
                    raise ValidationError(
                        name, "raw mode takes the prompt as is", allowed="raw without it"
                    )

    def _model_fields_unset(self) -> bool:
        """True when every field #14 added has its default (most jobs: nothing to check)."""
        return (
            self.tools == ()
            and self.think is None
            and self.images == ()
            and self.raw is False
            and self.suffix is None
            and self.template is None
            and self.context == ()
            and self.logprobs is False
            and type(self.top_logprobs) is int
            and self.top_logprobs == 0
        )

    @classmethod
    def chat(
        cls,
        *,
        model: str,
        messages: Iterable[ChatMessage | Mapping[str, Any]],
        **fields: Any,
    ) -> JobSpec:
        """A chat request (Ollama ``/api/chat``); the messages are checked as the spec is."""
        given = cast(tuple[ChatMessage, ...], tuple(messages))  # parsed by __post_init__
        return cls(kind=JobKind.CHAT, model=model, messages=given, **fields)

    @classmethod
    def generate(cls, *, model: str, prompt: str, **fields: Any) -> JobSpec:
        """A completion request (Ollama ``/api/generate``)."""
        return cls(kind=JobKind.GENERATE, model=model, prompt=prompt, **fields)

    @property
    def model_key(self) -> str:
        """The residency key: the model plus the runner options that force a reload."""
        model = normalise_model_name(self.model)
        parts = [f"{k}={self.options[k]}" for k in RELOAD_OPTIONS if k in self.options]
        return model if not parts else f"{model}|{','.join(parts)}"

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by the store and the gateway); the fields #14 added,
        ``webhook`` and ``labels`` are left out at their defaults, so a spec without them
        has its old form."""
        out = {
            "kind": self.kind.value,
            "model": self.model,
            "messages": [m.to_dict() for m in self.messages],
            "prompt": self.prompt,
            "system": self.system,
            "options": thaw(self.options),
            "format": thaw(self.format),
            "max_tokens": self.max_tokens,
            "lane": self.lane.value,
            "priority": self.priority.name.lower(),
            "caller": self.caller,
            "task_type": self.task_type,
            "task_id": self.task_id,
            "chain_id": self.chain_id,
            "allow_cloud": self.allow_cloud,
            "stream": self.stream,
            "max_attempts": self.max_attempts,
            "keep_alive": self.keep_alive,
        }
        if self.tools:
            out["tools"] = [tool.to_dict() for tool in self.tools]
        for name in ("think", "suffix", "template", "webhook"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("images", "context", "labels"):
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        for name in ("raw", "logprobs", "top_logprobs"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Inverse of :meth:`to_dict`; unknown fields are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(unknown[0], "unknown field", allowed=sorted(known))
        return cls(**dict(data))


def normalise_model_name(name: str) -> str:
    """One spelling per model: Ollama reports ``llama3.2`` as ``llama3.2:latest`` (``/api/ps``)."""
    return name[: -len(_DEFAULT_TAG)] if name.endswith(_DEFAULT_TAG) else name


def model_of_key(key: str) -> str:
    """The model name part of a residency key (``llama3.2|num_ctx=8192`` → ``llama3.2``)."""
    return key.partition("|")[0]


def parse_labels(field: str, value: object) -> tuple[str, ...]:
    """``value``, a list of backend labels, sorted and without duplicates; a ValidationError
    naming ``field`` when it is not a list of labels as ``[[backends]]`` tables carry them."""
    allowed = f"a list of labels of 1 to {MAX_LABEL} characters from A-Z a-z 0-9 _ . : = -"
    if isinstance(value, str) or not isinstance(value, (list, tuple, frozenset, set)):
        raise ValidationError(field, "must be a list of labels", allowed=allowed)
    for label in value:
        if not isinstance(label, str) or _LABEL.fullmatch(label) is None:
            raise ValidationError(field, f"{label!r} is not a label", allowed=allowed)
    return tuple(sorted(set(value)))


def _parse_kind(value: JobKind | str) -> JobKind:
    if isinstance(value, JobKind):
        return value
    try:
        return JobKind(value)
    except ValueError:
        raise ValidationError(
            "kind", f"unknown kind {value!r}", allowed=[k.value for k in JobKind]
        ) from None


def _check_name(field: str, value: object, limit: int) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, "must be a non-empty string")
    check_text(field, value)
    if len(value) > limit:
        raise ValidationError(field, f"is {len(value)} characters long; the limit is {limit}")


def _text(field: str, value: object) -> str:
    """``value`` if it is valid Unicode text."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    check_text(field, value)
    return value


def _check_duration(text: str) -> None:
    """Refuse a keep_alive string Ollama would answer with 400 (``time: invalid duration``)."""
    valid = _GO_DURATION.fullmatch(text) is not None and (
        sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
        <= _MAX_DURATION_S
    )
    if not valid:
        raise ValidationError(
            "keep_alive",
            f"{text!r} is not a duration Ollama takes",
            allowed="a Go duration such as '5m', '1h30m', '-1s' or '0', or a number of seconds",
        )


def _images(field: str, value: object) -> tuple[str, ...]:
    """A list of base64-encoded images (as Ollama takes them)."""
    images = value or ()
    if not isinstance(images, (list, tuple)) or not all(
        isinstance(i, str) and i.isascii() for i in images
    ):
        raise ValidationError(field, "must be a list of base64 strings")
    return tuple(images)


def _context(value: object) -> tuple[int, ...]:
    """Ollama's ``context``: the token ids a previous generate answer returned."""
    tokens = value or ()
    if not isinstance(tokens, (list, tuple)):
        raise ValidationError("context", "must be a list of token ids")
    for index, token in enumerate(tokens):
        if not is_int(token) or not INT_MIN <= token < -INT_MIN:
            raise ValidationError(f"context[{index}]", f"must be a 64-bit integer, got {token!r}")
    return tuple(tokens)


def _parse_format(value: object) -> str | Mapping[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    if isinstance(value, Mapping):
        schema: Mapping[str, Any] = frozen_json("format", value)  # a JSON schema
        return schema
    raise ValidationError(
        "format", f"unsupported format {value!r}", allowed="'json' or a JSON schema object"
    )
