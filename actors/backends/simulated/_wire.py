"""The Ollama wire format as the simulated server reads and writes it: request fields
(model, options, the load options, keep_alive as Ollama parses it), errors as Ollama
answers them, and the small pieces of its answers (timestamps, the text field).
"""

from __future__ import annotations

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
    "options",
    "parse_keep_alive",
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


def parse_keep_alive(value: object) -> float | None:
    """Ollama's keep_alive: seconds as a number or a Go duration string; negative is
    forever (None); missing is five minutes."""
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value < 0 else float(value)
    if not isinstance(value, str):
        raise HTTPError(400, "invalid keep_alive: must be a duration string or seconds")
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    if not body or _DURATION_PART.sub("", body):
        raise HTTPError(400, f'time: invalid duration "{value}"')
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(body))
    return None if sign < 0 and seconds > 0 else seconds
