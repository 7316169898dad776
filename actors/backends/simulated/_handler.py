"""The simulated Ollama's HTTP routes: each request on a connection answered as Ollama does.

``/``, ``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/embed``,
``/api/chat`` and ``/api/generate`` (NDJSON streams or one object, and the empty
requests that load or unload a model). A call's time runs on the server's clock as a
schedule: the load ends ``load_seconds`` after it began, the first token comes
``first_token_seconds`` after that and each next one ``1 / tokens_per_second`` after the
one before (all divided by ``speed``), so a ManualClock advanced in one step releases
everything due by then. Durations in the answers are that clock's nanoseconds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from actors.backends.simulated._catalog import (
    MODIFIED_AT_NS,
    ModelProfile,
    details,
    digest,
    parameter_count,
)
from actors.backends.simulated._faults import (
    DEFAULT_FAULT_MESSAGES,
    MID_STREAM_FAULTS,
    Fault,
    FaultKind,
)
from actors.backends.simulated._loopback import Aborted, ClientGone, Cut, LoopbackHandler
from actors.backends.simulated._residency import Runner
from actors.backends.simulated._text import Answer, embedding, render_chat, render_generate
from actors.backends.simulated._wire import (
    FOREVER_NS,
    VERSION,
    HTTPError,
    options,
    parse_keep_alive,
    require_model,
    rfc3339,
    runner_options,
    seconds_ns,
    text_field,
)

if TYPE_CHECKING:
    from actors.backends.simulated._simulator import SimulatedOllama

__all__ = ["OllamaHandler"]

_Route = Callable[[dict[str, Any], Fault | None], None]


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
    started: float  # clock time the request arrived
    ready: float  # clock time the model was ready for it
    load_ns: int
    limit: int


class OllamaHandler(LoopbackHandler):
    """One connection: parses requests, answers like Ollama, streams chunked NDJSON."""

    server_version = "SimulatedOllama/" + VERSION

    @property
    def sim(self) -> SimulatedOllama:
        """The simulated server this connection belongs to."""
        return cast("SimulatedOllama", self.owner)

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

    def _dispatch(self, routes: Mapping[str, _Route]) -> None:
        """Count the request and answer it by ``routes``; a connection problem closes it."""
        path = self.path.split("?", 1)[0]
        self._arrived = self.sim.clock.now()  # before it is counted: delays start here
        self.sim.bump("requests")
        self.respond(lambda: self._route(routes, path))

    def _route(self, routes: Mapping[str, _Route], path: str) -> None:
        """Answer one request: its route, after any fault for its path; errors as Ollama's."""
        try:
            body = self._read_json()
            route = routes.get(path)
            if route is None:
                self.send_text(404, "404 page not found")
                return
            fault = None if path == "/" else self.sim.take_fault(path)
            if fault is not None and path not in ("/api/chat", "/api/generate"):
                self._apply_fault_before_output(fault, body)
                fault = None
            route(body, fault)
        except HTTPError as exc:
            self.send_json(exc.status, {"error": exc.message})

    def _read_json(self) -> dict[str, Any]:
        """The request body as a JSON object (``{}`` for GET and HEAD); a 400 otherwise."""
        raw = self.read_body()
        if self.command != "POST":
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

    def _apply_fault_before_output(self, fault: Fault, body: Mapping[str, Any]) -> None:
        """Faults that act before any output: status errors, a cut, a delay (counted from
        the request's arrival)."""
        kind = fault.kind
        if kind in (FaultKind.SLOW_RESPONSE, FaultKind.STALL_STREAM):
            self.pause_until(self._arrived + fault.delay)
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

    # ------------------------------------------------------------- simple routes

    def _root(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/``: the health check clients poll."""
        self.send_text(200, "Ollama is running")

    def _version(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/api/version``."""
        self.send_json(200, {"version": VERSION})

    def _tags(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/api/tags``: every model of the catalog, as pulled."""
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": rfc3339(MODIFIED_AT_NS),
                "size": profile.size_bytes,
                "digest": digest(name),
                "details": details(profile),
            }
            for name, profile in self.sim.models.items()
        ]
        self.send_json(200, {"models": models})

    def _ps(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/api/ps``: the models loaded now, with their keep_alive expiry."""
        now_ns = seconds_ns(self.sim.clock.now())
        models = [
            {
                "name": model.name,
                "model": model.name,
                "size": model.profile.size_bytes,
                "digest": digest(model.name),
                "details": details(model.profile),
                "expires_at": rfc3339(
                    now_ns + FOREVER_NS
                    if model.expires_at is None
                    else seconds_ns(model.expires_at)
                ),
                "size_vram": model.profile.size_bytes,
                "context_length": model.context_length,
            }
            for model in self.sim.residency.resident()
        ]
        self.send_json(200, {"models": models})

    def _show(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/api/show``: a model's details and capabilities."""
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            raise HTTPError(400, "model is required")
        name, profile = self.sim.lookup(model)
        family = profile.family
        self.send_json(
            200,
            {
                "license": "",
                "modelfile": f"# Modelfile generated by the simulated Ollama\nFROM {name}\n",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": details(profile),
                "model_info": {
                    "general.architecture": family,
                    "general.parameter_count": parameter_count(profile.parameter_size),
                    f"{family}.context_length": profile.context_length,
                    f"{family}.embedding_length": profile.embedding_dimensions,
                },
                "capabilities": ["embedding"] if profile.embedding_only else ["completion"],
                "modified_at": rfc3339(MODIFIED_AT_NS),
            },
        )

    def _embed(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/api/embed``: loads the model like a call does, then one vector per input."""
        started = self.sim.clock.now()
        model = require_model(body)
        name, profile = self.sim.lookup(model)
        inputs = body.get("input", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise HTTPError(400, "invalid input type: input must be a string or strings")
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        wanted = runner_options(options(body), profile)
        self.sim.bump("embed_requests")
        runner, needs_load = self.sim.residency.acquire(name, profile, wanted, self.interrupt)
        try:
            load_ns, ready = self._load(runner, needs_load)
            self.pause_until(ready + profile.first_token_seconds / self.sim.speed)
            vectors = [embedding(name, text, profile.embedding_dimensions) for text in inputs]
        finally:
            self.sim.residency.release(runner, keep_alive)
        self.send_json(
            200,
            {
                "model": model,
                "embeddings": vectors,
                "total_duration": seconds_ns(self.sim.clock.now() - started),
                "load_duration": load_ns,
                "prompt_eval_count": sum(len(text.split()) for text in inputs),
            },
        )

    # ---------------------------------------------------------------- generation

    def _chat(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/api/chat``: the messages rendered as one context (a final assistant turn is
        continued)."""
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise HTTPError(400, "messages must be a list")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise HTTPError(400, "each message needs a role")
            if not isinstance(message.get("content", ""), str):
                raise HTTPError(400, "message content must be a string")
        self._complete(body, fault, "chat", render_chat(messages) if messages else None)

    def _generate(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/api/generate``: the system text and the prompt as the context."""
        prompt, system = body.get("prompt") or "", body.get("system") or ""
        if not isinstance(prompt, str) or not isinstance(system, str):
            raise HTTPError(400, "prompt and system must be strings")
        context = render_generate(prompt, system) if prompt or system else None
        self._complete(body, fault, "generate", context)

    def _complete(
        self, body: dict[str, Any], fault: Fault | None, kind: str, context: str | None
    ) -> None:
        """Run a chat or generate request; ``context`` None means load or unload only."""
        started = self.sim.clock.now()
        model = require_model(body)
        name, profile = self.sim.lookup(model)
        if fault is not None and fault.kind not in MID_STREAM_FAULTS:
            self._apply_fault_before_output(fault, body)
            fault = None
        if profile.embedding_only:
            raise HTTPError(400, f'"{model}" does not support {kind}')
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        request_options = options(body)
        wanted = runner_options(request_options, profile)
        limit = request_options.get("num_predict")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise HTTPError(400, 'option "num_predict" must be an integer')
        stream = body.get("stream")
        if stream is None:
            stream = True
        if not isinstance(stream, bool):
            raise HTTPError(400, "stream must be true or false")
        if context is None:
            self._load_or_unload(model, name, profile, wanted, keep_alive, kind)
            return
        self.sim.bump("calls_started")
        runner, needs_load = self.sim.residency.acquire(name, profile, wanted, self.interrupt)
        cap = profile.max_answer_tokens
        self.sim.bump("active_calls")
        try:
            load_ns, ready = self._load(runner, needs_load)
            call = _Call(
                model=model,
                name=name,
                kind=kind,
                profile=profile,
                context=context,
                stream=stream,
                fault=fault,
                started=started,
                ready=ready,
                load_ns=load_ns,
                limit=cap if limit is None or limit <= 0 else min(limit, cap),
            )
            final = self._decode(call)
        except ClientGone:
            self.sim.bump("calls_disconnected")
            raise
        finally:
            self.sim.bump("active_calls", -1)
            self.sim.residency.release(runner, keep_alive)
        # The state settles before the final line goes out, so a client that has read
        # it sees the model released (or unloaded) and the call counted.
        self.sim.bump("calls_finished")
        if stream:
            self.write_line(final)
            self.end_stream()
        else:
            self.send_json(200, final)

    def _load(self, runner: Runner, needs_load: bool) -> tuple[int, float]:
        """Simulate the model load (Ollama finishes a load even if its client left).

        Returns the load's duration in nanoseconds and the clock time the model was ready.
        """
        if not needs_load:
            return 0, self.sim.clock.now()
        self.pause_until(runner.ready_at, watch_client=False)
        self.sim.residency.loaded(runner)
        return seconds_ns(runner.ready_at - runner.loading_since), runner.ready_at

    def _load_or_unload(
        self,
        model: str,
        name: str,
        profile: ModelProfile,
        wanted: tuple[tuple[str, object], ...],
        keep_alive: float | None,
        kind: str,
    ) -> None:
        """An empty request: keep_alive 0 unloads, anything else loads (Ollama's idiom)."""
        if keep_alive == 0:
            self.sim.residency.unload(name)
            reason = "unload"
        else:
            runner, needs_load = self.sim.residency.acquire(name, profile, wanted, self.interrupt)
            try:
                self._load(runner, needs_load)
            finally:
                self.sim.residency.release(runner, keep_alive)
            reason = "load"
        line: dict[str, Any] = {"model": model, "created_at": self._now_rfc3339()}
        line.update(text_field(kind, ""))
        line.update(done=True, done_reason=reason)
        self.send_json(200, line)

    def _decode(self, call: _Call) -> dict[str, Any]:
        """Produce tokens one by one, streaming each as one NDJSON line; returns the final
        line (with the whole text when not streaming), which the caller sends."""
        speed = self.sim.speed
        clock = self.sim.clock
        answer = Answer(call.name, call.context, call.profile.mean_answer_tokens, call.limit)
        due = call.ready + call.profile.first_token_seconds / speed
        self.pause_until(due)
        eval_began = due
        interval = 1.0 / (call.profile.tokens_per_second * speed)
        if call.stream:
            self.start_stream("application/x-ndjson")
        while not answer.exhausted:
            if call.fault is not None and call.fault.after_chunks == len(answer.tokens):
                due = self._mid_stream_fault(call, due)
            token = answer.next()
            if token is None:
                break
            if len(answer.tokens) > 1:
                due += interval
                self.pause_until(due)
            self.sim.bump("tokens_generated")
            if call.stream:
                self.write_line(self._line(call, token, done=False))
        self.check_client()
        now = clock.now()
        final = self._line(call, "" if call.stream else answer.text, done=True)
        final.update(
            done_reason=answer.done_reason,
            total_duration=seconds_ns(now - call.started),
            load_duration=call.load_ns,
            prompt_eval_count=answer.prompt_tokens,
            prompt_eval_duration=seconds_ns(eval_began - call.ready),
            eval_count=len(answer.tokens),
            eval_duration=seconds_ns(now - eval_began),
        )
        return final

    def _mid_stream_fault(self, call: _Call, due: float) -> float:
        """Apply the call's fault now; a stall holds the stream ``delay`` past the time the
        last token was ``due`` and returns the new schedule."""
        fault = call.fault
        assert fault is not None
        if fault.kind is FaultKind.STALL_STREAM:
            resume = due + fault.delay
            self.pause_until(resume)
            return resume
        self.sim.bump("calls_faulted")
        if fault.kind is FaultKind.CUT_STREAM:
            raise Cut
        message = fault.message or DEFAULT_FAULT_MESSAGES[FaultKind.ERROR_LINE]
        if not call.stream:
            raise HTTPError(500, message)
        self.write_line({"error": message})
        self.end_stream()
        raise Aborted

    def _line(self, call: _Call, text: str, *, done: bool) -> dict[str, Any]:
        """One response object of ``call`` carrying ``text``."""
        out: dict[str, Any] = {"model": call.model, "created_at": self._now_rfc3339()}
        out.update(text_field(call.kind, text))
        out["done"] = done
        return out

    def _now_rfc3339(self) -> str:
        """The clock's time now, as Ollama writes ``created_at``."""
        return rfc3339(seconds_ns(self.sim.clock.now()))
