"""The model catalog on every kind of model server: Ollama's ``/api/tags``, ``/api/show``,
``/api/ps`` and ``/api/version``, OpenAI's ``/v1/models`` and ``/v1/models/{id}``.

An Ollama server (``backend.kind`` ``ollama`` or ``simulated``) answers Ollama's routes
itself; ``/v1/models`` is made from its ``/api/tags`` and ``/v1/models/{id}`` from its
``/api/show``, as Ollama's own OpenAI routes do. An OpenAI-compatible server (vLLM,
llama.cpp, LM Studio: ``kind = "openai"``) has only ``/v1/models``, so Ollama's routes are
translated from it: the models it serves, which stay loaded while it runs (so ``/api/ps``
lists them all); ``/api/show`` can say only that a model is served (it reports no
template, parameters, details or model info); ``/api/version`` is gpulane's own.

With several backends (``[[backends]]``), each model server is asked in its own API and
the answers are joined: ``/api/tags``, ``/v1/models`` and ``/api/ps`` are the union over
the servers that answer (one entry per model name), ``/api/show`` and
``/v1/models/{id}`` the first server in config order that has the model, and
``/api/version`` the first Ollama server that answers. With one backend every route
answers exactly as that server's own would (through the translation above).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import httpx
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from actors.backends.http import int_field
from actors.gateway.core import CallerDep, Gateway, Upstream, gateway_of
from actors.gateway.errors import GatewayError
from actors.gateway.ollama_api import GATEWAY_VERSION, rfc3339
from protocol import normalise_model_name

__all__ = ["router", "upstream_json"]

log = structlog.get_logger("actors.gateway")

T = TypeVar("T")

FOREVER_NS = 2**63 - 1  # Go's time.Duration(math.MaxInt64): Ollama's expiry for "never"

router = APIRouter(tags=["models"])


class ShowRequest(BaseModel):
    """``POST /api/show``: ``model`` (or its older name, ``name``); the other fields reach
    the model server as sent."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    verbose: bool | None = None


async def _call(
    gateway: Gateway, upstream: Upstream, method: str, path: str, body: Any = None
) -> httpx.Response:
    try:
        return await gateway.http(upstream).request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise GatewayError(
            502, f"{gateway.server_of(upstream)} did not answer {path}: {exc}", reason="upstream"
        ) from None


def _json_object(
    gateway: Gateway, upstream: Upstream, response: httpx.Response, path: str
) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise GatewayError(
            502, f"{gateway.server_of(upstream)} sent no JSON object for {path}", reason="upstream"
        )
    return data


async def upstream_json(gateway: Gateway, upstream: Upstream, path: str) -> dict[str, Any]:
    """GET a catalog route from ``upstream``'s model server (a 502 when it does not answer
    with a JSON object)."""
    response = await _call(gateway, upstream, "GET", path)
    if response.is_error:
        raise GatewayError(
            502, f"{gateway.server_of(upstream)} answered {path} with {response.status_code}",
            reason="upstream",
        )  # fmt: skip
    return _json_object(gateway, upstream, response, path)


async def _from_each(gateway: Gateway, ask: Callable[[Upstream], Awaitable[T]]) -> list[T]:
    """The answers of every model server, asked at once, in config order. A server that
    does not answer is left out (and logged); when none answers, the first one's error is
    the route's, as it is with one server."""
    outcomes = await asyncio.gather(
        *(ask(upstream) for upstream in gateway.upstreams), return_exceptions=True
    )
    answers: list[T] = []
    errors: list[tuple[Upstream, GatewayError]] = []
    for upstream, outcome in zip(gateway.upstreams, outcomes, strict=True):
        if isinstance(outcome, GatewayError):
            errors.append((upstream, outcome))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            answers.append(outcome)
    if errors and not answers:
        raise errors[0][1]
    for upstream, error in errors:
        log.warning("catalog_backend_skipped", backend=upstream.name, error=error.message)
    return answers


async def _first_having(
    gateway: Gateway, ask: Callable[[Upstream], Awaitable[T]], status: Callable[[T], int]
) -> T:
    """The answer of the first model server, in config order, that has the model.

    An answer whose ``status`` (or error) is a 404, or a server that fails (a 5xx, or no
    answer), moves on to the next. When none has the model, the first 404 is the route's
    answer, else the first failure: with one server, its own answer.
    """
    missing: list[T | GatewayError] = []
    failed: list[T | GatewayError] = []
    for upstream in gateway.upstreams:
        answer: T | GatewayError
        try:
            answer = await ask(upstream)
            code = status(answer)
        except GatewayError as error:
            answer, code = error, error.status
        if code == 404:
            missing.append(answer)
        elif code >= 500:
            failed.append(answer)
        else:
            return _settled(answer)
    return _settled((missing or failed)[0])


def _settled(answer: T | GatewayError) -> T:
    if isinstance(answer, GatewayError):
        raise answer
    return answer


def _union(entries: Iterable[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """One entry per model name (``normalise_model_name`` of ``entries[key]``), the first
    one's winning; entries without a name are left out."""
    merged: dict[str, dict[str, Any]] = {}
    for entry in entries:
        name = entry.get(key)
        if isinstance(name, str) and name:
            merged.setdefault(normalise_model_name(name), entry)
    return list(merged.values())


def _listed(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries of an Ollama list answer (``/api/tags``, ``/api/ps``)."""
    entries = data.get("models")
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


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


async def _served(gateway: Gateway, upstream: Upstream) -> list[dict[str, Any]]:
    """The entries of an OpenAI-compatible server's ``/v1/models``."""
    entries = (await upstream_json(gateway, upstream, "/v1/models")).get("data")
    if not isinstance(entries, list):
        raise GatewayError(
            502, f"{gateway.server_of(upstream)} sent a malformed /v1/models", reason="upstream"
        )
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"]]


async def _served_one(gateway: Gateway, upstream: Upstream, name: str) -> dict[str, Any]:
    for entry in await _served(gateway, upstream):
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


# --- each model server, in its own API ------------------------------------------------------


async def _tags_of(gateway: Gateway, upstream: Upstream) -> dict[str, Any]:
    if upstream.speaks_openai:
        return {"models": [_as_tag(entry) for entry in await _served(gateway, upstream)]}
    return await upstream_json(gateway, upstream, "/api/tags")


async def _ps_of(gateway: Gateway, upstream: Upstream) -> dict[str, Any]:
    if upstream.speaks_openai:
        return {"models": [_as_loaded(entry) for entry in await _served(gateway, upstream)]}
    return await upstream_json(gateway, upstream, "/api/ps")


async def _show_of(gateway: Gateway, upstream: Upstream, body: ShowRequest, name: str) -> Response:
    if upstream.speaks_openai:
        return JSONResponse(_as_show(await _served_one(gateway, upstream, name)))
    response = await _call(
        gateway, upstream, "POST", "/api/show", body.model_dump(exclude_none=True)
    )
    data = _json_object(gateway, upstream, response, "/api/show")
    return JSONResponse(data, status_code=response.status_code)


async def _models_of(gateway: Gateway, upstream: Upstream) -> list[dict[str, Any]]:
    """``/v1/models``'s entries for one server."""
    if upstream.speaks_openai:
        return [
            _openai_model(e["id"], int_field(e.get("created")), str(e.get("owned_by") or "gpulane"))
            for e in await _served(gateway, upstream)
        ]
    entries = (await upstream_json(gateway, upstream, "/api/tags")).get("models", [])
    if not isinstance(entries, list):
        raise GatewayError(
            502, f"{gateway.server_of(upstream)} sent a malformed catalog", reason="upstream"
        )
    listed = []
    for entry in entries:
        name = (entry.get("model") or entry.get("name")) if isinstance(entry, dict) else None
        if isinstance(name, str) and name:
            listed.append(_openai_model(name, _unix(entry.get("modified_at")), _owner(name)))
    return listed


async def _model_of(gateway: Gateway, upstream: Upstream, model_id: str) -> dict[str, Any]:
    """``/v1/models/{id}`` on one server (a 404 for a model it does not have)."""
    if upstream.speaks_openai:
        entry = await _served_one(gateway, upstream, model_id)
        created = int_field(entry.get("created"))
        return _openai_model(model_id, created, str(entry.get("owned_by") or "gpulane"))
    response = await _call(gateway, upstream, "POST", "/api/show", {"model": model_id})
    if response.status_code == 404:
        raise _not_found(model_id)
    data = _json_object(gateway, upstream, response, "/api/show")
    if response.is_error:
        status = response.status_code if response.is_client_error else 502
        problem = f"{gateway.server_of(upstream)} answered /api/show with {response.status_code}"
        if isinstance(data.get("error"), str):
            problem += f": {data['error']}"
        raise GatewayError(status, problem, field="model", reason="upstream")
    return _openai_model(model_id, _unix(data.get("modified_at")), _owner(model_id))


# --- the routes: every backend's model server -----------------------------------------------


@router.get("/api/tags", summary="Models the model servers have (Ollama)")
@router.head("/api/tags", summary="Models the model servers have (Ollama)")
async def tags(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The model servers' catalogs, one entry per model (the first server's winning)."""
    gateway = gateway_of(request)
    answers = await _from_each(gateway, functools.partial(_tags_of, gateway))
    if len(answers) == 1:
        return answers[0]
    return {"models": _union((e for data in answers for e in _listed(data)), "name")}


@router.post("/api/show", summary="One model's details (Ollama)")
async def show(body: ShowRequest, request: Request, caller: CallerDep) -> Response:
    """The answer of the first model server that has the model, as it gave it (the
    server's 404 for a model none has)."""
    name = body.model or body.name
    if not name:
        raise GatewayError(400, "is required", field="model", allowed="model, or its older name")
    gateway = gateway_of(request)
    if not gateway.upstreams:
        raise _not_found(name)

    async def ask(upstream: Upstream) -> Response:
        return await _show_of(gateway, upstream, body, name)

    return await _first_having(gateway, ask, lambda response: response.status_code)


@router.get("/api/ps", summary="Models loaded now (Ollama)")
async def ps(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The models loaded on the model servers (one entry per model: the one that stays
    loaded longest, listed first as Ollama lists them), or the GPU slots' models if no
    server is known."""
    gateway = gateway_of(request)
    if not gateway.upstreams:
        status = await gateway.call(gateway.lane.status)
        return {"models": [{"name": m, "model": m} for m in status["resident_models"]]}
    answers = await _from_each(gateway, functools.partial(_ps_of, gateway))
    if len(answers) == 1:
        return answers[0]
    loaded = [e for data in answers for e in _listed(data)]
    # Ollama's PsHandler: the longest time left first (a stable sort, so ties keep order)
    loaded.sort(key=lambda entry: _unix(entry.get("expires_at")), reverse=True)
    return {"models": _union(loaded, "name")}


@router.get("/api/version", summary="Version (Ollama)")
@router.head("/api/version", summary="Version (Ollama)")
async def version(request: Request) -> dict[str, Any]:
    """The version of the first Ollama server that answers (clients gate features on it),
    else gpulane's; when no Ollama server answers, the first one's error."""
    gateway = gateway_of(request)
    errors: list[GatewayError] = []
    answered = False
    for upstream in gateway.upstreams:
        if upstream.speaks_openai:
            continue
        try:
            data = await upstream_json(gateway, upstream, "/api/version")
        except GatewayError as error:
            errors.append(error)
            continue
        if isinstance(data.get("version"), str):
            return {"version": data["version"], "gpulane": GATEWAY_VERSION}
        answered = True
    if errors and not answered:
        raise errors[0]
    return {"version": GATEWAY_VERSION, "gpulane": GATEWAY_VERSION}


@router.get("/v1/models", summary="Models (OpenAI-compatible)")
async def models(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The model servers' catalogs in OpenAI's list shape, one entry per model."""
    gateway = gateway_of(request)
    answers = await _from_each(gateway, functools.partial(_models_of, gateway))
    if len(answers) == 1:
        return {"object": "list", "data": answers[0]}
    return {"object": "list", "data": _union((e for listed in answers for e in listed), "id")}


@router.get("/v1/models/{model_id:path}", summary="One model (OpenAI-compatible)")
async def model(model_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    """A model the first server that has it has, as OpenAI describes one; 404 in OpenAI's
    shape when none has it."""
    gateway = gateway_of(request)
    if not gateway.upstreams:
        raise _not_found(model_id)

    async def ask(upstream: Upstream) -> dict[str, Any]:
        return await _model_of(gateway, upstream, model_id)

    return await _first_having(gateway, ask, lambda _: 200)
