"""The gateway's shared state and the few things every route does with the facade.

Every facade call that may block (a pykka ask, a SQLite commit) runs on a dedicated
thread pool, never on the event loop (docs/architecture.md section 8); waiting for a job
uses ``await ticket`` / ``ticket.stream()``, which the sinks wake with
``call_soon_threadsafe``. The pool is wide so that many concurrent submits reach the
job store together and are committed in one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import structlog
from fastapi import Depends, Request

from actors.config import Config, GatewaySettings, ReloadRefusedError
from actors.gateway.auth import Caller, KeyRing
from actors.gateway.errors import GatewayError
from actors.gateway.metrics import GatewayMetrics
from actors.gateway.watch import LaneWatch
from actors.slot_call import SEEN
from actors.system import GpuLane
from actors.ticket import Ticket
from protocol import (
    BackendError,
    EmbedResult,
    Job,
    JobKind,
    JobSpec,
    JobState,
    Lane,
    SystemStoppedError,
    ValidationError,
)
from protocol.spec import check_text

__all__ = [
    "CallerDep",
    "Gateway",
    "Upstream",
    "ViewerDep",
    "caller_of",
    "gateway_of",
    "parse_ref",
    "viewer_of",
]

log = structlog.get_logger("actors.gateway")

T = TypeVar("T")

FACADE_THREADS = 64
EMBED_TIMEOUT_S = 120.0  # an embedding call that takes longer is cancelled (504)
MAX_SEQ_DIGITS = 18  # sequence numbers are SQLite integers (below 2**63)


@dataclasses.dataclass(frozen=True)
class Upstream:
    """A model server the catalog and model-management routes reach: a backend's name,
    kind (``ollama``, ``simulated`` or ``openai``) and URL; ``transport`` stands in for
    the network (tests)."""

    name: str
    kind: str
    url: str
    transport: httpx.AsyncBaseTransport | None = dataclasses.field(default=None, compare=False)

    @property
    def speaks_openai(self) -> bool:
        """True for an OpenAI-compatible server, which has none of Ollama's model routes."""
        return self.kind == "openai"


class Gateway:
    """What the routes share: the facade, the settings in force, keys, metrics, live tickets."""

    def __init__(
        self,
        lane: GpuLane,
        settings: GatewaySettings,
        *,
        upstreams: Sequence[Upstream] = (),
        config_path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.lane = lane
        self.settings = settings
        self.keys = KeyRing(settings.api_keys)
        names = [upstream.name for upstream in upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must be unique, got {names}")
        self.upstreams = tuple(upstreams)  # in config order: the first answer wins
        # "openai" when every backend is OpenAI-compatible (they take no tool result names);
        # with any Ollama backend a tool result carries its name (docs/gateway.md)
        kinds = {host.kind for host in lane.config.hosts}
        self.upstream_kind = "openai" if kinds == {"openai"} else "ollama"
        self.config_path = config_path
        self.overrides = dict(overrides or {})  # [gateway] keys the command line set
        self.metrics = GatewayMetrics(lane.status)
        self.watch = LaneWatch(lane)
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._tickets: dict[str, Ticket] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- life cycle (the app's lifespan) ------------------------------------------------

    async def open(self) -> None:
        """Start the thread pool and a client for each model server's catalog."""
        self._pool = ThreadPoolExecutor(FACADE_THREADS, thread_name_prefix="gateway-facade")
        for upstream in self.upstreams:
            self._clients[upstream.name] = httpx.AsyncClient(
                base_url=upstream.url, timeout=10.0, transport=upstream.transport
            )

    async def close(self) -> None:
        """Stop watching detached jobs (they keep running), close the pool and the clients."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tickets.clear()
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def http(self, upstream: Upstream) -> httpx.AsyncClient:
        """The open client for ``upstream``'s model server."""
        return self._clients[upstream.name]

    def server_of(self, upstream: Upstream) -> str:
        """How an error names ``upstream``'s model server: by its backend when several."""
        if len(self.upstreams) == 1:
            return "the model server"
        return f"the model server of backend {upstream.name!r}"

    # --- the facade, off the event loop -------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking facade call on the gateway's pool and await its result."""
        if self._pool is None:
            raise RuntimeError("the gateway is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def submit(
        self, spec: JobSpec, *, detach: bool, cloud_by_default: bool = False
    ) -> Ticket:
        """Check the size limits, log the request, and submit it durably.

        ``cloud_by_default``: the request did not ask about the cloud, so ``allow_cloud``
        is its API key's default. A default sends a job to the cloud only if the cloud
        backend can carry it; a job it cannot carry is submitted without the cloud (a
        request that asked for the cloud is refused instead, naming the field).
        """
        self.check_limits(spec)
        self.log_submit(spec)
        try:
            ticket = await self.call(self.lane.submit, spec, detach=detach)
        except ValidationError as exc:
            if not (cloud_by_default and spec.allow_cloud):
                raise
            log.info("gateway_local_only", caller=spec.caller, field=exc.field)
            spec = dataclasses.replace(spec, allow_cloud=False)
            ticket = await self.call(self.lane.submit, spec, detach=detach)
        if detach:
            self.track(ticket)
        return ticket

    async def embed(
        self, caller: Caller, model: str, inputs: list[str], lane: Lane, options: dict[str, Any]
    ) -> EmbedResult:
        """Check the size limits and embed ``inputs`` past the GPU queue (``GpuLane.embed``).

        The model server's refusals keep their meaning: an unknown model is a 404 and a
        bad request a 400; a busy or unreachable server is a 503 with Retry-After, any
        other failure of it a 502, and a call over ``EMBED_TIMEOUT_S`` a 504.
        """
        if not inputs:
            raise GatewayError(400, "needs at least one text", field="input")
        size = sum(len(text) for text in inputs)
        self._check_size(len(inputs), "texts", "input", size, "input")
        for index, text in enumerate(inputs):
            check_text(f"input[{index}]", text)
        log.info("gateway_embed", caller=caller.name, model=model, inputs=len(inputs))
        began = time.monotonic()
        try:
            result = await self.call(
                self.lane.embed, model, inputs, caller=caller.name, lane=lane,
                options=options, timeout=EMBED_TIMEOUT_S,
            )  # fmt: skip
        except BackendError as exc:
            raise _embed_failure(exc) from exc
        except TimeoutError as exc:
            raise GatewayError(504, str(exc), field="model", reason="upstream") from exc
        self.metrics.embedded(model, time.monotonic() - began)
        return result

    async def job_for(self, caller: Caller, ref: str) -> Job:
        """A job by id or sequence number, if ``caller`` may see it (404 otherwise)."""
        job = await self.call(self.lane.get, parse_ref(ref))
        if not caller.may_see(job.spec.caller):
            raise GatewayError(404, f"no job {ref!r}", field="job", reason="not_found")
        return job

    async def queue_position(self, job: Job) -> int:
        """Jobs ahead of a queued ``job`` by lane, priority and age: an estimate of the
        arbiter's order (chains, swap deferral and back-off can reorder it)."""
        queued = await self.call(
            self.lane.list, states=frozenset({JobState.QUEUED}), limit=100_000, oldest_first=True
        )
        mine = _queue_key(job)
        return sum(1 for other in queued if _queue_key(other) < mine)

    def ticket(self, job_id: str) -> Ticket | None:
        """The live ticket of a detached job this gateway submitted, while it runs."""
        return self._tickets.get(job_id)

    def track(self, ticket: Ticket) -> None:
        """Keep a detached ticket until its job ends, then record the job's metrics."""
        self._tickets[ticket.job_id] = ticket
        task = asyncio.get_running_loop().create_task(self._watch(ticket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, ticket: Ticket) -> None:
        try:
            with contextlib.suppress(Exception):
                await ticket
            # A lane that stopped before the job ended has no job to count.
            with contextlib.suppress(SystemStoppedError):
                if ticket.done():
                    self.metrics.job_ended(ticket.job(timeout=0))
        finally:
            self._tickets.pop(ticket.job_id, None)

    # --- request hygiene ----------------------------------------------------------------

    def check_limits(self, spec: JobSpec) -> None:
        """413 naming the field and the limit when a request is larger than allowed."""
        size = len(spec.prompt) + len(spec.system or "")
        size += sum(len(m.content) for m in spec.messages)
        text_field = "messages" if spec.kind is JobKind.CHAT else "prompt"
        self._check_size(len(spec.messages), "messages", "messages", size, text_field)

    def _check_size(
        self, count: int, noun: str, count_field: str, chars: int, chars_field: str
    ) -> None:
        """413 when a request has more items (messages, texts) or characters than allowed."""
        settings = self.settings
        if count > settings.max_messages:
            raise GatewayError(
                413, f"has {count} {noun}; the limit is {settings.max_messages}",
                field=count_field, reason="too_large",
            )  # fmt: skip
        if chars > settings.max_prompt_chars:
            raise GatewayError(
                413,
                f"holds {chars} characters of text; the limit is {settings.max_prompt_chars}",
                field=chars_field, reason="too_large",
            )  # fmt: skip

    def log_submit(self, spec: JobSpec) -> None:
        """Log a submission; the text itself only when ``gateway.log_prompts`` is on."""
        fields: dict[str, Any] = {
            "caller": spec.caller,
            "model": spec.model,
            "kind": spec.kind.value,
            "lane": spec.lane.value,
            "priority": spec.priority.name.lower(),
        }
        if self.settings.log_prompts:
            fields["prompt"] = spec.prompt
            fields["messages"] = [m.to_dict() for m in spec.messages]
        log.info("gateway_submit", **fields)

    def reload(self) -> tuple[Config, tuple[str, ...]]:
        """Re-read the config file and apply it: the lane's sections
        (``GpuLane.reload_config``), then the gateway's keys and limits; answers the config
        in force and the keys that changed.

        The command line's overrides (``--host``, ``--port``) stay in force and are not
        compared with the file. A change that cannot apply while running (the listen
        address from the file, the store, the backend, the cloud slots) is a 409 naming
        every such key, and nothing changes.
        """
        if self.config_path is None:
            raise GatewayError(
                409, "the gateway was started without a config file", field="config",
                allowed="gpulane serve --config FILE", reason="conflict",
            )  # fmt: skip
        try:
            config = Config.load(self.config_path)
        except OSError as exc:
            raise GatewayError(
                409, f"cannot read {self.config_path}: {exc.strerror}", field="config",
                reason="conflict",
            ) from None  # fmt: skip
        new = dataclasses.replace(config.gateway, **self.overrides)
        moved = [
            f"gateway.{key}"
            for key in ("host", "port")
            if getattr(new, key) != getattr(self.settings, key)
        ]
        if moved:
            raise ReloadRefusedError(moved)
        config = config.replace(gateway=new)
        changes = self.lane.reload_config(config)
        self.settings = new
        self.keys = KeyRing(new.api_keys)
        return config, changes


def parse_ref(ref: str) -> str | int:
    """A job reference from a URL as the store looks it up: up to ``MAX_SEQ_DIGITS`` ASCII
    digits are a sequence number, anything else a job id."""
    if ref.isascii() and ref.isdigit() and len(ref) <= MAX_SEQ_DIGITS:
        return int(ref)
    return ref


def gateway_of(request: Request) -> Gateway:
    """The Gateway behind this app."""
    gateway: Gateway = request.app.state.gateway
    return gateway


async def caller_of(request: Request) -> Caller:
    """FastAPI dependency: the authenticated caller (401 without a valid key)."""
    return gateway_of(request).keys.identify(request.headers.get("authorization"))


CallerDep = Annotated[Caller, Depends(caller_of)]


async def viewer_of(request: Request) -> Caller | None:
    """FastAPI dependency for the views: the caller, or None for a request without a key
    on a gateway with keys (a browser: it sees aggregates only). A bad key is still a 401."""
    gateway = gateway_of(request)
    header = request.headers.get("authorization")
    if header is None and not gateway.keys.open:
        return None
    return gateway.keys.identify(header)


ViewerDep = Annotated[Caller | None, Depends(viewer_of)]


async def cancel_on_disconnect(request: Request, ticket: Ticket) -> None:
    """Cancel ``ticket``'s job as soon as the client closes its connection."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            ticket.cancel()
            return


def _queue_key(job: Job) -> tuple[int, int, int]:
    return (job.spec.lane.rank, job.spec.priority.rank, job.seq)


def _embed_failure(exc: BackendError) -> GatewayError:
    """The HTTP error for a model server that did not embed (see :meth:`Gateway.embed`)."""
    if exc.transient:
        return GatewayError(
            503, exc.message, field="model", reason="upstream", headers={"Retry-After": "1"}
        )
    status = exc.status
    if status is not None and status in (400, 404):
        return GatewayError(status, exc.message, field="model", reason="upstream")
    return GatewayError(502, exc.message, field="model", reason="upstream")


def final_job(ticket: Ticket) -> Job:
    """The ended job of a ticket whose wait or stream has returned (does not block)."""
    job = ticket.job(timeout=0)
    if not job.state.is_terminal:
        raise RuntimeError(f"job {job.id} is still {job.state.value}")
    return job


def failure_status(job: Job) -> int:
    """The HTTP status for a job that ended without an answer before any output was sent.

    A job cancelled by someone else is a 409; "model not found" from the model server a
    404, as Ollama answers it. A job that failed before its retries ran out, and not for
    output its client had seen, failed permanently: the model server refused the request
    (a 4xx, such as a model that cannot think asked to) or gpulane could not send it as
    asked, so it is a 400 with the model server's own message. Any other failure is a
    502: the model server, upstream of the gateway, kept failing.
    """
    if job.state is JobState.CANCELLED:
        return 409
    error = job.error or ""
    if "not found" in error.lower():
        return 404
    if job.attempts < job.spec.max_attempts and SEEN not in error:
        return 400
    return 502
