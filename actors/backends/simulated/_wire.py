"""The Ollama wire format as the simulated server reads and writes it: request fields
(model, options, the load options, keep_alive, think, format and images as Ollama parses
them), errors as Ollama answers them, and the small pieces of its answers (timestamps,
the text field, full model names).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from actors.backends.simulated._catalog import ModelProfile
from protocol.spec import RELOAD_OPTIONS

__all__ = [
    "DEFAULT_KEEP_ALIVE",
    "FOREVER_NS",
    "VERSION",
    "HTTPError",
    "KeepAlive",
    "full_name",
    "options",
    "parse_format",
    "parse_images",
    "parse_keep_alive",
    "parse_think",
    "require_model",
    "rfc3339",
    "runner_options",
    "seconds_ns",
    "text_field",
]

VERSION = "0.9.0"
DEFAULT_KEEP_ALIVE = 300.0  # Ollama's default: five minutes
FOREVER_NS = 2**63 - 1  # Go's time.Duration(math.MaxInt64), what Ollama adds for "forever"
_RUNNER_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {"num_batch": 512, "num_gpu": -1, "main_gpu": 0, "use_mmap": None, "num_thread": 0}
)
_THINK_LEVELS = ("low", "medium", "high", "max")
_BASE64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
# Go's time.Duration is int64 nanoseconds: past it a keep_alive is no duration Ollama holds.
_MAX_DURATION_NS = 2**63
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


@dataclasses.dataclass(frozen=True, slots=True)
class KeepAlive:
    """A request's ``keep_alive``: how long its model stays loaded once idle."""

    seconds: float | None  # None: forever (a negative keep_alive)


class HTTPError(Exception):
    """An error answered as Ollama does: a status and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def seconds_ns(seconds: float) -> int:
    """Clock seconds as Ollama's nanoseconds (times and durations)."""
    return round(seconds * 1e9)


def rfc3339(epoch_ns: int) -> str:
    """Go's RFC3339Nano in UTC, e.g. ``2025-01-15T10:00:00.123456789Z``."""
    seconds, nanos = divmod(epoch_ns, 10**9)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def text_field(kind: str, text: str) -> dict[str, Any]:
    """Where a chat answer (``message``) or a generate answer (``response``) carries text."""
    if kind == "chat":
        return {"message": {"role": "assistant", "content": text}}
    return {"response": text}


def require_model(body: Mapping[str, Any]) -> str:
    """The request's ``model``; a 400 without one."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise HTTPError(400, "model is required")
    return model


def options(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request's ``options`` object (empty when absent)."""
    found = body.get("options") or {}
    if not isinstance(found, dict):
        raise HTTPError(400, "options must be an object")
    return found


def runner_options(
    request_options: Mapping[str, Any], profile: ModelProfile
) -> tuple[tuple[str, object], ...]:
    """The options that force a reload when they change, with Ollama's defaults filled in."""
    defaults = dict(_RUNNER_DEFAULTS, num_ctx=profile.context_length)
    return tuple((key, request_options.get(key, defaults[key])) for key in RELOAD_OPTIONS)


def parse_keep_alive(value: object) -> KeepAlive | None:
    """Ollama's keep_alive (api.Duration): seconds as a number or a Go duration string;
    negative is forever. None when the request has none (or null), which leaves the
    loaded runner's own duration in place (see Residency.acquire)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            return KeepAlive(None)
        # time.Duration(t * float64(time.Second)): past int64 nanoseconds Go's conversion
        # gives math.MinInt64 on amd64, a negative duration, and a runner whose duration is
        # <= 0 is unloaded once idle (server/sched.go), as with keep_alive 0.
        return KeepAlive(0.0 if value * 1e9 >= _MAX_DURATION_NS else float(value))
    if not isinstance(value, str):
        raise HTTPError(400, "invalid keep_alive: must be a duration string or seconds")
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return KeepAlive(0.0)
    if not body or _DURATION_PART.sub("", body):
        raise HTTPError(400, f'time: invalid duration "{value}"')
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(body))
    if seconds * 1e9 >= _MAX_DURATION_NS:  # time.ParseDuration refuses what overflows int64
        raise HTTPError(400, f'time: invalid duration "{value}"')
    return KeepAlive(None if sign < 0 and seconds > 0 else seconds)


def parse_think(value: object) -> str | None:
    """The request's ``think`` as a level (``true`` is ``medium``, as api.ThinkValue's
    String() says); None for false or absent. Other values are Ollama's 400."""
    if value is None or value is False:
        return None
    if value is True:
        return "medium"
    if isinstance(value, str) and value in _THINK_LEVELS:
        return value
    if isinstance(value, str):
        raise HTTPError(
            400,
            f'invalid think value: "{value}" (must be "high", "medium", "low", "max", true, '
            "or false)",
        )
    raise HTTPError(
        400, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


def parse_format(value: object) -> str | dict[str, Any] | None:
    """The request's ``format``: None (absent, null or ""), ``"json"``, or a JSON schema
    object. Anything else is the error Ollama's runner gives (a 500, after the load)."""
    if value is None or value == "":
        return None
    if value == "json" or isinstance(value, dict):
        return value
    raw = json.dumps(value, separators=(",", ":"))
    raise HTTPError(
        500, f'invalid format: {json.dumps(raw)}; expected "json" or a valid JSON Schema object'
    )


def parse_images(value: object, where: str) -> list[str]:
    """The base64 images of a message or a generate request. Go decodes them as []byte, so
    bad base64 is its 400 ("illegal base64 data at input byte N")."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise HTTPError(400, f"{where} must be a list of base64 strings")
    for image in value:
        try:
            base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPError(400, f"illegal base64 data at input byte {_bad_byte(image)}") from None
    return value


def _bad_byte(text: str) -> int:
    """Where Go's base64 decoder gives up on ``text``: its first character outside the
    alphabet, or its end when only the padding is wrong."""
    for index, char in enumerate(text.rstrip("=")):
        if char not in _BASE64_ALPHABET:
            return index
    return len(text.rstrip("="))


def full_name(name: str) -> str:
    """The name Ollama's capability errors use: ``registry.ollama.ai/library/tiny:latest``."""
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return "/".join(parts)
