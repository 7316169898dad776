"""The model catalog on every kind of model server: Ollama's ``/api/tags``, ``/api/show``,
``/api/ps`` and ``/api/version``, OpenAI's ``/v1/models`` and ``/v1/models/{id}``.

An Ollama server (``backend.kind`` ``ollama`` or ``simulated``) answers Ollama's routes
itself; ``/v1/models`` is made from its ``/api/tags`` and ``/v1/models/{id}`` from its
``/api/show``, as Ollama's own OpenAI routes do. An OpenAI-compatible server (vLLM,
llama.cpp, LM Studio: ``kind = "openai"``) has only ``/v1/models``, so Ollama's routes are
translated from it: the models it serves, which stay loaded while it runs (so ``/api/ps``
lists them all); ``/api/show`` can say only that a model is served (it reports no
template, parameters, details or model info); ``/api/version`` is gpulane's own.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from actors.backends.http import int_field
from actors.gateway.core import CallerDep, Gateway, gateway_of
from actors.gateway.errors import GatewayError
from actors.gateway.ollama_api import GATEWAY_VERSION, rfc3339

__all__ = ["router", "speaks_openai", "upstream_json"]

FOREVER_NS = 2**63 - 1  # Go's time.Duration(math.MaxInt64): Ollama's expiry for "never"

router = APIRouter(tags=["models"])


class ShowRequest(BaseModel):
    """``POST /api/show``: ``model`` (or its older name, ``name``); the other fields reach
    the model server as sent."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    verbose: bool | None = None


def speaks_openai(gateway: Gateway) -> bool:
    """True when the model server is OpenAI-compatible (``backend.kind = "openai"``)."""
    return gateway.upstream_kind == "openai"


async def _call(gateway: Gateway, method: str, path: str, body: Any = None) -> httpx.Response:
    assert gateway.http is not None
    try:
        return await gateway.http.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise GatewayError(
            502, f"the model server did not answer {path}: {exc}", reason="upstream"
        ) from None


def _json_object(response: httpx.Response, path: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise GatewayError(
            502, f"the model server sent no JSON object for {path}", reason="upstream"
        )
    return data


async def upstream_json(gateway: Gateway, path: str) -> dict[str, Any] | None:
    """GET a catalog route from the model server; None when no model server URL is known."""
    if gateway.http is None:
        return None
    response = await _call(gateway, "GET", path)
    if response.is_error:
        raise GatewayError(
            502, f"the model server answered {path} with {response.status_code}",
            reason="upstream",
        )  # fmt: skip
    return _json_object(response, path)


def _not_found(name: str) -> GatewayError:
    return GatewayError(404, f"model {name!r} not found", field="model", reason="not_found")


def _owner(name: str) -> str:
    """The owner Ollama's OpenAI routes give a model: its name's namespace (``library``
    for the official models, ``user`` in ``user/model`` or ``hf.co/user/model``)."""
    parts = name.split("/")
    return parts[-2] if len(parts) >= 2 else "library"


def _unix(stamp: object) -> int:
    """An RFC 3339 time as Unix seconds; 0 when it is not one."""
    if not isinstance(stamp, str):
        return 0
    try:
        return max(0, int(datetime.fromisoformat(stamp).timestamp()))
    except ValueError:
        return 0


# --- an OpenAI-compatible server, in Ollama's terms ------------------------------------------


async def _served(gateway: Gateway) -> list[dict[str, Any]]:
    """The entries of the server's ``/v1/models`` (none when no model server URL is known)."""
    data = await upstream_json(gateway, "/v1/models")
    entries = [] if data is None else data.get("data")
    if not isinstance(entries, list):
        raise GatewayError(502, "the model server sent a malformed /v1/models", reason="upstream")
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"]]


async def _served_one(gateway: Gateway, name: str) -> dict[str, Any]:
    for entry in await _served(gateway):
        if entry["id"] == name:
            return entry
    raise _not_found(name)


def _as_tag(entry: dict[str, Any]) -> dict[str, Any]:
    """A served model as an ``/api/tags`` entry. The size is llama.cpp's ``meta.size`` (0
    when the server says nothing); the digest, which such a server does not report, is the
    SHA-256 of the model's id (Ollama's CLI shows its first 12 characters as the ID)."""
    name = entry["id"]
    meta = entry.get("meta")
    tag: dict[str, Any] = {
        "name": name,
        "model": name,
        "size": int_field(meta.get("size")) if isinstance(meta, dict) else 0,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {},
    }
    created = int_field(entry.get("created"))
    if created:
        tag["modified_at"] = rfc3339(created * 10**9)
    return tag


def _as_loaded(entry: dict[str, Any]) -> dict[str, Any]:
    """A served model as an ``/api/ps`` entry: loaded for as long as the server runs."""
    tag = _as_tag(entry)
    tag.pop("modified_at", None)
    return tag | {
        "expires_at": rfc3339(time.time_ns() + FOREVER_NS),
        "size_vram": tag["size"],
    }


def _as_show(entry: dict[str, Any]) -> dict[str, Any]:
    """``/api/show`` of a served model: only what the server reports."""
    show: dict[str, Any] = {
        "license": "",
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": {},
        "model_info": {},
        "capabilities": ["completion"],
    }
    created = int_field(entry.get("created"))
    if created:
        show["modified_at"] = rfc3339(created * 10**9)
    return show


def _openai_model(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


# --- the routes ------------------------------------------------------------------------------


@router.get("/api/tags", summary="Models the model server has (Ollama)")
@router.head("/api/tags", summary="Models the model server has (Ollama)")
async def tags(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The model server's catalog."""
    gateway = gateway_of(request)
    if speaks_openai(gateway):
        return {"models": [_as_tag(entry) for entry in await _served(gateway)]}
    data = await upstream_json(gateway, "/api/tags")
    return data if data is not None else {"models": []}


@router.post("/api/show", summary="One model's details (Ollama)")
async def show(body: ShowRequest, request: Request, caller: CallerDep) -> Response:
    """The model server's answer, as it gave it (404 for a model it does not have)."""
    name = body.model or body.name
    if not name:
        raise GatewayError(400, "is required", field="model", allowed="model, or its older name")
    gateway = gateway_of(request)
    if gateway.http is None:
        raise _not_found(name)
    if speaks_openai(gateway):
        return JSONResponse(_as_show(await _served_one(gateway, name)))
    response = await _call(gateway, "POST", "/api/show", body.model_dump(exclude_none=True))
    return JSONResponse(_json_object(response, "/api/show"), status_code=response.status_code)


@router.get("/api/ps", summary="Models loaded now (Ollama)")
async def ps(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The model server's resident models, or the GPU slots' models if it is unknown."""
    gateway = gateway_of(request)
    if speaks_openai(gateway):
        return {"models": [_as_loaded(entry) for entry in await _served(gateway)]}
    data = await upstream_json(gateway, "/api/ps")
    if data is not None:
        return data
    status = await gateway.call(gateway.lane.status)
    return {"models": [{"name": m, "model": m} for m in status["resident_models"]]}


@router.get("/api/version", summary="Version (Ollama)")
@router.head("/api/version", summary="Version (Ollama)")
async def version(request: Request) -> dict[str, Any]:
    """The model server's version when known (clients gate features on it), else gpulane's."""
    gateway = gateway_of(request)
    data = None if speaks_openai(gateway) else await upstream_json(gateway, "/api/version")
    if data is not None and isinstance(data.get("version"), str):
        return {"version": data["version"], "gpulane": GATEWAY_VERSION}
    return {"version": GATEWAY_VERSION, "gpulane": GATEWAY_VERSION}


@router.get("/v1/models", summary="Models (OpenAI-compatible)")
async def models(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The model server's catalog in OpenAI's list shape."""
    gateway = gateway_of(request)
    if speaks_openai(gateway):
        data = [
            _openai_model(e["id"], int_field(e.get("created")), str(e.get("owned_by") or "gpulane"))
            for e in await _served(gateway)
        ]
        return {"object": "list", "data": data}
    catalog = await upstream_json(gateway, "/api/tags")
    entries = [] if catalog is None else catalog.get("models", [])
    if not isinstance(entries, list):
        raise GatewayError(502, "the model server sent a malformed catalog", reason="upstream")
    listed = []
    for entry in entries:
        name = (entry.get("model") or entry.get("name")) if isinstance(entry, dict) else None
        if isinstance(name, str) and name:
            listed.append(_openai_model(name, _unix(entry.get("modified_at")), _owner(name)))
    return {"object": "list", "data": listed}


@router.get("/v1/models/{model_id:path}", summary="One model (OpenAI-compatible)")
async def model(model_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    """A model the server has, as OpenAI describes one; 404 in OpenAI's shape otherwise."""
    gateway = gateway_of(request)
    if gateway.http is None:
        raise _not_found(model_id)
    if speaks_openai(gateway):
        entry = await _served_one(gateway, model_id)
        created = int_field(entry.get("created"))
        return _openai_model(model_id, created, str(entry.get("owned_by") or "gpulane"))
    response = await _call(gateway, "POST", "/api/show", {"model": model_id})
    if response.status_code == 404:
        raise _not_found(model_id)
    data = _json_object(response, "/api/show")
    if response.is_error:
        status = response.status_code if response.is_client_error else 502
        problem = f"the model server answered /api/show with {response.status_code}"
        if isinstance(data.get("error"), str):
            problem += f": {data['error']}"
        raise GatewayError(status, problem, field="model", reason="upstream")
    return _openai_model(model_id, _unix(data.get("modified_at")), _owner(model_id))
