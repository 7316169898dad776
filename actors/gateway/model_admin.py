"""Ollama's model-management routes, passed to the model server for admin keys.

``pull``, ``push``, ``create``, ``copy``, ``delete`` and ``blobs`` change what the model
server holds for everyone who uses it, so only admin keys may call them; any other key
gets a 403 naming the route (before its body is read). The request body goes to the
server as it arrives and the server's answer comes back as it writes it, status and all:
the NDJSON progress of a pull, push or create reaches the client line by line, and a
blob upload passes through without being held (so ``gateway.max_body_bytes`` does not
bound it). An OpenAI-compatible server (``backend.kind = "openai"``) has no such routes:
there they are a 501 naming ``backend.kind``.

With several backends a request names the one whose server it changes in the header
``X-Gpulane-Backend`` (a 400 naming the header and the backends without it, or with a
name that is not one); with one backend the header may be left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from actors.gateway.auth import Caller
from actors.gateway.core import CallerDep, Gateway, Upstream, gateway_of
from actors.gateway.errors import GatewayError
from actors.hosts import tracker_id_for
from actors.runtime import ChildUnavailableError
from protocol.messages import RefreshCatalog

__all__ = ["BACKEND_HEADER", "BLOBS", "router"]

BACKEND_HEADER = "X-Gpulane-Backend"  # the backend whose model server a request changes

BLOBS = "/api/blobs/"  # uploads of model files: streamed, not bound by max_body_bytes
# a pull or create can be silent for minutes (a digest check, a quantization): no read bound
RELAY_TIMEOUT = httpx.Timeout(10.0, read=None)
# Routes that change which models a server has: its tracker reads its catalog again after
# one succeeds, so placement knows at once (docs/scheduling.md, "Placement across backends").
CATALOG_CHANGES = frozenset({"/api/pull", "/api/create", "/api/copy", "/api/delete"})

router = APIRouter(tags=["ollama model management"])


async def _relay(request: Request, caller: Caller) -> Response:
    """The model server's answer to this request, streamed through both ways."""
    path = request.url.path
    route = f"{request.method} {path}"
    if not caller.admin:
        raise GatewayError(
            403, f"{route} changes the model server's models and needs an admin key",
            field="authorization", reason="forbidden",
        )  # fmt: skip
    gateway = gateway_of(request)
    target = _target(gateway, request.headers.get(BACKEND_HEADER), route)
    if target is None or target.speaks_openai:
        server = "no model server URL" if target is None else "an OpenAI-compatible one"
        field = "backend.kind"
        if target is not None and len(gateway.upstreams) > 1:
            field = f"backends.{target.name}.kind"
        raise GatewayError(
            501, f"{route}: the gateway drives {server}, which has no model management",
            field=field, allowed="an Ollama model server", reason="not_implemented",
        )  # fmt: skip
    http = gateway.http(target)
    headers = {}
    if "content-type" in request.headers:
        headers["content-type"] = request.headers["content-type"]
    content = None if request.method == "HEAD" else request.stream()
    upstream = http.build_request(
        request.method, path, params=request.url.query, content=content, headers=headers,
        timeout=RELAY_TIMEOUT,
    )  # fmt: skip
    try:
        response = await http.send(upstream, stream=True)
    except httpx.HTTPError as exc:
        raise GatewayError(
            502, f"{gateway.server_of(target)} did not answer {route}: {exc}", reason="upstream"
        ) from None

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_bytes():
                yield chunk
        finally:
            await response.aclose()
        if path in CATALOG_CHANGES and response.is_success:
            with contextlib.suppress(ChildUnavailableError, KeyError):  # it reads on start
                gateway.lane.ref_for(tracker_id_for(target.name)).tell(RefreshCatalog())

    kind = response.headers.get("content-type")
    return StreamingResponse(
        body(), status_code=response.status_code, headers={"content-type": kind} if kind else None
    )


def _target(gateway: Gateway, named: str | None, route: str) -> Upstream | None:
    """The model server a management request changes: the one backend's, or the one
    ``X-Gpulane-Backend`` names (required with several); None when none is known."""
    upstreams = gateway.upstreams
    if not upstreams:
        return None
    if named is None and len(upstreams) == 1:
        return upstreams[0]
    for upstream in upstreams:
        if upstream.name == named:
            return upstream
    problem = (
        f"{route} changes one backend's models: name it in this header"
        if named is None
        else f"names no backend of this gateway: {named!r}"
    )
    raise GatewayError(400, problem, field=BACKEND_HEADER, allowed=[u.name for u in upstreams])


@router.post("/api/pull", summary="Pull a model (admin): the server's progress stream")
async def pull(request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/pull``."""
    return await _relay(request, caller)


@router.post("/api/push", summary="Push a model (admin): the server's progress stream")
async def push(request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/push``."""
    return await _relay(request, caller)


@router.post("/api/create", summary="Create a model (admin): the server's progress stream")
async def create(request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/create``."""
    return await _relay(request, caller)


@router.post("/api/copy", summary="Copy a model (admin)")
async def copy(request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/copy``."""
    return await _relay(request, caller)


@router.delete("/api/delete", summary="Delete a model (admin)")
async def delete(request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/delete``."""
    return await _relay(request, caller)


@router.head(BLOBS + "{digest}", summary="Whether the model server has a blob (admin)")
@router.post(BLOBS + "{digest}", summary="Upload a blob to the model server (admin)")
async def blob(digest: str, request: Request, caller: CallerDep) -> Response:
    """Ollama's ``/api/blobs/{digest}``: HEAD asks whether the server has it, POST uploads it."""
    return await _relay(request, caller)
