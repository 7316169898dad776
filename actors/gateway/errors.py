"""How the gateway says no: one error shape per API family, every 4xx naming its field.

Unknown routes and methods a route does not take are answered in that shape too (404
naming the route, 405 naming the method and listing the allowed ones), never FastAPI's
``{"detail": ...}``.

Ollama clients read ``{"error": "..."}``; OpenAI clients read ``{"error": {"message": ...}}``.
Both shapes carry ``field``, ``problem`` and ``allowed`` so a caller can fix the request
without guessing. Rejections for load (queue full, rate limited) carry ``Retry-After``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route, Router

from actors.config import ReloadRefusedError
from protocol import (
    JobNotFoundError,
    QueueFullError,
    RateLimitedError,
    SystemStoppedError,
    ValidationError,
)

__all__ = ["GatewayError", "install_error_handlers"]


class GatewayError(Exception):
    """An HTTP error with a status, the field at fault, the problem and what is allowed."""

    def __init__(
        self,
        status: int,
        problem: str,
        *,
        field: str | None = None,
        allowed: Sequence[str] | str | None = None,
        reason: str = "invalid",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.problem = problem
        self.field = field
        self.allowed: list[str] | str | None = (
            list(allowed) if allowed is not None and not isinstance(allowed, str) else allowed
        )
        self.reason = reason
        self.headers = dict(headers or {})
        super().__init__(f"{field}: {problem}" if field else problem)

    @property
    def message(self) -> str:
        """One line a person can read: field, problem and what is allowed."""
        text = str(self)
        if isinstance(self.allowed, list):
            text += f" (allowed: {', '.join(self.allowed)})"
        elif self.allowed:
            text += f" (allowed: {self.allowed})"
        return text


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def as_gateway_error(exc: Exception) -> GatewayError:
    """Map a gpulane or request-validation error onto its HTTP form."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ReloadRefusedError):
        return GatewayError(
            409, exc.problem, field=exc.field, allowed=exc.allowed, reason="conflict"
        )
    if isinstance(exc, ValidationError):
        allowed = list(exc.allowed) if isinstance(exc.allowed, tuple) else exc.allowed
        return GatewayError(400, exc.problem, field=exc.field, allowed=allowed)
    if isinstance(exc, RateLimitedError):
        return GatewayError(
            429,
            str(exc),
            field=exc.limit,
            reason="rate_limited",
            headers=_retry_after(exc.retry_after),
        )
    if isinstance(exc, QueueFullError):
        return GatewayError(
            503,
            str(exc),
            field=exc.limit,
            reason="queue_full",
            headers=_retry_after(exc.retry_after),
        )
    if isinstance(exc, JobNotFoundError):
        return GatewayError(404, str(exc), field="job", reason="not_found")
    if isinstance(exc, SystemStoppedError):
        return GatewayError(503, str(exc), reason="stopped", headers=_retry_after(5))
    if isinstance(exc, RequestValidationError):
        return _from_pydantic(exc)
    raise TypeError(f"no HTTP form for {type(exc).__name__}")


def _from_pydantic(exc: RequestValidationError) -> GatewayError:
    """The first pydantic error, with its location as a field path (``messages[0].role``,
    as gpulane's own validation names fields)."""
    errors = exc.errors()
    if not errors:
        return GatewayError(400, "the request is not valid")
    first = errors[0]
    field = _path_text(_error_location(errors)) or "body"
    problem = str(first.get("msg", "is not valid"))
    context = first.get("ctx") or {}
    expected = context.get("expected")
    if first.get("type") == "json_invalid":
        field, problem = "body", f"is not valid JSON: {context.get('error', problem)}"
    return GatewayError(400, problem, field=field, allowed=str(expected) if expected else None)


def _path_text(parts: Sequence[str]) -> str:
    """``["messages", 0, "role"]`` as ``messages[0].role``."""
    path = ""
    for part in parts:
        path += f"[{part}]" if part.isdigit() else f".{part}" if path else part
    return path


def _location(error: Mapping[str, Any]) -> list[str]:
    return [str(part) for part in error.get("loc", ()) if part != "body"]


def _error_location(errors: Sequence[Mapping[str, Any]]) -> list[str]:
    """The first error's field: the common location of the errors about the same field
    (a value that fits no member of a union gets one error per member, each located at
    the member's type tag), without trailing type tags such as ``literal['json']``."""
    first = _location(errors[0])
    related = [loc for loc in map(_location, errors) if loc[:1] == first[:1]]
    path = first
    for loc in related[1:]:
        common = 0
        while common < min(len(path), len(loc)) and path[common] == loc[common]:
            common += 1
        path = path[:common]
    while path and not (path[-1].isidentifier() or path[-1].isdigit()):
        path = path[:-1]
    return path


def _from_routing(request: Request, exc: HTTPException, routers: Sequence[Router]) -> GatewayError:
    """The router's own refusals (no such route, a method the route does not take) in the
    API's error shape instead of FastAPI's ``{"detail": ...}``."""
    route = f"{request.method} {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        return GatewayError(404, f"no route {route}", field="route", reason="not_found")
    if exc.status_code == 405:
        allowed = _methods_of(request, routers)
        headers["Allow"] = ", ".join(allowed)
        return GatewayError(
            405, f"{request.url.path} does not take {request.method}", field="method",
            allowed=allowed or None, reason="method_not_allowed", headers=headers,
        )  # fmt: skip
    return GatewayError(exc.status_code, f"{route}: {exc.detail}", headers=headers)


def _methods_of(request: Request, routers: Sequence[Router]) -> list[str]:
    """Every method a route of ``routers`` takes on this request's path (Starlette's 405
    names only the first route's, and a GET and a HEAD route are two routes)."""
    methods: set[str] = set()
    for router in routers:
        for route in router.routes:
            if isinstance(route, Route) and route.methods:
                match, _ = route.matches(request.scope)
                if match is not Match.NONE:
                    methods |= route.methods
    return sorted(methods)


def render(request: Request, error: GatewayError) -> JSONResponse:
    """The error body in the shape the route's API family expects."""
    if request.url.path.startswith("/v1/"):
        body: dict[str, Any] = {
            "error": {
                "message": error.message,
                "type": "invalid_request_error" if error.status < 500 else "server_error",
                "param": error.field,
                "code": error.reason,
                "allowed": error.allowed,
            }
        }
    else:
        body = {
            "error": error.message,
            "field": error.field,
            "problem": error.problem,
            "allowed": error.allowed,
        }
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def install_error_handlers(
    app: FastAPI, on_reject: Callable[[GatewayError], None], routers: Sequence[Router]
) -> None:
    """Register the handlers; ``on_reject`` sees every rejection (for the metrics);
    ``routers`` hold the routes a 405 lists the methods of."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        error = as_gateway_error(exc)
        on_reject(error)
        return render(request, error)

    async def handle_routing(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        error = _from_routing(request, exc, routers)
        on_reject(error)
        return render(request, error)

    app.add_exception_handler(HTTPException, handle_routing)

    for kind in (
        GatewayError,
        ValidationError,
        RateLimitedError,
        QueueFullError,
        JobNotFoundError,
        SystemStoppedError,
        RequestValidationError,
    ):
        app.add_exception_handler(kind, handle)
