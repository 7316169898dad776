"""Server scaffolding for simulated model servers: a real HTTP/1.1 server on loopback.

The simulated Ollama and the tests' fake OpenAI and Anthropic servers are built on it, so
what every such server needs exists once: a threaded listener whose threads are all
joined on stop; connection tracking, so that stopping (or refusing connections, to
simulate an outage) drops every connection; pauses on the injectable Clock that end
early when the client goes away, because real model servers stop generating then;
chunked NDJSON and SSE streams; a fault queue; counters that tests wait on.

A pause selects on the client's socket and on a wake-up socket pair of its own
connection, which the server pokes when its clock jumps (a ManualClock's ``advance``)
and when it stops; with the SystemClock a pause is one ``select`` as long as the delay.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar, cast

from actors.runtime import Clock, SystemClock

__all__ = [
    "Aborted",
    "ClientGone",
    "Cut",
    "FaultQueue",
    "LoopbackHandler",
    "LoopbackServer",
    "QueuedFault",
]

_log = logging.getLogger(__name__)

S = TypeVar("S")


class ClientGone(Exception):
    """The client closed its connection: stop generating."""


class Aborted(Exception):
    """The server is stopping or stopped listening: drop the request."""


class Cut(Exception):
    """An injected fault closes the connection without finishing the response."""


def _encode_json(obj: Mapping[str, Any]) -> bytes:
    """One compact JSON object and a newline (a response body, or one NDJSON line)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


# ------------------------------------------------------------------------- faults


class QueuedFault(Protocol):
    """What a fault queue needs of a fault: the path it applies to and how many times."""

    @property
    def path(self) -> str | None:
        """The request path it applies to; None: any."""
        ...

    @property
    def times(self) -> int | None:
        """How many requests it applies to; None: every one until cleared."""
        ...


F = TypeVar("F", bound=QueuedFault)


@dataclasses.dataclass(slots=True)
class _Pending(Generic[F]):
    """A queued fault and how many more requests it applies to (None: unlimited)."""

    fault: F
    left: int | None


class FaultQueue(Generic[F]):
    """Injected faults waiting for the requests they apply to, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_Pending[F]] = []

    def add(self, fault: F) -> F:
        """Queue ``fault`` for its next ``fault.times`` requests to ``fault.path``."""
        if fault.times is not None and fault.times < 1:
            raise ValueError("times must be at least 1, or None for every request")
        with self._lock:
            self._pending.append(_Pending(fault, fault.times))
        return fault

    def take(self, path: str) -> F | None:
        """The oldest fault for ``path``, counting one of its times; None if there is none."""
        with self._lock:
            for index, entry in enumerate(self._pending):
                if entry.fault.path is None or entry.fault.path == path:
                    if entry.left is not None:
                        entry.left -= 1
                        if entry.left == 0:
                            del self._pending[index]
                    return entry.fault
        return None

    def pending(self) -> tuple[tuple[F, int | None], ...]:
        """Each fault still queued, with how many times it has left (None: unlimited)."""
        with self._lock:
            return tuple((entry.fault, entry.left) for entry in self._pending)

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._pending.clear()


# ----------------------------------------------------------------------- listener


class _Listener(ThreadingHTTPServer):
    """The socket server: one thread per connection, all joined on close."""

    daemon_threads = False
    block_on_close = True
    # SO_REUSEADDR (http.server's default too, stated here because restarts rely on it):
    # a server started again on the port of one that was stopped or killed binds at once,
    # although that one's connections linger in TIME_WAIT.
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[LoopbackHandler], owner: LoopbackServer[Any]
    ) -> None:
        self.owner = owner
        self.interrupt = threading.Event()
        self._handlers: set[LoopbackHandler] = set()
        self._handlers_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, handler: LoopbackHandler, alive: bool) -> None:
        """Remember open connections, so that stopping can drop and wake them."""
        with self._handlers_lock:
            if alive:
                self._handlers.add(handler)
            else:
                self._handlers.discard(handler)

    def wake_all(self) -> None:
        """Wake every pausing connection to look at the clock and the interrupt again."""
        with self._handlers_lock:
            for handler in self._handlers:
                handler.wake()

    def drop_connections(self) -> None:
        """Shut every open connection, which wakes their threads."""
        with self._handlers_lock:
            connections = [handler.connection for handler in self._handlers]
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its thread

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.exception("%s: error while handling a request", self.owner.name)


# ------------------------------------------------------------------------ handler


class LoopbackHandler(BaseHTTPRequestHandler):
    """One connection of a loopback server: pauses, client-gone detection and writing.

    Subclasses add the ``do_GET``/``do_POST`` routes of the API they speak.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls
    connection: socket.socket

    def setup(self) -> None:
        super().setup()
        self.listener = cast(_Listener, self.server)
        self._pipelined = False
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self.listener.track(self, True)

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:
            self.close_connection = True  # reset between requests: the client hung up

    def finish(self) -> None:
        self.listener.track(self, False)
        self._wake_in.close()
        self._wake_out.close()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug(f"{self.owner.name}: {format}", *args)

    @property
    def owner(self) -> LoopbackServer[Any]:
        """The server this connection belongs to."""
        return self.listener.owner

    @property
    def interrupt(self) -> threading.Event:
        """Set once the server stops: whatever this connection waits for, it drops."""
        return self.listener.interrupt

    def respond(self, answer: Callable[[], None]) -> None:
        """Run ``answer``; a client gone, a stopping server or a cut closes the connection."""
        try:
            answer()
        except (ClientGone, Aborted, Cut):
            self.close_connection = True

    # ------------------------------------------------------------------ waiting

    def wake(self) -> None:
        """Make a pause look at the clock again (called by the listener, any thread)."""
        try:
            self._wake_out.send(b"\0")
        except OSError:
            pass  # the pair is full (a wake-up is pending anyway) or closed

    def pause(self, seconds: float, *, watch_client: bool = True) -> None:
        """Wait ``seconds`` of the server's clock (see :meth:`pause_until`)."""
        self.pause_until(self.owner.clock.now() + seconds, watch_client=watch_client)

    def pause_until(self, deadline: float, *, watch_client: bool = True) -> None:
        """Wait until the server's clock reaches ``deadline``. Raises Aborted when the
        server stops and, if ``watch_client``, ClientGone as soon as the client leaves."""
        clock = self.owner.clock
        while True:
            if watch_client:
                self.check_client()
            elif self.interrupt.is_set():
                raise Aborted
            remaining = deadline - clock.now()
            if remaining <= 0:
                return
            sockets: list[socket.socket] = [self._wake_in]
            if watch_client and not self._pipelined:
                sockets.append(self.connection)  # readable: EOF, or a stop dropped it
            readable, _, _ = select.select(sockets, [], [], remaining)
            if self._wake_in in readable:
                self._wake_in.recv(4096)

    def check_client(self) -> None:
        """Raise Aborted if the server is stopping, ClientGone if the client closed its end."""
        if self.interrupt.is_set():
            raise Aborted
        if self._pipelined:
            return
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return
        try:
            data = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            raise ClientGone from None
        if not data:
            raise ClientGone
        self._pipelined = True  # the client sent its next request already; keep going

    # ------------------------------------------------------------------ writing

    def read_body(self) -> bytes:
        """The request body (empty when there is none), sized or chunked (a client that
        streams an upload, as the ``ollama`` client's ``create_blob`` may)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after the chunk
            while self.rfile.readline().strip():
                pass  # trailer fields, up to the blank line
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_bytes(self, status: int, content_type: str, payload: bytes) -> None:
        """A whole response (headers only for HEAD)."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            raise ClientGone from None

    def send_json(self, status: int, obj: Mapping[str, Any]) -> None:
        """A JSON response."""
        self.send_bytes(status, "application/json; charset=utf-8", _encode_json(obj))

    def send_text(self, status: int, text: str) -> None:
        """A plain-text response."""
        self.send_bytes(status, "text/plain; charset=utf-8", text.encode())

    def start_stream(self, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        """Start a 200 response whose body is written chunk by chunk."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            raise ClientGone from None

    def write_line(self, obj: Mapping[str, Any]) -> None:
        """One NDJSON line, as one chunk."""
        self.write_chunk(_encode_json(obj))

    def write_event(self, data: str, event: str | None = None) -> None:
        """One server-sent event, as one chunk."""
        text = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
        self.write_chunk(text.encode())

    def end_stream(self) -> None:
        """The last, empty chunk."""
        self.write_chunk(b"")

    def write_chunk(self, data: bytes) -> None:
        """One chunk of a chunked body."""
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            raise ClientGone from None


# ------------------------------------------------------------------------- server


class LoopbackServer(abc.ABC, Generic[S]):
    """A model server on loopback, answering with ``handler`` (a LoopbackHandler).

    Its state (counters, faults, whatever a subclass keeps) lives here, not in the
    listener, so :meth:`refuse_connections` and :meth:`accept_connections` keep it across
    a simulated outage. ``S`` is the snapshot :meth:`stats` gives and :meth:`wait_for`
    tests; time is ``clock``'s (the SystemClock unless given).
    """

    def __init__(
        self,
        handler: type[LoopbackHandler],
        *,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.clock: Clock = SystemClock() if clock is None else clock
        self.cond = threading.Condition()
        self.counters: Counter[str] = Counter()
        self._handler = handler
        self._port = port
        self._listener: _Listener | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- life cycle

    def start(self) -> str:
        """Start listening (on a free port if ``port`` was 0); returns the base URL."""
        if self._listener is not None:
            raise RuntimeError(f"the {self.name} server is already running")
        listener = _Listener((self.host, self._port), self._handler, self)
        self._port = listener.server_address[1]
        self._listener = listener
        self._thread = threading.Thread(
            target=listener.serve_forever,
            kwargs={"poll_interval": 0.01},  # how soon stop() is noticed
            name=f"{self.name}:{self._port}",
        )
        self._thread.start()
        self.clock.subscribe(self._clock_jumped)
        return self.url

    def stop(self) -> None:
        """Stop listening, drop every connection and join every server thread."""
        listener, thread = self._listener, self._thread
        self._listener = self._thread = None
        if listener is None or thread is None:
            return
        self.clock.unsubscribe(self._clock_jumped)
        listener.interrupt.set()
        with self.cond:
            self.cond.notify_all()
        listener.wake_all()
        listener.shutdown()
        listener.drop_connections()
        listener.server_close()
        thread.join()

    def refuse_connections(self) -> None:
        """Simulate the server going down: stop listening and drop connections, keep state."""
        self.stop()

    def accept_connections(self) -> None:
        """Listen again on the same port after :meth:`refuse_connections`."""
        self.start()

    @property
    def running(self) -> bool:
        """True while the server listens."""
        return self._listener is not None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{self.host}:{self._port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _clock_jumped(self) -> None:
        """A manual clock moved: wake whatever waits for a time to come."""
        with self.cond:
            self.cond.notify_all()
        listener = self._listener
        if listener is not None:
            listener.wake_all()

    # -------------------------------------------------------------------- stats

    def bump(self, counter: str, amount: int = 1) -> None:
        """Add ``amount`` to ``counter`` and wake whoever waits on the stats."""
        with self.cond:
            self.bump_locked(counter, amount)

    def bump_locked(self, counter: str, amount: int = 1) -> None:
        """:meth:`bump` with ``cond`` held."""
        self.counters[counter] += amount
        self.cond.notify_all()

    def stats(self) -> S:
        """A snapshot of what the server saw."""
        with self.cond:
            return self.snapshot_locked()

    def wait_for(self, predicate: Callable[[S], bool], timeout: float = 5.0) -> S:
        """Block until ``predicate(stats)`` holds; raise TimeoutError after ``timeout`` real
        seconds. State that changes with time alone (see :meth:`next_change_locked`) is
        looked at again when its time comes, on the server's clock."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                snapshot = self.snapshot_locked()
                if predicate(snapshot):
                    return snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the {self.name} server never got there: {snapshot}")
                change = self.next_change_locked()
                if change is not None:
                    remaining = min(remaining, max(0.0, change - self.clock.now()))
                self.cond.wait(remaining)

    @abc.abstractmethod
    def snapshot_locked(self) -> S:
        """The snapshot, with ``cond`` held."""

    def next_change_locked(self) -> float | None:
        """The clock time at which the snapshot will change by itself (None: never)."""
        return None
