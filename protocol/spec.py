"""What a caller asks for: a chat or generate request plus how it is to be scheduled."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from protocol.enums import JobKind, Lane, Priority
from protocol.errors import ValidationError
from protocol.frozen import EMPTY_MAPPING, freeze, thaw

__all__ = [
    "RELOAD_OPTIONS",
    "ROLES",
    "ChatMessage",
    "JobSpec",
    "check_json_data",
    "check_text",
    "normalise_model_name",
]

ROLES = ("system", "user", "assistant", "tool")

# Ollama runner options that force a model reload when they change: part of the residency key.
RELOAD_OPTIONS = ("num_ctx", "num_gpu", "num_batch", "main_gpu", "use_mmap", "num_thread")

MAX_MODEL_NAME = 200
JSON_DATA = "strings, finite numbers, integers within 64 bits, booleans, null, arrays, objects"
INT_MIN, UINT_MAX = -(2**63), 2**64 - 1
_DEFAULT_TAG = ":latest"
MAX_CALLER = 200
MAX_ID_FIELD = 200
MAX_ATTEMPTS_LIMIT = 100


@dataclasses.dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat turn, as Ollama's ``/api/chat`` takes it."""

    role: str
    content: str
    images: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: ChatMessage | Mapping[str, Any], index: int) -> ChatMessage:
        """Build from a mapping like ``{"role": "user", "content": "hi"}``; names the bad field.

        A ChatMessage built directly is checked the same way, as its fields were not.
        """
        if isinstance(value, ChatMessage):
            value = {"role": value.role, "content": value.content, "images": value.images}
        field = f"messages[{index}]"
        if not isinstance(value, Mapping):
            raise ValidationError(field, f"must be an object, got {type(value).__name__}")
        role = value.get("role")
        if role not in ROLES:
            raise ValidationError(f"{field}.role", f"unknown role {role!r}", allowed=ROLES)
        content = value.get("content", "")
        if not isinstance(content, str):
            raise ValidationError(f"{field}.content", "must be a string")
        check_text(f"{field}.content", content)
        images = value.get("images") or ()
        if not isinstance(images, (list, tuple)) or not all(
            isinstance(i, str) and i.isascii() for i in images
        ):
            raise ValidationError(f"{field}.images", "must be a list of base64 strings")
        return cls(role=role, content=content, images=tuple(images))

    def to_dict(self) -> dict[str, Any]:
        """The Ollama JSON form of this message."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.images:
            out["images"] = list(self.images)
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class JobSpec:
    """An immutable, validated request: what to run and how to schedule it.

    Build one with :meth:`chat` or :meth:`generate`; every field is checked and
    a ValidationError names the first bad one.
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

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "kind", _parse_kind(self.kind))
        set_(self, "lane", Lane.parse(self.lane))
        set_(self, "priority", Priority.parse(self.priority))
        _check_name("model", self.model, MAX_MODEL_NAME)
        _check_name("caller", self.caller, MAX_CALLER)
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
        if not isinstance(self.prompt, str):
            raise ValidationError("prompt", "must be a string")
        check_text("prompt", self.prompt)
        if self.system is not None:
            if not isinstance(self.system, str):
                raise ValidationError("system", "must be a string or null")
            check_text("system", self.system)
        if self.kind is JobKind.GENERATE and self.messages:
            raise ValidationError("messages", "a generate job takes a prompt, not messages")
        if not isinstance(self.options, Mapping):
            raise ValidationError("options", "must be an object of runner options")
        try:
            set_(self, "options", freeze(self.options))
        except TypeError as exc:
            raise ValidationError("options", str(exc), allowed=JSON_DATA) from None
        check_json_data("options", self.options)
        set_(self, "format", _parse_format(self.format))
        if self.max_tokens is not None and (
            not _is_int(self.max_tokens) or not 1 <= self.max_tokens <= 1_000_000
        ):
            raise ValidationError(
                "max_tokens", f"must be an integer from 1 to 1000000, got {self.max_tokens!r}"
            )
        if not _is_int(self.max_attempts) or not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValidationError(
                "max_attempts",
                f"must be an integer from 1 to {MAX_ATTEMPTS_LIMIT}, got {self.max_attempts!r}",
            )
        for name in ("allow_cloud", "stream"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(name, "must be true or false")
        if self.keep_alive is not None and not isinstance(self.keep_alive, (str, int, float)):
            raise ValidationError("keep_alive", "must be a duration such as '5m' or seconds")
        if isinstance(self.keep_alive, str):
            check_text("keep_alive", self.keep_alive)

    @classmethod
    def chat(
        cls,
        *,
        model: str,
        messages: Iterable[ChatMessage | Mapping[str, Any]],
        **fields: Any,
    ) -> JobSpec:
        """A chat request (Ollama ``/api/chat``)."""
        parsed = tuple(ChatMessage.parse(m, i) for i, m in enumerate(messages))
        return cls(kind=JobKind.CHAT, model=model, messages=parsed, **fields)

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
        """A JSON-ready dict (used by the store and the gateway)."""
        return {
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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_kind(value: JobKind | str) -> JobKind:
    if isinstance(value, JobKind):
        return value
    try:
        return JobKind(value)
    except ValueError:
        raise ValidationError(
            "kind", f"unknown kind {value!r}", allowed=[k.value for k in JobKind]
        ) from None


def check_json_data(field: str, value: object) -> None:
    """Raise ValidationError naming the first part of ``value`` that is not plain JSON data.

    The job store writes options and format as JSON, and the model server reads them
    as JSON: bytes, non-finite floats and integers beyond 64 bits have no JSON form.
    """
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        check_text(field, value)
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= UINT_MAX:
            raise ValidationError(field, "is an integer beyond 64 bits", allowed=JSON_DATA)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(field, f"is {value!r}, not a finite number", allowed=JSON_DATA)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_text(f"{field} (a key)", key)
            check_json_data(f"{field}.{key}", item)
        return
    if isinstance(value, tuple):
        for index, item in enumerate(value):
            check_json_data(f"{field}[{index}]", item)
        return
    raise ValidationError(
        field, f"is a {type(value).__name__} value, not JSON data", allowed=JSON_DATA
    )


def check_text(field: str, text: str) -> None:
    """Refuse text that is not valid Unicode: a lone surrogate (what a JSON ``"\\ud800"``
    escape decodes to) has no UTF-8 form for the job store or the model server."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            field,
            f"has a lone surrogate at character {exc.start}",
            allowed="valid Unicode text",
        ) from None


def _check_name(field: str, value: object, limit: int) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, "must be a non-empty string")
    check_text(field, value)
    if len(value) > limit:
        raise ValidationError(field, f"is {len(value)} characters long; the limit is {limit}")


def _parse_format(value: object) -> str | Mapping[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    if isinstance(value, Mapping):
        try:
            schema: Mapping[str, Any] = freeze(value)  # a JSON schema (structured outputs)
        except TypeError as exc:
            raise ValidationError("format", str(exc), allowed=JSON_DATA) from None
        check_json_data("format", schema)
        return schema
    raise ValidationError(
        "format", f"unsupported format {value!r}", allowed="'json' or a JSON schema object"
    )
