"""The simulated Ollama's HTTP routes: each request on a connection dispatched by method and
path as Ollama's router does (server/routes.go GenerateRoutes), after any injected fault.

``GET``/``HEAD /`` and ``/api/version``, ``GET``/``HEAD /api/tags``, ``GET /api/ps``,
``POST /api/show``, the generation routes (``_generation``: chat, generate, embed) and the
model routes (``_models``: pull, push, create, copy, ``DELETE /api/delete``,
``HEAD``/``POST /api/blobs/:digest``). An unknown path is a 404 ``404 page not found`` and
a known path with another method a 405 ``405 method not allowed``, as gin answers them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from actors.backends.simulated._faults import Fault
from actors.backends.simulated._generation import GenerationRoutes
from actors.backends.simulated._models import ModelRoutes
from actors.backends.simulated._wire import VERSION, HTTPError

__all__ = ["OllamaHandler"]

_BLOBS = "/api/blobs/"
# Paths whose calls take faults while they stream; a fault on any other path acts first.
_STREAMING_FAULT_PATHS = ("/api/chat", "/api/generate")


class OllamaHandler(GenerationRoutes, ModelRoutes):
    """One connection: parses requests, answers like Ollama, streams chunked NDJSON."""

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _routes(self) -> Mapping[tuple[str, str], Callable[[dict[str, Any], Fault | None], None]]:
        """The routes by (method, path); blob routes are matched by their prefix."""
        return {
            ("GET", "/"): self._root,
            ("HEAD", "/"): self._root,
            ("GET", "/api/version"): self._version,
            ("HEAD", "/api/version"): self._version,
            ("GET", "/api/tags"): lambda body, fault: self.tags(body),
            ("HEAD", "/api/tags"): lambda body, fault: self.tags(body),
            ("GET", "/api/ps"): lambda body, fault: self.ps(body),
            ("POST", "/api/show"): lambda body, fault: self.show(body),
            ("POST", "/api/chat"): self.chat,
            ("POST", "/api/generate"): self.generate,
            ("POST", "/api/embed"): self.embed,
            ("POST", "/api/pull"): lambda body, fault: self.pull(body),
            ("POST", "/api/push"): lambda body, fault: self.push(body),
            ("POST", "/api/create"): lambda body, fault: self.create(body),
            ("POST", "/api/copy"): lambda body, fault: self.copy(body),
            ("DELETE", "/api/delete"): lambda body, fault: self.delete(body),
        }

    def _dispatch(self) -> None:
        """Count the request and answer it; a connection problem closes it."""
        path = self.path.split("?", 1)[0]
        self.arrived = self.sim.clock.now()  # before it is counted: delays start here
        self.sim.bump("requests")
        self.respond(lambda: self._route(path))

    def _route(self, path: str) -> None:
        """Answer one request: its route, after any fault for its path; errors as Ollama's."""
        raw = self.read_body()
        try:
            if path.startswith(_BLOBS) and self.command in ("HEAD", "POST"):
                self._blob(path, raw)
                return
            routes = self._routes()
            route = routes.get((self.command, path))
            if route is None:
                if any(known == path for _, known in routes) or path.startswith(_BLOBS):
                    self.send_text(405, "405 method not allowed")
                else:
                    self.send_text(404, "404 page not found")
                return
            body = self.parse_json(raw)
            fault = None if path == "/" else self.sim.take_fault(path)
            if fault is not None and path not in _STREAMING_FAULT_PATHS:
                self.apply_fault_before_output(fault, body)
                fault = None
            route(body, fault)
        except HTTPError as exc:
            self.send_json(exc.status, {"error": exc.message})

    def _blob(self, path: str, data: bytes) -> None:
        """``HEAD`` or ``POST /api/blobs/:digest`` (the body is the blob, not JSON)."""
        fault = self.sim.take_fault(path)
        if fault is not None:
            self.apply_fault_before_output(fault, {})
        blob = path[len(_BLOBS) :]
        if self.command == "HEAD":
            self.head_blob(blob)
        else:
            self.post_blob(blob, data)

    def _root(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/``: the health check clients poll."""
        self.send_text(200, "Ollama is running")

    def _version(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/api/version``."""
        self.send_json(200, {"version": VERSION})
