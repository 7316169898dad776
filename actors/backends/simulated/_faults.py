"""Faults the simulated Ollama can be told to inject, and the messages real Ollama uses.

The kinds are the failures gpulane must classify and survive (docs/backends.md): errors
before any output, a stream cut or ended by an error line mid-way, and slow answers.
The queue that hands them to requests is the scaffolding's FaultQueue.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["DEFAULT_FAULT_MESSAGES", "MID_STREAM_FAULTS", "Fault", "FaultKind"]


class FaultKind(enum.Enum):
    """What an injected fault does to a matching request."""

    NOT_FOUND = "not_found"  # 404 "model ... not found, try pulling it first"
    SERVER_ERROR = "server_error"  # 500 with an Ollama runner error
    BUSY = "busy"  # 503 "server busy, please try again..."
    CUT_STREAM = "cut_stream"  # close the socket after ``after_chunks`` chunks
    ERROR_LINE = "error_line"  # an {"error": ...} line after ``after_chunks`` chunks
    SLOW_RESPONSE = "slow_response"  # wait ``delay`` seconds before answering at all
    STALL_STREAM = "stall_stream"  # pause ``delay`` seconds after ``after_chunks`` chunks


DEFAULT_FAULT_MESSAGES: Mapping[FaultKind, str] = MappingProxyType(
    {
        FaultKind.SERVER_ERROR: "llama runner process has terminated: signal: killed",
        FaultKind.BUSY: "server busy, please try again.  maximum pending requests exceeded",
        FaultKind.ERROR_LINE: ("an error was encountered while running the model: unexpected EOF"),
    }
)

# The kinds a chat or generate call applies while it streams; every other kind (and these
# on any other route) acts before the answer starts.
MID_STREAM_FAULTS = frozenset({FaultKind.CUT_STREAM, FaultKind.ERROR_LINE, FaultKind.STALL_STREAM})


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """An injected fault: applies to the next ``times`` requests (None: until cleared)
    whose path is ``path`` (None: any path but the ``/`` health check). ``delay`` is in
    the server clock's seconds, not scaled by the server's speed."""

    kind: FaultKind
    path: str | None = None
    times: int | None = 1
    after_chunks: int = 0
    delay: float = 0.0
    message: str | None = None
