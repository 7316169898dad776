"""The gateway's ASGI app: ``create_app(lane, settings)`` wires the routes onto a running GpuLane.

The app does not own the GpuLane: whoever starts it (``gpulane serve``, a test, a host
process) stops it. The app's lifespan owns only the gateway's thread pool, its clients
for the model servers' catalogs and the watchers of detached jobs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.config import GatewaySettings
from actors.gateway import (
    catalog,
    health,
    jobs_api,
    model_admin,
    ollama_api,
    openai_api,
    status_page,
)
from actors.gateway.core import CallerDep, Gateway, Upstream, gateway_of
from actors.gateway.errors import GatewayError, install_error_handlers, render
from actors.system import GpuLane

__all__ = ["create_app", "lane_upstreams"]

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RequestGuard:
    """Every body is JSON, and none is larger than ``gateway.max_body_bytes``.

    Ollama reads a JSON body whatever its Content-Type (its own examples use ``curl -d``,
    which sends a form type), so a POST without a JSON type is read as JSON too. A body
    over the limit, declared or streamed, is a 413 naming the limit. Blob uploads (model
    files, admin keys only) are the exception: they pass to the model server as sent.
    """

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(model_admin.BLOBS):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["method"] == "POST" and not headers.get(b"content-type", b"").startswith(
            b"application/json"
        ):
            headers[b"content-type"] = b"application/json"
            scope = dict(scope, headers=list(headers.items()))
        limit = self.gateway.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, receive, send, int(declared), limit)
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(_too_large(seen, limit))
            return message

        await self.app(scope, counting, send)

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, size: int, limit: int
    ) -> None:
        error = _too_large(size, limit)
        self.gateway.metrics.rejected(error.reason)
        await render(Request(scope, receive), error)(scope, receive, send)


class BodyTooLarge(HTTPException):
    """A streamed body went over the limit while a route read it.

    An HTTPException, because FastAPI turns any other error raised while it reads a
    body into a generic 400; this one it re-raises, and its handler renders the 413.
    """

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.status, error.message)
        self.error = error


def _too_large(size: int, limit: int) -> GatewayError:
    return GatewayError(
        413, f"the request body is {size} bytes or more; the limit is {limit}",
        field="body", allowed=f"gateway.max_body_bytes = {limit}", reason="too_large",
    )  # fmt: skip


def create_app(
    lane: GpuLane,
    settings: GatewaySettings | None = None,
    *,
    upstream: str | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    upstreams: Sequence[Upstream] | None = None,
    config_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> FastAPI:
    """An app serving ``lane``. The catalog and model-management routes reach the model
    servers ``upstreams`` names (one per backend, in config order), or the one server at
    ``upstream`` (a lane with one backend: spoken as its ``kind`` says), reached through
    ``upstream_transport`` when given (tests); with neither, no model server is known.
    ``config_path`` is the file ``/admin/reload`` re-reads, and ``overrides`` the
    ``[gateway]`` keys the command line set, which a reload keeps."""
    if upstreams is not None and (upstream is not None or upstream_transport is not None):
        raise ValueError("give either upstreams or upstream (and upstream_transport), not both")
    if upstreams is None:
        upstreams = () if upstream is None else (_one_upstream(lane, upstream, upstream_transport),)
    gateway = Gateway(
        lane,
        settings or lane.config.gateway,
        upstreams=upstreams,
        config_path=None if config_path is None else Path(config_path),
        overrides=overrides,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.open()
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(
        title="gpulane gateway",
        version=ollama_api.GATEWAY_VERSION,
        description="The Ollama API, an OpenAI-compatible API and a job surface over a GPU queue.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    routers = (
        ollama_api.router, openai_api.router, catalog.router, model_admin.router,
        jobs_api.router, status_page.router, health.router,
    )  # fmt: skip
    install_error_handlers(
        app, lambda error: gateway.metrics.rejected(error.reason), (*routers, app.router)
    )

    async def body_too_large(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BodyTooLarge)
        gateway.metrics.rejected(exc.error.reason)
        return render(request, exc.error)

    app.add_exception_handler(BodyTooLarge, body_too_large)
    app.add_middleware(RequestGuard, gateway=gateway)
    for router in routers:
        app.include_router(router)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics(request: Request, caller: CallerDep) -> Response:
        gateway = gateway_of(request)
        body = await gateway.call(gateway.metrics.render)
        return Response(body, media_type=METRICS_TYPE)

    return app


def lane_upstreams(lane: GpuLane) -> tuple[Upstream, ...]:
    """Each backend of ``lane`` in config order, at the URL its client talks to (as
    ``status()["backends"]`` shows it): the model servers of a lane that built its own
    clients (``GpuLane.start`` without ``backend=``), for :func:`create_app`."""
    urls = lane.status()["backends"]
    return tuple(
        Upstream(host.name, host.kind, urls[host.name]["url"]) for host in lane.config.hosts
    )


def _one_upstream(lane: GpuLane, url: str, transport: httpx.AsyncBaseTransport | None) -> Upstream:
    """The one model server of a lane with one backend, named and spoken as configured."""
    hosts = lane.config.hosts
    if len(hosts) != 1:
        raise ValueError(f"upstream= is one model server, but the lane has {len(hosts)} backends")
    return Upstream(hosts[0].name, hosts[0].kind, url, transport)
