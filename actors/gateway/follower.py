"""The gateway a follower runs: a gateway on PostgreSQL that does not hold the leader's lease
(docs/architecture.md section 14; docs/operations.md, "Several gateways").

It runs no GpuLane. It serves itself what needs no GPU and no admission: ``GET /healthz``,
``GET /readyz`` (a leader is known and the database answers), ``GET /status`` (the
leader's, with this gateway's view of the cluster), ``GET /metrics`` (its own: its role,
the lease, its forwards) and the job reads ``GET /jobs/{ref}`` and ``GET /jobs`` from the
database. Everything else is forwarded to the leader's gateway (``forward.py``).

The job reads are ``jobs_api``'s own route functions, so their answers, their query
checks and who may see what are the leader's. Those functions reach the app's
``state.gateway``; here that is a :class:`FollowerGateway`, which offers what they use
(``keys``, ``call``, ``lane.list``, ``job_for``) over a :class:`PgJobReader`. The same API
keys (``gateway.api_keys``) authenticate the routes it serves itself, through
``core.caller_of``; a forwarded request's key is the leader's to check.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from actors.config import GatewaySettings
from actors.gateway import health, jobs_api
from actors.gateway.app import METRICS_TYPE
from actors.gateway.auth import Caller, KeyRing
from actors.gateway.core import CallerDep, ViewerDep, parse_ref
from actors.gateway.errors import GatewayError, install_error_handlers, render
from actors.gateway.forward import (
    FORWARDED_BY,
    OUTCOMES,
    Forwarder,
    Outcome,
    leader_client,
    relayed_answer,
    relayed_headers,
    retry_after_s,
)
from actors.gateway.metrics import cluster_metrics
from actors.stores import PgJobReader
from protocol.cluster import ClusterSettings, ClusterView, Role
from protocol.errors import StoreError
from protocol.job import Job
from protocol.messages import ListJobs

__all__ = ["FollowerGateway", "create_follower_app", "follower_readiness"]

T = TypeVar("T")

READ_THREADS = 4  # the reader has one connection; a few threads keep the loop free
# How long /status waits for the leader's: it answers from memory in milliseconds, and a
# leader that hangs (stopped, past its lease) must not hold up top or the status page.
STATUS_TIMEOUT_S = 1.0
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]  # all are forwarded


class ReaderLane:
    """What ``jobs_api``'s reads ask of ``gateway.lane`` (``GpuLane.get`` and ``list``),
    answered from the database."""

    def __init__(self, reader: PgJobReader) -> None:
        self._reader = reader

    def get(self, job_id: str | int) -> Job:
        """A job by its id, or by its sequence number."""
        return self._reader.get(job_id)

    def list(self, **filters: Any) -> tuple[Job, ...]:
        """Jobs matching filters (see ``protocol.messages.ListJobs``), newest first."""
        return self._reader.list_jobs(ListJobs(**filters))


class FollowerGateway:
    """A follower's ``app.state.gateway``: the keys, its view of the cluster, the job
    reads off the event loop, the client it reaches the leader with, and its metrics."""

    def __init__(
        self,
        view: Callable[[], ClusterView],
        reader: PgJobReader,
        settings: GatewaySettings,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.view = view
        self.reader = reader
        self.settings = settings
        self.keys = KeyRing(settings.api_keys)
        self.lane = ReaderLane(reader)
        self.metrics = FollowerMetrics(view)
        self.client = leader_client(transport)
        self._pool: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        """Start the threads the database reads run on."""
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="follower-read")

    async def close(self) -> None:
        """Close the client and the threads (the reader is its owner's to close)."""
        await self.client.aclose()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking read on the follower's threads and await its result."""
        if self._pool is None:
            raise RuntimeError("the follower's gateway is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def job_for(self, caller: Caller, ref: str) -> Job:
        """A job by id or sequence number, if ``caller`` may see it (404 otherwise): the
        rules of ``core.Gateway.job_for``, a method of the leader's gateway."""
        job = await self.call(self.lane.get, parse_ref(ref))
        if not caller.may_see(job.spec.caller):
            raise GatewayError(404, f"no job {ref!r}", field="job", reason="not_found")
        return job


class _ClusterCollector(Collector):
    """The ``gpulane_cluster_*`` families from the follower's view at scrape time."""

    def __init__(self, view: Callable[[], ClusterView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        yield from cluster_metrics(self._view().to_dict())


class FollowerMetrics:
    """A follower's own registry: its role and the lease (``metrics.cluster_metrics``, as
    the leader exports them), and ``gpulane_cluster_forwarded_total{outcome}``."""

    def __init__(self, view: Callable[[], ClusterView]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ClusterCollector(view))
        self._forwarded = Counter(
            "gpulane_cluster_forwarded",
            "Requests this follower did not serve itself, by outcome: forwarded to the "
            "leader's gateway, or answered 503 as no leader was known, the leader could not "
            "be reached (502 if it failed after the request was sent), or another gateway "
            "had already forwarded it",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self._forwarded.labels(outcome)

    def count(self, outcome: Outcome) -> None:
        """One more request with this outcome."""
        self._forwarded.labels(outcome).inc()

    def render(self) -> bytes:
        """The Prometheus text."""
        return generate_latest(self.registry)


def follower_of(request: Request) -> FollowerGateway:
    """The FollowerGateway behind this app."""
    follower: FollowerGateway = request.app.state.gateway
    return follower


def create_follower_app(
    view: Callable[[], ClusterView],
    reader: PgJobReader,
    settings: GatewaySettings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    cluster: ClusterSettings | None = None,
) -> FastAPI:
    """A follower's app: ``view()`` is the cluster as this gateway's lease keeper last read
    it, ``reader`` the job database (the app does not close it), ``settings`` the
    ``[gateway]`` section (its API keys); ``transport`` stands in for the network to the
    leader (tests). A 503's ``Retry-After`` is ``cluster.lease_s`` rounded up."""
    lease_s = (cluster or ClusterSettings()).lease_s
    follower = FollowerGateway(view, reader, settings, transport)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await follower.open()
        try:
            yield
        finally:
            await follower.close()

    # No OpenAPI pages of its own: /docs and /openapi.json are the leader's, forwarded.
    app = FastAPI(
        title="gpulane gateway (follower)",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = follower
    install_error_handlers(app, lambda error: None, (app.router,))
    retry_after = {"Retry-After": str(retry_after_s(lease_s))}

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        error = GatewayError(503, str(exc), reason="store", headers=retry_after)
        return render(request, error)

    app.add_exception_handler(StoreError, store_unavailable)

    app.add_api_route("/healthz", health.healthz, methods=["GET"], tags=["ops"])
    app.add_api_route("/readyz", _readyz, methods=["GET"], tags=["ops"])
    app.add_api_route("/status", _status, methods=["GET"], tags=["ops"])
    app.add_api_route("/metrics", _metrics, methods=["GET"], tags=["ops"])
    app.add_api_route("/jobs", jobs_api.list_jobs, methods=["GET"], tags=["jobs"])
    app.add_api_route("/jobs/{ref}", jobs_api.get_job, methods=["GET"], tags=["jobs"])
    forwarder = Forwarder(view, follower.client, lease_s, follower.metrics.count)
    app.add_api_route("/{path:path}", forwarder.forward, methods=_METHODS)
    return app


async def _readyz(request: Request) -> JSONResponse:
    """200 when a leader is known and the database answers; 503 naming what is not."""
    follower = follower_of(request)
    body = await follower_readiness(follower.view(), follower.call, follower.reader)
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


async def follower_readiness(
    view: ClusterView, call: Callable[..., Awaitable[Any]], reader: PgJobReader
) -> Mapping[str, Any]:
    """Each check's outcome in ``health.readiness``'s shape: ``leader`` (a live lease is
    held by another gateway: while this one starts its lane to lead, it is not ready) and
    ``store`` (the database answers ``SELECT 1`` within
    ``health.READY_TIMEOUT_S``); ``call`` runs the blocking ping off the event loop."""
    if view.role is Role.LEADER:  # the lease is this gateway's, its lane not serving yet
        leader = False, "this gateway has just taken the lease and is starting its lane"
    elif view.leader_known:
        leader = True, f"{view.leader_node} at {view.leader_url}"
    else:
        leader = False, "no gateway holds a live lease: a failover is under way"
    try:
        await asyncio.wait_for(call(reader.ping), health.READY_TIMEOUT_S)
        store = True, "answers"
    except (StoreError, TimeoutError) as exc:
        store = False, f"no answer within {health.READY_TIMEOUT_S:g} s ({type(exc).__name__})"
    checks = {"leader": leader, "store": store}
    failed = [name for name, (ok, _) in checks.items() if not ok]
    return {
        "ready": not failed,
        "not_ready": failed,
        "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
    }


async def _status(request: Request, viewer: ViewerDep) -> Response:
    """The leader's ``/status`` (asked with the caller's headers) with ``cluster`` this
    follower's view and ``leader_reachable``; only those two when the leader cannot be
    asked. The leader's refusal (a bad key) is relayed as it is."""
    follower = follower_of(request)
    view = follower.view()
    cluster = dict(view.to_dict())
    if viewer is None:  # as the leader's /status hides the leader's URL (watch.view_for)
        cluster["leader_url"] = None
    if view.role is Role.FOLLOWER and view.leader_url is not None:
        headers = [
            *relayed_headers(request.headers.raw),
            (FORWARDED_BY.encode(), view.node.encode()),
        ]
        try:
            answer = await follower.client.get(
                view.leader_url.rstrip("/") + "/status", headers=headers, timeout=STATUS_TIMEOUT_S
            )
        except httpx.TransportError:
            pass
        else:
            if answer.status_code != 200:
                return relayed_answer(answer)
            return JSONResponse({**answer.json(), "cluster": cluster, "leader_reachable": True})
    return JSONResponse({"cluster": cluster, "leader_reachable": False})


async def _metrics(request: Request, caller: CallerDep) -> Response:
    """Prometheus metrics of this follower (a key, as on the leader)."""
    return Response(follower_of(request).metrics.render(), media_type=METRICS_TYPE)
