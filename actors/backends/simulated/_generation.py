"""The simulated Ollama's generation routes: ``/api/chat``, ``/api/generate`` and
``/api/embed``, answered as Ollama's server/routes.go does (NDJSON streams or one object,
and the empty requests that load or unload a model).

A call's time runs on the server's clock as a schedule: the load ends ``load_seconds``
after it began, the first token comes ``first_token_seconds`` after that and each next
one ``1 / tokens_per_second`` after the one before (all divided by ``speed``), so a
ManualClock advanced in one step releases everything due by then. Durations in the
answers are that clock's nanoseconds; a call on a loaded model reports the profile's
``warm_load_seconds`` as its load_duration, as Ollama reports its scheduling time.

An answer is decoded in phases, all paced the same and all counted in ``eval_count`` and
``num_predict``: thinking (``think``, or by default on a model that thinks), then either
tool calls (``_tools``: each decoded whole, then sent as one chunk), JSON (``format``:
``_schema``) or text (``_text.Answer``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from actors.backends.simulated._catalog import InstalledModel, ModelProfile
from actors.backends.simulated._faults import (
    DEFAULT_FAULT_MESSAGES,
    MID_STREAM_FAULTS,
    Fault,
    FaultKind,
)
from actors.backends.simulated._loopback import Aborted, ClientGone, Cut
from actors.backends.simulated._residency import Runner
from actors.backends.simulated._routes import OllamaRoutes
from actors.backends.simulated._schema import instance, json_object
from actors.backends.simulated._text import (
    Answer,
    Scripted,
    TokenSource,
    embedding,
    image_tag,
    render_chat,
    render_generate,
    stable_hash,
    thinking,
)
from actors.backends.simulated._tools import (
    call_text,
    chosen_calls,
    parse_tool_calls,
    parse_tools,
)
from actors.backends.simulated._wire import (
    HTTPError,
    KeepAlive,
    full_name,
    options,
    parse_format,
    parse_images,
    parse_keep_alive,
    parse_think,
    require_model,
    runner_options,
    seconds_ns,
    text_field,
)

__all__ = ["GenerationRoutes"]

# The error Ollama's runner gives for images on a model without a vision projector
# (model.ErrNoVisionModel, wrapped by runner/ollamarunner NewSequence; a 500).
NO_VISION = (
    "Failed to create new sequence: failed to process inputs: "
    "this model is missing data required for image input"
)
RAW_CONFLICT = "raw mode does not support template, system, or context"

_Render = Callable[[InstalledModel], str | None]


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
    started: float  # clock time the call is accounted from
    ready: float  # clock time the model was ready for it
    load_ns: int
    limit: int
    think: str | None  # the thinking level, None: no thinking
    format: str | dict[str, Any] | None
    tool_calls: tuple[dict[str, Any], ...]
    top_logprobs: int | None  # None: no logprobs
    returns_context: bool  # a generate call that is not raw: its answer has ``context``


@dataclasses.dataclass(slots=True)
class _Output:
    """What a call decoded so far, for the answer that is not streamed and the final line."""

    thinking: list[str] = dataclasses.field(default_factory=list)
    content: list[str] = dataclasses.field(default_factory=list)
    tool_calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    logprobs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    count: int = 0


class GenerationRoutes(OllamaRoutes):
    """``/api/chat``, ``/api/generate`` and ``/api/embed``."""

    def chat(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/api/chat``: the messages rendered as one context (a final assistant turn is
        continued), tools, thinking, format and images."""
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise HTTPError(400, "messages must be a list")
        images = 0
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise HTTPError(400, "each message needs a role")
            if not isinstance(message.get("content") or "", str):
                raise HTTPError(400, "message content must be a string")
            images += len(parse_images(message.get("images"), f"messages[{index}].images"))
            parse_tool_calls(message.get("tool_calls"), f"messages[{index}].tool_calls")
        tools = parse_tools(body.get("tools"))

        def render(model: InstalledModel) -> str | None:
            if not messages:
                return None
            turns = [{"role": role, "content": text} for role, text in model.messages]
            turns += messages
            if model.system and messages[0].get("role") != "system":
                turns.insert(0, {"role": "system", "content": model.system})
            names = ",".join(tool["function"]["name"] for tool in tools)
            return (f"<|tools|>\n{names}\n" if tools else "") + render_chat(turns)

        self._complete(body, fault, "chat", render, messages=messages, tools=tools, images=images)

    def generate(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/api/generate``: the system text and the prompt as the context, with images,
        ``raw``, ``suffix``, ``template`` and ``context`` as Ollama takes them."""
        fields = {key: body.get(key) or "" for key in ("prompt", "system", "suffix", "template")}
        for key, value in fields.items():
            if not isinstance(value, str):
                raise HTTPError(400, f"{key} must be a string")
        ids = body.get("context") or []
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids
        ):
            raise HTTPError(400, "context must be a list of token ids (integers)")
        raw = body.get("raw") is True
        if raw and (fields["template"] or fields["system"] or ids):
            raise HTTPError(400, RAW_CONFLICT)
        images = parse_images(body.get("images"), "images")

        def render(model: InstalledModel) -> str | None:
            if not fields["prompt"]:
                return None
            prompt = "".join(image_tag(i, image) for i, image in enumerate(images))
            prompt += fields["prompt"]
            if raw:
                return prompt
            head = self.sim.tokenizer.decode(ids)
            if fields["template"]:
                head += f"<|template|>\n{fields['template']}\n"
            if fields["suffix"]:
                head += f"<|suffix|>\n{fields['suffix']}\n"
            return head + render_generate(prompt, fields["system"] or model.system)

        self._complete(
            body, fault, "generate", render, images=len(images), insert=bool(fields["suffix"])
        )

    def embed(self, body: dict[str, Any], fault: Fault | None) -> None:
        """``/api/embed``: loads the model like a call does (any model: Ollama asks for no
        capability here), then one vector per input. An empty or missing ``input`` only
        loads the model, with the request's keep_alive, and answers no embeddings: how
        Ollama loads an embedding model (server/routes.go EmbedHandler, ``len(input) ==
        0``), whose empty generate it refuses."""
        model = require_model(body)
        inputs = _embed_inputs(body.get("input"))
        installed = self.sim.lookup(model)
        profile = installed.profile
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        wanted = runner_options(self._options(body, installed), profile)
        self.sim.bump("embed_requests")
        runner, needs_load = self.sim.residency.acquire(
            installed.name, profile, wanted, keep_alive, self.interrupt
        )
        try:
            started, ready, load_ns = self._load(runner, needs_load)
            if inputs:
                self.pause_until(ready + profile.first_token_seconds / self.sim.speed)
            vectors = [
                embedding(installed.name, text, profile.embedding_dimensions) for text in inputs
            ]
        finally:
            self.sim.residency.release(runner)
        if not inputs:  # Ollama answers before it would time anything
            self.send_json(200, {"model": model, "embeddings": []})
            return
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

    # ------------------------------------------------------------------ a call

    def _complete(
        self,
        body: dict[str, Any],
        fault: Fault | None,
        kind: str,
        render: _Render,
        *,
        messages: Sequence[Mapping[str, Any]] = (),
        tools: Sequence[Mapping[str, Any]] = (),
        images: int = 0,
        insert: bool = False,
    ) -> None:
        """Run a chat or generate request; a context of None means load or unload only."""
        model = require_model(body)
        think = parse_think(body.get("think"))
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        _num_predict(options(body))
        stream = True if body.get("stream") is None else body["stream"]
        if not isinstance(stream, bool):
            raise HTTPError(400, "stream must be true or false")
        top_logprobs = self._top_logprobs(body)
        installed = self.sim.lookup(model)
        profile = installed.profile
        if fault is not None and fault.kind not in MID_STREAM_FAULTS:
            self.apply_fault_before_output(fault, body)
            fault = None
        merged = self._options(body, installed)
        wanted = runner_options(merged, profile)
        limit = _num_predict(merged)
        context = render(installed)
        if context is None and keep_alive == KeepAlive(0.0):
            # Before the capability check, as in Ollama: any model unloads this way.
            self._unload(model, installed.name, kind)
            return
        if profile.embedding_only:  # scheduleRunner's errCapabilityCompletion: even a load
            raise HTTPError(400, f"{json.dumps(model)} does not support {kind}")
        if think is not None and not profile.thinking:
            raise HTTPError(400, f"{json.dumps(model)} does not support thinking")
        if body.get("think") is None and profile.thinking:
            think = "medium"  # Ollama thinks by default on a model that can
        for needed, present in (("tools", bool(tools)), ("insert", insert)):
            if present and not getattr(profile, needed):
                raise HTTPError(400, f"{full_name(installed.name)} does not support {needed}")
        if context is None:
            self._load_only(model, installed, wanted, keep_alive, kind)
            return
        self.sim.bump("calls_started")
        runner, needs_load = self.sim.residency.acquire(
            installed.name, profile, wanted, keep_alive, self.interrupt
        )
        cap = profile.max_answer_tokens
        self.sim.bump("active_calls")
        try:
            started, ready, load_ns = self._load(runner, needs_load)
            if images and not profile.vision:
                raise HTTPError(500, NO_VISION)
            answer_format = parse_format(body.get("format"))
            prefilled = bool(messages) and messages[-1].get("role") == "assistant"
            call = _Call(
                model=model,
                name=installed.name,
                kind=kind,
                profile=profile,
                context=context,
                stream=stream,
                fault=fault,
                started=started,
                ready=ready,
                load_ns=load_ns,
                limit=cap if limit is None or limit <= 0 else min(limit, cap),
                think=None if prefilled else think,
                format=answer_format,
                tool_calls=tuple(chosen_calls(tools, messages, installed.name, context)),
                top_logprobs=top_logprobs,
                returns_context=kind == "generate" and body.get("raw") is not True,
            )
            final = self._decode(call)
        except ClientGone:
            self.sim.bump("calls_disconnected")
            raise
        finally:
            self.sim.bump("active_calls", -1)
            self.sim.residency.release(runner)
        # The state settles before the final line goes out, so a client that has read
        # it sees the model released (or unloaded) and the call counted.
        self.sim.bump("calls_finished")
        if stream:
            self.write_line(final)
            self.end_stream()
        else:
            self.send_json(200, final)

    @staticmethod
    def _top_logprobs(body: Mapping[str, Any]) -> int | None:
        """How many alternatives each token's logprobs list (None: no logprobs asked)."""
        top = body.get("top_logprobs") or 0
        if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20:
            raise HTTPError(400, "top_logprobs must be between 0 and 20")
        return top if body.get("logprobs") is True else None

    @staticmethod
    def _options(body: Mapping[str, Any], installed: InstalledModel) -> dict[str, Any]:
        """The request's options over the model's own parameters (``/api/create``)."""
        return {**dict(installed.parameters), **options(body)}

    def _load(self, runner: Runner, needs_load: bool) -> tuple[float, float, int]:
        """Simulate the model load (Ollama finishes a load even if its client left).

        Returns the clock time the call is accounted from, the time the model was ready
        and the load_duration in nanoseconds: a load's time since the request arrived, or
        the time it waited for the runner plus the profile's ``warm_load_seconds``.
        """
        started = self.arrived
        if needs_load:
            self.pause_until(runner.ready_at, watch_client=False)
            self.sim.residency.loaded(runner)
            ready = runner.ready_at
        else:
            started -= runner.profile.warm_load_seconds / self.sim.speed
            ready = self.sim.clock.now()
        return started, ready, seconds_ns(ready - started)

    def _load_only(
        self,
        model: str,
        installed: InstalledModel,
        wanted: tuple[tuple[str, object], ...],
        keep_alive: KeepAlive | None,
        kind: str,
    ) -> None:
        """An empty request loads the model (Ollama's idiom), keeping it ``keep_alive``."""
        runner, needs_load = self.sim.residency.acquire(
            installed.name, installed.profile, wanted, keep_alive, self.interrupt
        )
        try:
            self._load(runner, needs_load)
        finally:
            self.sim.residency.release(runner)
        self._done_line(model, kind, "load")

    def _unload(self, model: str, name: str, kind: str) -> None:
        """An empty request with keep_alive 0 unloads the model (when its call ends)."""
        self.sim.residency.unload(name)
        self._done_line(model, kind, "unload")

    def _done_line(self, model: str, kind: str, reason: str) -> None:
        line: dict[str, Any] = {"model": model, "created_at": self.now_rfc3339()}
        line.update(text_field(kind, ""))
        line.update(done=True, done_reason=reason)
        self.send_json(200, line)

    # ----------------------------------------------------------------- decoding

    @staticmethod
    def _phases(call: _Call) -> list[tuple[str, Callable[[int], TokenSource]]]:
        """What the call decodes, in order: each phase's kind, and its source given the
        token budget left."""
        profile, name, context = call.profile, call.name, call.context
        mean = profile.mean_answer_tokens
        phases: list[tuple[str, Callable[[int], TokenSource]]] = []
        level = call.think
        if level is not None:
            phases.append(("thinking", lambda n: thinking(name, context, level, mean, n)))
        if call.format is None and call.tool_calls:
            return phases + [("tool", _scripted(call_text(tool))) for tool in call.tool_calls]
        if call.format == "json":
            phases.append(("content", _scripted(json.dumps(json_object(name, context)))))
        elif isinstance(call.format, dict):
            phases.append(("content", _scripted(json.dumps(instance(call.format, name, context)))))
        else:
            phases.append(("content", lambda n: Answer(name, context, mean, n)))
        return phases

    def _decode(self, call: _Call) -> dict[str, Any]:
        """Produce tokens one by one, streaming each as one NDJSON line; returns the final
        line (with the whole answer when not streaming), which the caller sends."""
        speed = self.sim.speed
        due = call.ready + call.profile.first_token_seconds / speed
        self.pause_until(due)
        eval_began = due
        interval = 1.0 / (call.profile.tokens_per_second * speed)
        if call.stream:
            self.start_stream("application/x-ndjson")
        out = _Output()
        done_reason = "stop"
        leftover = ""  # a tool call cut short by num_predict: Ollama sends it as content
        for kind, make in self._phases(call):
            budget = call.limit - out.count
            if budget <= 0:
                done_reason = "length"
                break
            source = make(budget)
            while True:
                if call.fault is not None and call.fault.after_chunks == out.count:
                    due = self._mid_stream_fault(call, due)
                token = source.next()
                if token is None:
                    break
                if out.count:
                    due += interval
                    self.pause_until(due)
                out.count += 1
                self.sim.bump("tokens_generated")
                self._emit(call, out, kind, token)
            if kind == "tool":
                if source.done_reason == "stop":
                    tool = call.tool_calls[len(out.tool_calls)]
                    out.tool_calls.append(tool)
                    if call.stream:
                        self.write_line(self._line(call, "", done=False, tool_calls=[tool]))
                else:
                    leftover = "".join(source.tokens)
                    out.content.append(leftover)
            if source.done_reason == "length" and out.count >= call.limit:
                done_reason = "length"
                break
        self.check_client()
        now = self.sim.clock.now()
        if call.stream:
            final = self._line(call, leftover, done=True)
        else:
            final = self._line(
                call,
                "".join(out.content),
                done=True,
                thinking="".join(out.thinking),
                tool_calls=out.tool_calls,
            )
            if out.logprobs:
                final["logprobs"] = out.logprobs
        final.update(
            done_reason=done_reason,
            total_duration=seconds_ns(now - call.started),
            load_duration=call.load_ns,
            prompt_eval_count=len(call.context.split()),
            prompt_eval_duration=seconds_ns(eval_began - call.ready),
            eval_count=out.count,
            eval_duration=seconds_ns(now - eval_began),
        )
        if call.returns_context:
            answer = "".join(out.thinking) + "".join(out.content)
            final["context"] = self.sim.tokenizer.encode(f"{call.context}{answer}")
        return final

    def _emit(self, call: _Call, out: _Output, kind: str, token: str) -> None:
        """Record one decoded token and stream it (a tool call's tokens only as logprobs,
        as Ollama's parser holds them back until the call is whole)."""
        logprobs = [] if call.top_logprobs is None else [_logprob(call, token)]
        out.logprobs += logprobs
        if kind == "thinking":
            out.thinking.append(token)
        elif kind == "content":
            out.content.append(token)
        if not call.stream or (kind == "tool" and not logprobs):
            return
        if kind == "thinking":
            line = self._line(call, "", done=False, thinking=token)
        else:
            line = self._line(call, token if kind == "content" else "", done=False)
        if logprobs:
            line["logprobs"] = logprobs
        self.write_line(line)

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

    def _line(
        self,
        call: _Call,
        text: str,
        *,
        done: bool,
        thinking: str = "",
        tool_calls: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """One response object of ``call``: its text, and thinking and tool calls if any
        (Ollama omits them when empty)."""
        out: dict[str, Any] = {"model": call.model, "created_at": self.now_rfc3339()}
        out.update(text_field(call.kind, text))
        carrier = out["message"] if call.kind == "chat" else out
        if thinking:
            carrier["thinking"] = thinking
        if tool_calls:
            carrier["tool_calls"] = list(tool_calls)
        out["done"] = done
        return out


def _embed_inputs(value: object) -> list[str]:
    """``/api/embed``'s ``input`` as Ollama reads it: a string (none if empty), a list of
    strings, or nothing; anything else is its 400 ``invalid input type``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise HTTPError(400, "invalid input type")
    return value


def _num_predict(options: Mapping[str, Any]) -> int | None:
    """The ``num_predict`` option; a 400 unless it is an integer."""
    limit = options.get("num_predict")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
        raise HTTPError(400, 'option "num_predict" must be an integer')
    return limit


def _scripted(text: str) -> Callable[[int], TokenSource]:
    """A phase that decodes ``text``."""
    return lambda budget: Scripted(text, budget)


def _logprob(call: _Call, token: str) -> dict[str, Any]:
    """A token's deterministic log probability, with ``top_logprobs`` alternatives (the
    token first), as Ollama's api.Logprob carries them."""
    value = -(stable_hash("logprob", call.name, token) % 4000) / 1000.0

    def entry(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    top = call.top_logprobs or 0
    if not top:
        return entry(token, value)
    alternatives = [entry(token, value)]
    for rank in range(1, top):
        other = f" {stable_hash('alt', token, str(rank)) % 10_000:04d}"
        alternatives.append(entry(other, value - rank))
    return {**entry(token, value), "top_logprobs": alternatives}
