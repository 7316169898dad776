"""A simulated Ollama server: a real HTTP server on loopback that speaks the Ollama API.

gpulane's demo and tests run on it, so the whole HTTP path is exercised (ARCHITECTURE.md
section 9). It keeps Ollama's field names, nanosecond durations, ``done_reason``,
``keep_alive`` and residency rules (one model loaded unless configured otherwise, one
generation at a time per model), simulates load time, time to first token and tokens
per second, writes deterministic text that can be resumed (see ``simulated_text``), and
takes injected faults. Stats let tests see what the server saw, e.g. a client going away.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import re
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType, TracebackType
from typing import Any, Self, cast

from actors.backends.simulated_text import embedding, next_token, render_chat, render_generate
from protocol.spec import RELOAD_OPTIONS

__all__ = [
    "DEFAULT_MODELS",
    "Fault",
    "FaultKind",
    "ModelProfile",
    "ServerStats",
    "SimulatedOllama",
]

_log = logging.getLogger(__name__)

VERSION = "0.9.0"
DEFAULT_KEEP_ALIVE = 300.0  # Ollama's default: five minutes
_FOREVER_NS = 2**63 - 1  # Go's time.Duration(math.MaxInt64), what Ollama adds for "forever"
_MODIFIED_AT_NS = 1_736_935_200 * 10**9  # a fixed "pulled at" time, for stable listings
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


@dataclasses.dataclass(frozen=True, slots=True)
class ModelProfile:
    """How a simulated model behaves: timings (seconds, before ``speed``), sizes and text."""

    load_seconds: float = 0.8
    first_token_seconds: float = 0.15
    tokens_per_second: float = 40.0
    mean_answer_tokens: int = 60
    max_answer_tokens: int = 600
    size_bytes: int = 2_000_000_000
    embedding_dimensions: int = 3072
    context_length: int = 4096
    embedding_only: bool = False
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"

    def __post_init__(self) -> None:
        for name in ("load_seconds", "first_token_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be positive")
        if self.mean_answer_tokens < 2:
            raise ValueError("mean_answer_tokens must be at least 2")
        if self.max_answer_tokens < 1 or self.embedding_dimensions < 1:
            raise ValueError("max_answer_tokens and embedding_dimensions must be positive")


DEFAULT_MODELS: Mapping[str, ModelProfile] = MappingProxyType(
    {
        "llama3.2": ModelProfile(
            load_seconds=1.2, first_token_seconds=0.12, tokens_per_second=60.0,
            mean_answer_tokens=80, size_bytes=2_019_393_189,
        ),
        "qwen2.5:7b": ModelProfile(
            load_seconds=2.5, first_token_seconds=0.25, tokens_per_second=30.0,
            mean_answer_tokens=120, size_bytes=4_683_087_332, embedding_dimensions=3584,
            context_length=8192, family="qwen2", parameter_size="7.6B",
        ),
        "mistral": ModelProfile(
            load_seconds=2.2, first_token_seconds=0.2, tokens_per_second=32.0,
            mean_answer_tokens=100, size_bytes=4_113_301_824, embedding_dimensions=4096,
            parameter_size="7.2B", quantization_level="Q4_0",
        ),
        "nomic-embed-text": ModelProfile(
            load_seconds=0.3, first_token_seconds=0.01, size_bytes=274_302_450,
            embedding_dimensions=768, context_length=2048, embedding_only=True,
            family="nomic-bert", parameter_size="137M", quantization_level="F16",
        ),
    }
)  # fmt: skip


class FaultKind(enum.Enum):
    """What an injected fault does to a matching request."""

    NOT_FOUND = "not_found"  # 404 "model ... not found, try pulling it first"
    SERVER_ERROR = "server_error"  # 500 with an Ollama runner error
    BUSY = "busy"  # 503 "server busy, please try again..."
    CUT_STREAM = "cut_stream"  # close the socket after ``after_chunks`` chunks
    ERROR_LINE = "error_line"  # an {"error": ...} line after ``after_chunks`` chunks
    SLOW_RESPONSE = "slow_response"  # wait ``delay`` seconds before answering at all
    STALL_STREAM = "stall_stream"  # pause ``delay`` seconds after ``after_chunks`` chunks


_DEFAULT_FAULT_MESSAGES = {
    FaultKind.SERVER_ERROR: "llama runner process has terminated: signal: killed",
    FaultKind.BUSY: "server busy, please try again.  maximum pending requests exceeded",
    FaultKind.ERROR_LINE: "an error was encountered while running the model: unexpected EOF",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """An injected fault: applies to the next ``times`` requests (None: until cleared)
    whose path is ``path`` (None: any path but the ``/`` health check). ``delay`` is in
    real seconds, not scaled by the server's speed."""

    kind: FaultKind
    path: str | None = None
    times: int | None = 1
    after_chunks: int = 0
    delay: float = 0.0
    message: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ServerStats:
    """A snapshot of what the server saw. A call is a chat or generate request that
    produces text; ``calls_disconnected`` counts calls stopped because the client went away."""

    requests: int = 0
    calls_started: int = 0
    calls_finished: int = 0
    calls_disconnected: int = 0
    calls_faulted: int = 0
    tokens_generated: int = 0
    embed_requests: int = 0
    loads: int = 0
    unloads: int = 0
    evictions: int = 0
    reloads: int = 0
    active_calls: int = 0
    peak_active_calls: int = 0
    loaded: tuple[str, ...] = ()


@dataclasses.dataclass(slots=True)
class _Runner:
    """A model resident (or being loaded) on the simulated GPU."""

    name: str
    profile: ModelProfile
    runner_options: tuple[tuple[str, object], ...]
    busy: bool = True
    ready: bool = False
    expires_at: float | None = None  # epoch seconds; None: never
    last_used: float = 0.0
    unload_when_idle: bool = False

    @property
    def context_length(self) -> int:
        """The num_ctx this runner was loaded with."""
        value = dict(self.runner_options)["num_ctx"]
        return value if isinstance(value, int) else self.profile.context_length


class _HTTPError(Exception):
    """An error answered as Ollama does: a status and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ClientGone(Exception):
    """The client closed its connection: stop generating."""


class _Aborted(Exception):
    """The server is stopping or stopped listening: drop the request."""


class _Cut(Exception):
    """An injected fault closes the connection without finishing the response."""


class SimulatedOllama:
    """An Ollama-compatible HTTP server on loopback with simulated models.

    ``speed`` divides every simulated delay (load, first token, per token), so tests can
    run a realistic profile in milliseconds. State (loaded models, stats, faults) lives
    here, not in the listener, so :meth:`refuse_connections` and
    :meth:`accept_connections` keep it across a simulated outage.
    """

    def __init__(
        self,
        models: Mapping[str, ModelProfile] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_loaded_models: int = 1,
        speed: float = 1.0,
    ) -> None:
        if max_loaded_models < 1:
            raise ValueError("max_loaded_models must be at least 1")
        if speed <= 0:
            raise ValueError("speed must be positive")
        catalog = DEFAULT_MODELS if models is None else models
        self.models: Mapping[str, ModelProfile] = MappingProxyType(
            {_canonical(name): profile for name, profile in catalog.items()}
        )
        self.host = host
        self.max_loaded_models = max_loaded_models
        self.speed = speed
        self._port = port
        self._cond = threading.Condition()
        self._runners: dict[str, _Runner] = {}
        self._counters: Counter[str] = Counter()
        self._faults: list[Fault] = []
        self._listener: _Listener | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- life cycle

    def start(self) -> str:
        """Start listening (on a free port if ``port`` was 0); returns the base URL."""
        if self._listener is not None:
            raise RuntimeError("the simulated server is already running")
        listener = _Listener((self.host, self._port), _Handler)
        listener.sim = self
        self._port = listener.server_address[1]
        self._listener = listener
        self._thread = threading.Thread(
            target=listener.serve_forever,
            kwargs={"poll_interval": 0.01},  # how soon stop() is noticed
            name=f"simulated-ollama:{self._port}",
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop listening, drop every connection and join every server thread."""
        listener, thread = self._listener, self._thread
        self._listener = self._thread = None
        if listener is None or thread is None:
            return
        listener.interrupt.set()
        with self._cond:
            self._cond.notify_all()
        listener.shutdown()
        listener.drop_connections()
        listener.server_close()
        thread.join()

    def refuse_connections(self) -> None:
        """Simulate Ollama going down: stop listening and drop connections, keep state."""
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

    # ------------------------------------------------------------------- faults

    def inject(
        self,
        kind: FaultKind,
        *,
        path: str | None = None,
        times: int | None = 1,
        after_chunks: int = 0,
        delay: float = 0.0,
        message: str | None = None,
    ) -> Fault:
        """Make the next ``times`` matching requests fail as ``kind`` says (see Fault)."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None for every request")
        fault = Fault(kind, path, times, after_chunks, delay, message)
        with self._cond:
            self._faults.append(fault)
        return fault

    @property
    def faults(self) -> tuple[Fault, ...]:
        """The faults still pending, with ``times`` counting what is left."""
        with self._cond:
            return tuple(self._faults)

    def clear_faults(self) -> None:
        """Remove every pending fault."""
        with self._cond:
            self._faults.clear()

    def _take_fault(self, path: str) -> Fault | None:
        with self._cond:
            for index, fault in enumerate(self._faults):
                if fault.path is None or fault.path == path:
                    if fault.times is not None:
                        if fault.times == 1:
                            del self._faults[index]
                        else:
                            self._faults[index] = dataclasses.replace(fault, times=fault.times - 1)
                    return fault
        return None

    # -------------------------------------------------------------------- stats

    def stats(self) -> ServerStats:
        """A snapshot of the counters and the models loaded now."""
        with self._cond:
            return self._snapshot_locked()

    @property
    def loaded_models(self) -> tuple[str, ...]:
        """The names of the models resident now (Ollama's ``name:tag`` form)."""
        return self.stats().loaded

    def wait_for(
        self, predicate: Callable[[ServerStats], bool], timeout: float = 5.0
    ) -> ServerStats:
        """Block until ``predicate(stats)`` holds; raise TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snapshot = self._snapshot_locked()
                if predicate(snapshot):
                    return snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the simulated server never got there: {snapshot}")
                self._cond.wait(min(remaining, 0.05))  # keep_alive expiry is time-driven

    def _snapshot_locked(self) -> ServerStats:
        self._sweep_locked()
        fields = {f.name for f in dataclasses.fields(ServerStats)} - {"loaded"}
        loaded = tuple(sorted(r.name for r in self._runners.values() if r.ready))
        return ServerStats(**{name: self._counters[name] for name in fields}, loaded=loaded)

    def _bump(self, counter: str, amount: int = 1) -> None:
        with self._cond:
            self._bump_locked(counter, amount)

    def _bump_locked(self, counter: str, amount: int = 1) -> None:
        self._counters[counter] += amount
        if counter == "active_calls":
            peak = max(self._counters["peak_active_calls"], self._counters["active_calls"])
            self._counters["peak_active_calls"] = peak
        self._cond.notify_all()

    # ---------------------------------------------------------------- residency

    def _lookup(self, model: str) -> tuple[str, ModelProfile]:
        name = _canonical(model)
        profile = self.models.get(name)
        if profile is None:
            raise _HTTPError(404, f'model "{model}" not found, try pulling it first')
        return name, profile

    def _acquire(
        self,
        name: str,
        profile: ModelProfile,
        runner_options: tuple[tuple[str, object], ...],
        interrupt: threading.Event,
    ) -> tuple[_Runner, bool]:
        """Take the model's runner for one request, waiting while it or the GPU is busy.

        Returns the runner and whether it still has to be loaded. Like Ollama with
        OLLAMA_NUM_PARALLEL=1, one request runs per model; loading another model when
        ``max_loaded_models`` are resident evicts the least recently used idle one.
        """
        with self._cond:
            while True:
                if interrupt.is_set():
                    raise _Aborted
                self._sweep_locked()
                runner = self._runners.get(name)
                if runner is not None and not runner.busy:
                    if runner.runner_options == runner_options:
                        runner.busy = True
                        return runner, False
                    self._drop_locked(runner, "reloads")
                    continue
                if runner is None:
                    if len(self._runners) < self.max_loaded_models:
                        runner = _Runner(name, profile, runner_options)
                        self._runners[name] = runner
                        return runner, True
                    idle = [r for r in self._runners.values() if not r.busy]
                    if idle:
                        self._drop_locked(min(idle, key=lambda r: r.last_used), "evictions")
                        continue
                self._cond.wait()

    def _loaded(self, runner: _Runner) -> None:
        with self._cond:
            runner.ready = True
            self._bump_locked("loads")

    def _release(self, runner: _Runner, keep_alive: float | None) -> None:
        """Give the runner back; it stays resident for ``keep_alive`` seconds (None: forever).

        A runner whose load never finished (the server stopped) is forgotten.
        """
        with self._cond:
            runner.busy = False
            runner.last_used = time.monotonic()
            runner.expires_at = None if keep_alive is None else time.time() + keep_alive
            if not runner.ready:
                self._runners.pop(runner.name, None)
            elif keep_alive == 0 or runner.unload_when_idle:
                self._drop_locked(runner, "unloads")
            self._cond.notify_all()

    def _unload(self, name: str) -> None:
        """Unload now, or as soon as the request running on it ends."""
        with self._cond:
            runner = self._runners.get(name)
            if runner is None:
                return
            if runner.busy:
                runner.unload_when_idle = True
            else:
                self._drop_locked(runner, "unloads")

    def _drop_locked(self, runner: _Runner, reason: str) -> None:
        del self._runners[runner.name]
        self._bump_locked(reason)

    def _sweep_locked(self) -> None:
        now = time.time()
        for runner in list(self._runners.values()):
            if not runner.busy and runner.expires_at is not None and runner.expires_at <= now:
                self._drop_locked(runner, "unloads")

    def _ps(self) -> list[dict[str, Any]]:
        now_ns = time.time_ns()
        with self._cond:
            self._sweep_locked()
            runners = sorted(
                (r for r in self._runners.values() if r.ready), key=lambda r: -r.last_used
            )
            return [
                {
                    "name": r.name,
                    "model": r.name,
                    "size": r.profile.size_bytes,
                    "digest": _digest(r.name),
                    "details": _details(r.profile),
                    "expires_at": _rfc3339(
                        now_ns + _FOREVER_NS if r.expires_at is None else int(r.expires_at * 1e9)
                    ),
                    "size_vram": r.profile.size_bytes,
                    "context_length": r.context_length,
                }
                for r in runners
            ]


class _Listener(ThreadingHTTPServer):
    """The socket server: one thread per connection, all joined on close."""

    daemon_threads = False
    block_on_close = True
    sim: SimulatedOllama

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.interrupt = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, alive: bool) -> None:
        """Remember open connections so that closing the server can drop them."""
        with self._connections_lock:
            if alive:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def drop_connections(self) -> None:
        """Shut every open connection, which wakes their threads."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its thread

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.exception("simulated ollama: error while handling a request")


class _Handler(BaseHTTPRequestHandler):
    """One connection: parses requests, answers like Ollama, streams chunked NDJSON."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls
    server_version = "SimulatedOllama/" + VERSION
    listener: _Listener
    connection: socket.socket

    def setup(self) -> None:
        super().setup()
        self.listener = cast(_Listener, self.server)
        self.listener.track(self.connection, True)
        self._pipelined = False

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:
            self.close_connection = True  # reset between requests: the client hung up

    def finish(self) -> None:
        self.listener.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("simulated ollama: " + format, *args)

    @property
    def sim(self) -> SimulatedOllama:
        return self.listener.sim

    # ----------------------------------------------------------------- dispatch

    def do_HEAD(self) -> None:
        self._dispatch({"/": self._root})

    def do_GET(self) -> None:
        self._dispatch(
            {
                "/": self._root,
                "/api/tags": self._tags,
                "/api/ps": self._ps,
                "/api/version": self._version,
            }
        )

    def do_POST(self) -> None:
        self._dispatch(
            {
                "/api/chat": self._chat,
                "/api/generate": self._generate,
                "/api/embed": self._embed,
                "/api/show": self._show,
            }
        )

    def _dispatch(
        self, routes: Mapping[str, Callable[[dict[str, Any], Fault | None], None]]
    ) -> None:
        path = self.path.split("?", 1)[0]
        self.sim._bump("requests")
        try:
            try:
                body = self._read_body()
                route = routes.get(path)
                if route is None:
                    self._send_text(404, "404 page not found")
                    return
                fault = None if path == "/" else self.sim._take_fault(path)
                if fault is not None and path not in ("/api/chat", "/api/generate"):
                    self._apply_fault_before_output(fault, body)
                    fault = None
                route(body, fault)
            except _HTTPError as exc:
                self._send_json(exc.status, {"error": exc.message})
        except (_ClientGone, _Aborted, _Cut):
            self.close_connection = True  # the client left, the server stops, or a fault

    def _read_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.command != "POST":
            return {}
        if not raw.strip():
            raise _HTTPError(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise _HTTPError(400, f"invalid JSON in request body: {exc}") from None
        if not isinstance(body, dict):
            raise _HTTPError(400, "the request body must be a JSON object")
        return body

    def _apply_fault_before_output(self, fault: Fault, body: Mapping[str, Any]) -> None:
        """Faults that act before any output: status errors, a cut, a delay."""
        kind = fault.kind
        if kind in (FaultKind.SLOW_RESPONSE, FaultKind.STALL_STREAM):
            self._pause(fault.delay)
            return
        self.sim._bump("calls_faulted")
        if kind is FaultKind.CUT_STREAM:
            raise _Cut
        if kind is FaultKind.NOT_FOUND:
            model = body.get("model") or body.get("name") or ""
            raise _HTTPError(
                404, fault.message or f'model "{model}" not found, try pulling it first'
            )
        status = {FaultKind.BUSY: 503}.get(kind, 500)
        raise _HTTPError(status, fault.message or _DEFAULT_FAULT_MESSAGES[kind])

    # ------------------------------------------------------------- simple routes

    def _root(self, body: dict[str, Any], fault: Fault | None) -> None:
        self._send_text(200, "Ollama is running")

    def _version(self, body: dict[str, Any], fault: Fault | None) -> None:
        self._send_json(200, {"version": VERSION})

    def _tags(self, body: dict[str, Any], fault: Fault | None) -> None:
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": _rfc3339(_MODIFIED_AT_NS),
                "size": profile.size_bytes,
                "digest": _digest(name),
                "details": _details(profile),
            }
            for name, profile in self.sim.models.items()
        ]
        self._send_json(200, {"models": models})

    def _ps(self, body: dict[str, Any], fault: Fault | None) -> None:
        self._send_json(200, {"models": self.sim._ps()})

    def _show(self, body: dict[str, Any], fault: Fault | None) -> None:
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            raise _HTTPError(400, "model is required")
        name, profile = self.sim._lookup(model)
        family = profile.family
        self._send_json(
            200,
            {
                "license": "",
                "modelfile": f"# Modelfile generated by the simulated Ollama\nFROM {name}\n",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": _details(profile),
                "model_info": {
                    "general.architecture": family,
                    "general.parameter_count": _parameter_count(profile.parameter_size),
                    f"{family}.context_length": profile.context_length,
                    f"{family}.embedding_length": profile.embedding_dimensions,
                },
                "capabilities": ["embedding"] if profile.embedding_only else ["completion"],
                "modified_at": _rfc3339(_MODIFIED_AT_NS),
            },
        )

    def _embed(self, body: dict[str, Any], fault: Fault | None) -> None:
        started = time.monotonic_ns()
        model = _require_model(body)
        name, profile = self.sim._lookup(model)
        inputs = body.get("input", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise _HTTPError(400, "invalid input type: input must be a string or strings")
        keep_alive = _parse_keep_alive(body.get("keep_alive"))
        runner_options = _runner_options(_options(body), profile)
        self.sim._bump("embed_requests")
        runner, needs_load = self.sim._acquire(
            name, profile, runner_options, self.listener.interrupt
        )
        try:
            load_ns = self._load(runner, needs_load)
            self._pause(profile.first_token_seconds / self.sim.speed)
            vectors = [embedding(name, text, profile.embedding_dimensions) for text in inputs]
        finally:
            self.sim._release(runner, keep_alive)
        self._send_json(
            200,
            {
                "model": model,
                "embeddings": vectors,
                "total_duration": time.monotonic_ns() - started,
                "load_duration": load_ns,
                "prompt_eval_count": sum(len(text.split()) for text in inputs),
            },
        )

    # ---------------------------------------------------------------- generation

    def _chat(self, body: dict[str, Any], fault: Fault | None) -> None:
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise _HTTPError(400, "messages must be a list")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _HTTPError(400, "each message needs a role")
            if not isinstance(message.get("content", ""), str):
                raise _HTTPError(400, "message content must be a string")
        self._complete(body, fault, "chat", render_chat(messages) if messages else None)

    def _generate(self, body: dict[str, Any], fault: Fault | None) -> None:
        prompt, system = body.get("prompt") or "", body.get("system") or ""
        if not isinstance(prompt, str) or not isinstance(system, str):
            raise _HTTPError(400, "prompt and system must be strings")
        context = render_generate(prompt, system) if prompt or system else None
        self._complete(body, fault, "generate", context)

    def _complete(
        self, body: dict[str, Any], fault: Fault | None, kind: str, context: str | None
    ) -> None:
        """Run a chat or generate request; ``context`` None means load or unload only."""
        started = time.monotonic_ns()
        model = _require_model(body)
        name, profile = self.sim._lookup(model)
        if fault is not None and fault.kind not in _MID_STREAM_FAULTS:
            self._apply_fault_before_output(fault, body)
            fault = None
        if profile.embedding_only:
            raise _HTTPError(400, f'"{model}" does not support {kind}')
        keep_alive = _parse_keep_alive(body.get("keep_alive"))
        options = _options(body)
        runner_options = _runner_options(options, profile)
        limit = options.get("num_predict")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise _HTTPError(400, 'option "num_predict" must be an integer')
        stream = body.get("stream")
        if stream is None:
            stream = True
        if not isinstance(stream, bool):
            raise _HTTPError(400, "stream must be true or false")
        if context is None:
            self._load_or_unload(model, name, profile, runner_options, keep_alive, kind)
            return
        self.sim._bump("calls_started")
        runner, needs_load = self.sim._acquire(
            name, profile, runner_options, self.listener.interrupt
        )
        cap = profile.max_answer_tokens
        self.sim._bump("active_calls")
        try:
            call = _Call(
                model=model,
                name=name,
                kind=kind,
                profile=profile,
                context=context,
                stream=stream,
                fault=fault,
                started_ns=started,
                load_ns=self._load(runner, needs_load),
                limit=cap if limit is None or limit <= 0 else min(limit, cap),
            )
            final = self._decode(call)
        except _ClientGone:
            self.sim._bump("calls_disconnected")
            raise
        finally:
            self.sim._bump("active_calls", -1)
            self.sim._release(runner, keep_alive)
        # The state settles before the final line goes out, so a client that has read
        # it sees the model released (or unloaded) and the call counted.
        self.sim._bump("calls_finished")
        if stream:
            self._write_line(final)
            self._end_stream()
        else:
            self._send_json(200, final)

    def _load(self, runner: _Runner, needs_load: bool) -> int:
        """Simulate the model load (Ollama finishes a load even if its client left)."""
        if not needs_load:
            return 0
        began = time.monotonic_ns()
        self._pause(runner.profile.load_seconds / self.sim.speed, watch_client=False)
        self.sim._loaded(runner)
        return time.monotonic_ns() - began

    def _load_or_unload(
        self,
        model: str,
        name: str,
        profile: ModelProfile,
        runner_options: tuple[tuple[str, object], ...],
        keep_alive: float | None,
        kind: str,
    ) -> None:
        """An empty request: keep_alive 0 unloads, anything else loads (Ollama's idiom)."""
        if keep_alive == 0:
            self.sim._unload(name)
            reason = "unload"
        else:
            runner, needs_load = self.sim._acquire(
                name, profile, runner_options, self.listener.interrupt
            )
            try:
                self._load(runner, needs_load)
            finally:
                self.sim._release(runner, keep_alive)
            reason = "load"
        line: dict[str, Any] = {"model": model, "created_at": _rfc3339(time.time_ns())}
        line.update(_text_field(kind, ""))
        line.update(done=True, done_reason=reason)
        self._send_json(200, line)

    def _decode(self, call: _Call) -> dict[str, Any]:
        """Produce tokens one by one, streaming each as one NDJSON line; returns the final
        line (with the whole text when not streaming), which the caller sends."""
        speed = self.sim.speed
        words = call.context.split()
        prompt_count = len(words)
        eval_began = time.monotonic_ns()
        self._pause(call.profile.first_token_seconds / speed)
        prompt_ns = time.monotonic_ns() - eval_began
        eval_began = time.monotonic_ns()
        pieces: list[str] = []
        if call.stream:
            self._start_stream()
        done_reason = "length"
        while len(pieces) < call.limit:
            if call.fault is not None and call.fault.after_chunks == len(pieces):
                self._mid_stream_fault(call)
            token = next_token(call.name, words, call.profile.mean_answer_tokens)
            if token is None:
                done_reason = "stop"
                break
            if pieces:
                self._pause(1.0 / (call.profile.tokens_per_second * speed))
            words.append(token.strip())
            pieces.append(token)
            self.sim._bump("tokens_generated")
            if call.stream:
                self._write_line(call.line(token, done=False))
        self._check_client()
        now = time.monotonic_ns()
        final = call.line("" if call.stream else "".join(pieces), done=True)
        final.update(
            done_reason=done_reason,
            total_duration=now - call.started_ns,
            load_duration=call.load_ns,
            prompt_eval_count=prompt_count,
            prompt_eval_duration=prompt_ns,
            eval_count=len(pieces),
            eval_duration=now - eval_began,
        )
        return final

    def _mid_stream_fault(self, call: _Call) -> None:
        fault = call.fault
        assert fault is not None
        if fault.kind is FaultKind.STALL_STREAM:
            self._pause(fault.delay)
            return
        self.sim._bump("calls_faulted")
        if fault.kind is FaultKind.CUT_STREAM:
            raise _Cut
        message = fault.message or _DEFAULT_FAULT_MESSAGES[FaultKind.ERROR_LINE]
        if not call.stream:
            raise _HTTPError(500, message)
        self._write_line({"error": message})
        self._end_stream()
        raise _Aborted

    # ------------------------------------------------------------------ waiting

    def _pause(self, seconds: float, *, watch_client: bool = True) -> None:
        """Sleep a simulated delay; wake early when the server stops or the client leaves."""
        deadline = time.monotonic() + seconds
        while True:
            if watch_client:
                self._check_client()
            elif self.listener.interrupt.is_set():
                raise _Aborted
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if watch_client and not self._pipelined:
                select.select([self.connection], [], [], remaining)  # readable: EOF or stop
            else:
                self.listener.interrupt.wait(remaining)

    def _check_client(self) -> None:
        """Raise if the server is stopping or the client closed its end."""
        if self.listener.interrupt.is_set():
            raise _Aborted
        if self._pipelined:
            return
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return
        try:
            data = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            raise _ClientGone from None
        if not data:
            raise _ClientGone
        self._pipelined = True  # the client sent its next request already; keep going

    # ------------------------------------------------------------------ writing

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            raise _ClientGone from None

    def _send_json(self, status: int, obj: Mapping[str, Any]) -> None:
        self._send(status, "application/json; charset=utf-8", _encode(obj))

    def _send_text(self, status: int, text: str) -> None:
        self._send(status, "text/plain; charset=utf-8", text.encode())

    def _start_stream(self) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            raise _ClientGone from None

    def _write_line(self, obj: Mapping[str, Any]) -> None:
        self._write_chunk(_encode(obj))

    def _end_stream(self) -> None:
        self._write_chunk(b"")

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            raise _ClientGone from None


_MID_STREAM_FAULTS = (FaultKind.CUT_STREAM, FaultKind.ERROR_LINE, FaultKind.STALL_STREAM)


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    """One chat or generate call being decoded."""

    model: str  # as the client spelled it; echoed back like Ollama does
    name: str  # canonical name, which seeds the text
    kind: str
    profile: ModelProfile
    context: str
    stream: bool
    fault: Fault | None
    started_ns: int
    load_ns: int
    limit: int

    def line(self, text: str, *, done: bool) -> dict[str, Any]:
        """One response object carrying ``text``."""
        out: dict[str, Any] = {"model": self.model, "created_at": _rfc3339(time.time_ns())}
        out.update(_text_field(self.kind, text))
        out["done"] = done
        return out


def _text_field(kind: str, text: str) -> dict[str, Any]:
    if kind == "chat":
        return {"message": {"role": "assistant", "content": text}}
    return {"response": text}


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _canonical(name: str) -> str:
    """Ollama's full name: ``llama3.2`` is ``llama3.2:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _details(profile: ModelProfile) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": profile.family,
        "families": [profile.family],
        "parameter_size": profile.parameter_size,
        "quantization_level": profile.quantization_level,
    }


def _parameter_count(parameter_size: str) -> int:
    """``3.2B`` → 3200000000, ``137M`` → 137000000."""
    scale = {"B": 10**9, "M": 10**6, "K": 10**3}.get(parameter_size[-1:].upper(), 1)
    try:
        return int(float(parameter_size.rstrip("BMKbmk")) * scale)
    except ValueError:
        return 0


def _rfc3339(epoch_ns: int) -> str:
    """Go's RFC3339Nano in UTC, e.g. ``2025-01-15T10:00:00.123456789Z``."""
    seconds, nanos = divmod(epoch_ns, 10**9)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def _require_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _HTTPError(400, "model is required")
    return model


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise _HTTPError(400, "options must be an object")
    return options


def _runner_options(
    options: Mapping[str, Any], profile: ModelProfile
) -> tuple[tuple[str, object], ...]:
    """The options that force a reload when they change, with Ollama's defaults filled in."""
    defaults = dict(_RUNNER_DEFAULTS, num_ctx=profile.context_length)
    return tuple((key, options.get(key, defaults[key])) for key in RELOAD_OPTIONS)


def _parse_keep_alive(value: object) -> float | None:
    """Ollama's keep_alive: seconds as a number or a Go duration string; negative is
    forever (None); missing is five minutes."""
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value < 0 else float(value)
    if not isinstance(value, str):
        raise _HTTPError(400, "invalid keep_alive: must be a duration string or seconds")
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    if not body or _DURATION_PART.sub("", body):
        raise _HTTPError(400, f'time: invalid duration "{value}"')
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(body))
    return None if sign < 0 and seconds > 0 else seconds
