"""The base of the fake model servers the backend tests run against (OpenAI, Anthropic).

A real threaded HTTP/1.1 server on loopback that writes server-sent events with chunked
encoding, paces tokens in real time, notices a client that goes away (as vLLM,
llama.cpp and the cloud APIs do) and counts what it saw; faults are queued per path.
The text comes from ``actors.backends.simulated_text``, so a resumed answer continues
exactly where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import json
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from actors.backends.simulated_text import next_token


class ClientGone(Exception):
    """The client closed its connection: stop generating."""


class CutConnection(Exception):
    """An injected fault: drop the connection without finishing the response."""


@dataclasses.dataclass(frozen=True)
class Fault:
    """What the next matching request gets: ``status`` (an error answer before any output),
    ``error_event`` or ``cut`` after ``after_chunks`` chunks, or ``stall`` for ``delay`` s."""

    kind: str
    path: str | None = None
    status: int = 500
    message: str = "injected failure"
    error_type: str = "api_error"
    after_chunks: int = 0
    delay: float = 0.0


class FakeServer:
    """A loopback HTTP server whose handler class speaks some model API."""

    def __init__(
        self,
        handler: type[FakeHandler],
        *,
        token_seconds: float = 0.0005,
        mean_answer_tokens: int = 20,
        max_answer_tokens: int = 400,
    ) -> None:
        self.token_seconds = token_seconds
        self.mean_answer_tokens = mean_answer_tokens
        self.max_answer_tokens = max_answer_tokens
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self._cond = threading.Condition()
        self._counters: Counter[str] = Counter()
        self._faults: list[Fault] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._httpd.fake = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, name="fake-http"
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self._httpd.shutdown()
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join()
        self.wait_for(lambda s: s["active"] == 0)

    stopping = False

    def inject(self, fault: Fault) -> None:
        """Queue a fault for the next request to ``fault.path`` (any path when None)."""
        with self._cond:
            self._faults.append(fault)

    def take_fault(self, path: str) -> Fault | None:
        with self._cond:
            for i, fault in enumerate(self._faults):
                if fault.path in (None, path):
                    return self._faults.pop(i)
        return None

    def bump(self, counter: str, amount: int = 1) -> None:
        with self._cond:
            self._counters[counter] += amount
            self._cond.notify_all()

    def stats(self) -> Counter[str]:
        """Counts: requests, calls_started, calls_finished, calls_disconnected, tokens, active."""
        with self._cond:
            return Counter(self._counters)

    def wait_for(
        self, predicate: Callable[[Counter[str]], bool], timeout: float = 5.0
    ) -> Counter[str]:
        """Block until ``predicate(stats)`` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._counters):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the fake server never got there: {self._counters}")
                self._cond.wait(remaining)
            return Counter(self._counters)

    def tokens(self, model: str, context: str, limit: int | None) -> TokenSource:
        """A deterministic token source for ``context``."""
        cap = min(limit or self.max_answer_tokens, self.max_answer_tokens)
        return TokenSource(self, model, context.split(), cap)


class TokenSource:
    """The next token of an answer each call (None once it ends); ``cap`` bounds its length."""

    def __init__(self, fake: FakeServer, model: str, words: list[str], cap: int) -> None:
        self.fake, self.model, self.words, self.cap = fake, model, words, cap
        self.produced = 0

    def __call__(self) -> str | None:
        if self.produced >= self.cap:
            return None
        token = next_token(self.model, self.words, self.fake.mean_answer_tokens)
        if token is not None:
            self.words.append(token.strip())
            self.produced += 1
            self.fake.bump("tokens")
        return token


class FakeHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 plumbing for the fakes: JSON in and out, SSE out, client-gone detection."""

    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    @property
    def fake(self) -> FakeServer:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        return fake

    def handle(self) -> None:
        """Serve the connection; a client hanging up between requests is not an error."""
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read the stats, not the access log."""

    def read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        body: dict[str, Any] = json.loads(raw or b"{}")
        self.fake.requests.append((self.path, body, dict(self.headers.items())))
        self.fake.bump("requests")
        return body

    def send_json(self, status: int, obj: Mapping[str, Any]) -> None:
        payload = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_event(self, data: str, event: str | None = None) -> None:
        text = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
        self._chunk(text.encode())

    def end_sse(self) -> None:
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            raise ClientGone from None

    def pause(self, seconds: float) -> None:
        """Wait, waking early (ClientGone) when the client closes its end."""
        deadline = time.monotonic() + seconds
        while True:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable:
                try:
                    data = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    raise ClientGone from None
                if not data:
                    raise ClientGone
            if self.fake.stopping:
                raise ClientGone
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            select.select([self.connection], [], [], min(remaining, 0.05))

    def cut(self) -> None:
        """Drop the connection mid-response."""
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def stream_tokens(
        self,
        take: TokenSource,
        write: Callable[[str], None],
        fault: Fault | None,
        error_event: Callable[[Fault], None],
    ) -> tuple[int, str]:
        """Write tokens until the answer ends; returns (count, finish reason 'stop'/'length')."""
        count = 0
        while True:
            if fault is not None and fault.after_chunks == count:
                if fault.kind == "cut":
                    raise CutConnection
                if fault.kind == "error_event":
                    error_event(fault)
                    raise CutConnection
                if fault.kind == "stall":
                    self.pause(fault.delay)
            self.pause(self.fake.token_seconds)
            token = take()
            if token is None:
                return count, "length" if count >= take.cap else "stop"
            write(token)
            count += 1

    def run_call(self, call: Callable[[], None]) -> None:
        """Count a generating call and what ended it."""
        self.fake.bump("calls_started")
        self.fake.bump("active")
        try:
            call()
            self.fake.bump("calls_finished")
        except ClientGone:
            self.fake.bump("calls_disconnected")
            self.close_connection = True
        except CutConnection:
            self.fake.bump("calls_faulted")
            self.cut()
        finally:
            self.fake.bump("active", -1)
