"""HTTP plumbing shared by the httpx backends (Ollama, OpenAI-compatible, Anthropic).

Cancellation: every call can be cancelled from another thread. Cancelling shuts the
call's socket, which makes the model server stop generating (they all stop when their
client goes away) and makes the blocked read on the worker thread return at once, even
before response headers. Clients keep a pool of keep-alive connections (a new TCP
connection per call costs about half a millisecond on loopback, and a thread in a
threaded server), so the socket must be known for a reused connection too: every pooled
connection's stream hands its socket to the call running on its thread whenever it
writes a request (:class:`_BindingStream`); a new connection's socket also comes from
httpx's ``trace`` extension when it opens. A connection a cancel has shut is never
reused: its read fails and httpcore closes it, or, if its response had already ended,
the pool finds the idle socket readable (at EOF) and discards it; and a call stops
touching its socket once its response is closed, before the pool hands the connection
to another call. :func:`guarded` wires a CancelToken to that and turns every failure
into ``protocol.BackendError`` with ``transient`` set as docs/architecture.md section 3 says,
and ``outage`` for a failure that belongs to the server, not to the request
(:func:`transport_error`, :func:`raise_for_status`; docs/architecture.md section 13).

Server-sent events (OpenAI and Anthropic streams) are parsed by :func:`iter_sse`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import httpcore
import httpx

from actors.backends.base import CallCancelledError, CancelToken
from protocol import BackendError

__all__ = [
    "OUTAGE_STATUSES",
    "TRANSIENT_4XX",
    "SocketAbort",
    "SseEvent",
    "decode_object",
    "drain",
    "guarded",
    "int_field",
    "is_transient_status",
    "iter_sse",
    "new_client",
    "raise_for_status",
    "transport_error",
]

# Statuses that say "try again later" although they are 4xx.
TRANSIENT_4XX = frozenset({408, 429})

# Statuses that say the server takes no request now, whatever the request: busy or still
# loading (503: Ollama's ErrMaxQueue "server busy", llama.cpp's "Loading model"),
# Anthropic's 529 overloaded_error, or a proxy in front of it with nothing answering
# behind (502, 504). They are the backend's outage, not the request's failure.
OUTAGE_STATUSES = frozenset({502, 503, 504, 529})


# The SocketAbort of the call running on each thread (set by ``guarded``): a pooled
# connection's stream binds its socket to it when the call writes its request.
_calls = threading.local()


def new_client(
    base_url: str, timeout: float | httpx.Timeout, transport: httpx.BaseTransport | None
) -> httpx.Client:
    """An httpx client with keep-alive connections that a cancel can still drop one by one.

    The streams of httpx's own connection pools are wrapped (:func:`_bind_sockets`); if
    that is not possible (an httpx whose internals differ), the client falls back to one
    connection per call, whose socket the ``trace`` extension reports when it opens.
    """
    client = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
    if transport is None and not _bind_sockets(client):
        client.close()
        client = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
    return client


def _bind_sockets(client: httpx.Client) -> bool:
    """Wrap the network backend of each of the client's connection pools (the default
    one and any proxy's) in a :class:`_BindingBackend`; False if one cannot be."""
    transports = [client._transport, *client._mounts.values()]
    pools = []
    for transport in transports:
        if transport is None:
            continue
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(pool, httpcore.ConnectionPool) or backend is None:
            return False
        pools.append((pool, backend))
    for pool, backend in pools:
        pool._network_backend = _BindingBackend(backend)
    return True


class _BindingBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with every stream it opens wrapped in a _BindingStream."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _BindingStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _BindingStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _BindingStream(httpcore.NetworkStream):
    """A connection's stream that hands its socket to the call writing a request on it.

    httpx sends a request on the calling thread before it blocks reading the answer, so
    the call's SocketAbort (``_calls.abort``) knows the socket before anything can block,
    whether the connection is new or reused from the pool.
    """

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        abort: SocketAbort | None = getattr(_calls, "abort", None)
        sock = self._stream.get_extra_info("socket")
        if abort is not None and isinstance(sock, socket.socket):
            abort.bind(sock)
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _BindingStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


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
        """httpx trace hook: remember the socket as soon as a new connection opens; stop
        touching it once the response is closed (the pool may hand it to another call)."""
        if event == "http11.response_closed.started":
            self.finish()
            return
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = None if stream is None else stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            self.bind(sock)

    def bind(self, sock: socket.socket) -> None:
        """The call's connection is ``sock``; drop it at once if the call was cancelled."""
        with self._lock:
            if self._finished:
                return
            self._socket = sock
            if self._tripped:
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
    outer = getattr(_calls, "abort", None)
    _calls.abort = abort
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
        _calls.abort = outer
    if cancel is not None and cancel.cancelled:
        raise CallCancelledError


def transport_error(exc: httpx.HTTPError, base_url: str, server: str) -> BackendError:
    """Classify a network failure: every one is transient except a malformed URL.

    The server's outage (``outage``): it cannot be reached (refused, DNS, a connect
    time-out, a proxy that cannot reach it) or it closed or reset the connection. Whether
    a drop came before or after output is for the caller to tell (the slot counts the
    pieces). A read or write time-out is the request's: the server is there but this call
    took too long.
    """
    detail = str(exc) or type(exc).__name__
    where = f"{server} at {base_url}"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return BackendError(f"bad {server} URL {base_url!r}: {detail}", transient=False)
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError)):
        return BackendError(f"cannot connect to {where}: {detail}", transient=True, outage=True)
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(f"{where} timed out: {detail}", transient=True)
    if isinstance(exc, httpx.RemoteProtocolError):
        return BackendError(f"{where} cut the response: {detail}", transient=True, outage=True)
    if isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        return BackendError(
            f"{where} dropped the connection: {detail}", transient=True, outage=True
        )
    return BackendError(f"connection to {where} failed: {detail}", transient=True)


def raise_for_status(
    response: httpx.Response,
    message_of: Callable[[object], str],
    outages: frozenset[int] = OUTAGE_STATUSES,
) -> None:
    """Raise the BackendError for an error status (nothing below 400), with the server's
    own message (``message_of`` its JSON body, else its text): transient as
    :func:`is_transient_status` says, the server's outage for a status in ``outages``."""
    status = response.status_code
    if status < 400:
        return
    response.read()
    try:
        message = message_of(response.json())
    except ValueError:
        message = response.text.strip()
    raise BackendError(
        message or f"HTTP {status} {response.reason_phrase}",
        transient=is_transient_status(status),
        status=status,
        outage=status in outages,
    )


def drain(lines: Iterator[str]) -> None:
    """Read a response to its end after its last event, so that its connection goes back
    to the pool (httpcore closes a connection whose response is closed before its end).
    Model servers end the response right after the last event. A failure here costs only
    the connection, not the answer, which is complete."""
    with contextlib.suppress(httpx.HTTPError):
        for _ in lines:
            pass


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
    """A count, size or duration field of a JSON answer: 0 when absent, not an integer,
    negative or beyond 63 bits (a broken server's number must not become one the job
    store cannot write)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return 0


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
