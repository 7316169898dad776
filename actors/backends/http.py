"""HTTP plumbing shared by the httpx backends (Ollama, OpenAI-compatible, Anthropic).

Cancellation: every call can be cancelled from another thread. Cancelling shuts the
call's socket, which makes the model server stop generating (they all stop when their
client goes away) and makes the blocked read on the worker thread return at once, even
before response headers. For that, each client is built without a keep-alive pool (one
connection per call), and the socket is taken from httpx's ``trace`` extension when the
connection opens. :func:`guarded` wires a CancelToken to that and turns every failure
into ``protocol.BackendError`` with ``transient`` set as ARCHITECTURE.md section 3 says.

Server-sent events (OpenAI and Anthropic streams) are parsed by :func:`iter_sse`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from actors.backends.base import CallCancelledError, CancelToken
from protocol import BackendError

__all__ = [
    "TRANSIENT_4XX",
    "SocketAbort",
    "SseEvent",
    "decode_object",
    "guarded",
    "int_field",
    "is_transient_status",
    "iter_sse",
    "new_client",
    "transport_error",
]

# Statuses that say "try again later" although they are 4xx.
TRANSIENT_4XX = frozenset({408, 429})


def new_client(
    base_url: str, timeout: float | httpx.Timeout, transport: httpx.BaseTransport | None
) -> httpx.Client:
    """An httpx client with one connection per call, so a cancel can drop just that call."""
    return httpx.Client(
        base_url=base_url,
        timeout=timeout,
        transport=transport,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def is_transient_status(status: int) -> bool:
    """5xx (and Anthropic's 529 overloaded), 408 and 429 are worth retrying; other 4xx are not."""
    return status >= 500 or status in TRANSIENT_4XX


class SocketAbort:
    """Drops one call's connection from another thread when its cancel token trips.

    Shutting the socket (not closing it) is what wakes a read blocked in another
    thread; closing the response is the fallback for transports without a socket
    (``httpx.MockTransport`` in tests).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._response: httpx.Response | None = None
        self._tripped = False
        self._finished = False

    @property
    def extensions(self) -> dict[str, Any]:
        """The httpx request extensions that hand this object the call's socket."""
        return {"trace": self.trace}

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpx trace hook: remember the socket as soon as the connection opens."""
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = None if stream is None else stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with self._lock:
                self._socket = sock
                if self._tripped and not self._finished:
                    _shutdown(sock)

    def watch(self, response: httpx.Response) -> None:
        """Remember the response, to close it on a cancel when there is no socket."""
        with self._lock:
            self._response = response
            tripped = self._tripped and self._socket is None
        if tripped:
            response.close()

    def trip(self) -> None:
        """Cancel: drop the connection now (runs on the cancelling thread)."""
        with self._lock:
            if self._finished or self._tripped:
                return
            self._tripped = True
            sock, response = self._socket, self._response
            if sock is not None:
                _shutdown(sock)
        if sock is None and response is not None:
            response.close()

    def finish(self) -> None:
        """The call is over: a later cancel must not touch the connection."""
        with self._lock:
            self._finished = True


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing left to drop


@contextlib.contextmanager
def guarded(cancel: CancelToken | None, base_url: str, server: str) -> Iterator[SocketAbort]:
    """Wire ``cancel`` to one call's connection and turn failures into BackendError.

    A failure after the token tripped is the cancel itself (CallCancelledError).
    ``server`` names the kind of server in error messages ("Ollama", ...).
    """
    if cancel is not None:
        cancel.raise_if_cancelled()
    abort = SocketAbort()
    if cancel is not None:
        cancel.on_cancel(abort.trip)
    try:
        yield abort
    except (httpx.HTTPError, BackendError) as exc:
        if cancel is not None and cancel.cancelled:
            raise CallCancelledError from None
        if isinstance(exc, BackendError):
            raise
        raise transport_error(exc, base_url, server) from exc
    finally:
        abort.finish()
    if cancel is not None and cancel.cancelled:
        raise CallCancelledError


def transport_error(exc: httpx.HTTPError, base_url: str, server: str) -> BackendError:
    """Classify a network failure: all are transient except a malformed URL."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.UnsupportedProtocol):
        return BackendError(f"bad {server} URL {base_url!r}: {detail}", transient=False)
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(f"{server} at {base_url} timed out: {detail}", transient=True)
    if isinstance(exc, httpx.ConnectError):
        return BackendError(f"cannot connect to {server} at {base_url}: {detail}", transient=True)
    if isinstance(exc, httpx.RemoteProtocolError):
        return BackendError(f"{server} at {base_url} cut the response: {detail}", transient=True)
    return BackendError(f"connection to {server} at {base_url} failed: {detail}", transient=True)


def decode_object(data: str | bytes, where: str) -> dict[str, Any]:
    """Parse one JSON object; garbage means a broken stream (transient)."""
    try:
        value = json.loads(data)
    except ValueError:
        raise BackendError(
            f"{where} sent data that is not JSON: {data[:200]!r}", transient=True
        ) from None
    if not isinstance(value, dict):
        raise BackendError(f"{where} sent JSON that is not an object: {value!r}", transient=True)
    return value


def int_field(value: object) -> int:
    """An integer field of a JSON answer, 0 when absent or not an integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclasses.dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event: its ``event`` name ("message" when unnamed) and ``data``."""

    event: str
    data: str


def iter_sse(lines: Iterator[str]) -> Iterator[SseEvent]:
    """Server-sent events from a response's lines (the WHATWG event-stream format).

    Comment lines (``:``) and ``id``/``retry`` fields are skipped; ``data`` lines of one
    event are joined with newlines; a blank line ends an event.
    """
    event, data = "", list[str]()
    for line in lines:
        if not line:
            if data:
                yield SseEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield SseEvent(event or "message", "\n".join(data))
