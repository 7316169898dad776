"""What every route of the simulated Ollama shares: the server it belongs to, the request
body, faults that act before any output, NDJSON progress streams and timestamps.

The routes themselves are mixins on top of this class: ``_generation`` (chat, generate,
embed) and ``_models`` (the model catalog and its management); ``_handler`` dispatches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from actors.backends.simulated._faults import DEFAULT_FAULT_MESSAGES, Fault, FaultKind
from actors.backends.simulated._loopback import Cut, LoopbackHandler
from actors.backends.simulated._wire import VERSION, HTTPError, rfc3339, seconds_ns

if TYPE_CHECKING:
    from actors.backends.simulated._simulator import SimulatedOllama

__all__ = ["OllamaRoutes", "Progress"]

# A progress stream: status objects, then (maybe) an HTTPError that ends it.
Progress = Iterator[dict[str, Any]]


class OllamaRoutes(LoopbackHandler):
    """One connection of the simulated Ollama, with what its routes share."""

    server_version = "SimulatedOllama/" + VERSION
    arrived: float  # clock time the request being answered arrived

    @property
    def sim(self) -> SimulatedOllama:
        """The simulated server this connection belongs to."""
        return cast("SimulatedOllama", self.owner)

    def parse_json(self, raw: bytes) -> dict[str, Any]:
        """A request body as a JSON object (``{}`` unless POST or DELETE); a 400 otherwise."""
        if self.command not in ("POST", "DELETE"):
            return {}
        if not raw.strip():
            raise HTTPError(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise HTTPError(400, f"invalid JSON in request body: {exc}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        return body

    def apply_fault_before_output(self, fault: Fault, body: Mapping[str, Any]) -> None:
        """Faults that act before any output: status errors, a cut, a delay (counted from
        the request's arrival)."""
        kind = fault.kind
        if kind in (FaultKind.SLOW_RESPONSE, FaultKind.STALL_STREAM):
            self.pause_until(self.arrived + fault.delay)
            return
        self.sim.bump("calls_faulted")
        if kind is FaultKind.CUT_STREAM:
            raise Cut
        if kind is FaultKind.NOT_FOUND:
            model = body.get("model") or body.get("name") or ""
            raise HTTPError(
                404, fault.message or f'model "{model}" not found, try pulling it first'
            )
        status = {FaultKind.BUSY: 503}.get(kind, 500)
        raise HTTPError(status, fault.message or DEFAULT_FAULT_MESSAGES[kind])

    def send_progress(self, progress: Progress, stream: bool) -> None:
        """A model-management answer as Ollama sends it (server/routes.go streamResponse and
        waitForStream): NDJSON status lines, where an error after the first line is an
        ``{"error"}`` line; or, with ``stream`` false, the last status alone (an error as
        its status and ``{"error"}``). An error before any line is an ordinary error answer.
        """
        started = False
        last: dict[str, Any] = {}
        try:
            for status in progress:
                if not stream:
                    last = status
                    continue
                if not started:
                    self.start_stream("application/x-ndjson")
                    started = True
                self.write_line(status)
        except HTTPError as exc:
            if not started:
                raise
            self.write_line({"error": exc.message})
            self.end_stream()
            return
        if started:
            self.end_stream()
        else:
            self.send_json(200, last)

    def now_rfc3339(self) -> str:
        """The clock's time now, as Ollama writes ``created_at``."""
        return rfc3339(seconds_ns(self.sim.clock.now()))
