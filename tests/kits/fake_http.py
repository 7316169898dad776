"""What the fake OpenAI and Anthropic servers share, on top of the simulator's server
scaffolding (``actors.backends.simulated``: the loopback listener, pauses that notice a
client going away, SSE writing, the fault queue, counters and ``wait_for``).

Here: faults as these APIs fail (a status with an error type, an error event, a cut, a
stall), the requests each fake saw, the token loop of a call, paced on the server's
clock, and what a call answers (:class:`Plan`): thinking when asked for, then the tool
calls the simulated Ollama's rule picks, JSON that satisfies a requested schema, or text.
The text is the simulator's, so a resumed answer continues exactly where the
interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from actors.backends.simulated import (
    Aborted,
    Answer,
    ClientGone,
    Cut,
    FaultQueue,
    LoopbackHandler,
    LoopbackServer,
)
from actors.backends.simulated._schema import instance, json_object
from actors.backends.simulated._text import Scripted, TokenSource, thinking
from actors.backends.simulated._tools import chosen_calls
from actors.runtime import Clock


@dataclasses.dataclass(frozen=True)
class Fault:
    """What the next matching request gets: ``status`` (an error answer before any output),
    ``error_event`` or ``cut`` after ``after_chunks`` chunks, or ``stall`` for ``delay`` s."""

    kind: str
    path: str | None = None
    status: int = 500
    message: str = "injected failure"
    error_type: str = "api_error"
    after_chunks: int = 0
    delay: float = 0.0
    times: int | None = 1


class FakeServer(LoopbackServer[Counter[str]]):
    """A loopback server whose handler class speaks some model API.

    Counts (``stats()``): requests, calls_started, calls_finished, calls_disconnected,
    calls_faulted, tokens, active. ``requests`` keeps each (path, body, headers) seen.
    """

    def __init__(
        self,
        handler: type[FakeHandler],
        *,
        name: str,
        token_seconds: float = 0.0005,
        mean_answer_tokens: int = 20,
        max_answer_tokens: int = 400,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(handler, name=name, clock=clock)
        self.token_seconds = token_seconds
        self.mean_answer_tokens = mean_answer_tokens
        self.max_answer_tokens = max_answer_tokens
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self._faults: FaultQueue[Fault] = FaultQueue()

    def inject(self, fault: Fault) -> None:
        """Queue a fault for the next request to ``fault.path`` (any path when None)."""
        self._faults.add(fault)

    def take_fault(self, path: str) -> Fault | None:
        """The fault the request to ``path`` gets, if any."""
        return self._faults.take(path)

    def snapshot_locked(self) -> Counter[str]:
        """A copy of the counters."""
        return Counter(self.counters)

    def answer(self, model: str, context: str, limit: int | None) -> Answer:
        """The deterministic answer to ``context``, at most ``limit`` tokens."""
        cap = min(limit or self.max_answer_tokens, self.max_answer_tokens)
        return Answer(model, context, self.mean_answer_tokens, cap)

    def plan(
        self,
        model: str,
        turns: Sequence[Mapping[str, Any]],
        context: str,
        limit: int | None,
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        think: str | None = None,
        schema: Mapping[str, Any] | str | None = None,
    ) -> Plan:
        """What a call answers (see :class:`Plan`): ``turns`` are the messages in Ollama's
        shape, ``tools`` in OpenAI's (and Ollama's), ``think`` a level, ``schema`` a JSON
        schema or "json" for any object."""
        cap = min(limit or self.max_answer_tokens, self.max_answer_tokens)
        thought = thinking(model, context, think, self.mean_answer_tokens, cap) if think else None
        calls = chosen_calls(tools, turns, model, context)
        text: TokenSource = self.answer(model, context, limit)
        if schema == "json":
            text = Scripted(json.dumps(json_object(model, context)), cap)
        elif isinstance(schema, Mapping):
            text = Scripted(json.dumps(instance(schema, model, context)), cap)
        return Plan(thought, calls, None if calls else text, cap, len(context.split()))


@dataclasses.dataclass
class Plan:
    """What a call answers: thinking first (when asked for), then either the tool calls
    the simulated Ollama's rule picks (``{"id", "function": {"index", "name",
    "arguments"}}``) or text (JSON when a schema was asked for)."""

    thinking: Answer | None
    calls: list[dict[str, Any]]
    text: TokenSource | None
    limit: int
    prompt_tokens: int

    def arguments(self, call: Mapping[str, Any]) -> Scripted:
        """A call's arguments as the JSON text a model decodes, piece by piece."""
        return Scripted(json.dumps(call["function"]["arguments"]), self.limit)


class FakeHandler(LoopbackHandler):
    """JSON in, JSON or SSE out, and a call's tokens paced on the fake's clock."""

    @property
    def fake(self) -> FakeServer:
        """The fake this connection belongs to."""
        return cast(FakeServer, self.owner)

    def read_json(self) -> dict[str, Any]:
        """The request's JSON body, recorded in ``fake.requests``."""
        body: dict[str, Any] = json.loads(self.read_body() or b"{}")
        self.fake.requests.append((self.path, body, dict(self.headers.items())))
        self.fake.bump("requests")
        return body

    def start_sse(self) -> None:
        """Start a server-sent event stream."""
        self.start_stream("text/event-stream", {"Cache-Control": "no-cache"})

    def next_token(self, answer: Answer) -> str | None:
        """The answer's next token after one token's time, or None once it has ended."""
        self.pause(self.fake.token_seconds)
        token = answer.next()
        if token is not None:
            self.fake.bump("tokens")
        return token

    def stream_tokens(
        self,
        answer: Answer,
        write: Callable[[str], None],
        fault: Fault | None,
        error_event: Callable[[Fault], None],
    ) -> int:
        """Write tokens until the answer ends (see ``answer.done_reason``); returns how many."""
        count = 0
        while True:
            if fault is not None and fault.after_chunks == count:
                if fault.kind == "cut":
                    raise Cut
                if fault.kind == "error_event":
                    error_event(fault)
                    raise Cut
                if fault.kind == "stall":
                    self.pause(fault.delay)
            token = self.next_token(answer)
            if token is None:
                return count
            write(token)
            count += 1

    def run_call(self, call: Callable[[], None]) -> None:
        """Count a generating call and what ended it."""
        self.fake.bump("calls_started")
        self.fake.bump("active")
        try:
            call()
            self.fake.bump("calls_finished")
        except ClientGone:
            self.fake.bump("calls_disconnected")
            self.close_connection = True
        except Cut:
            self.fake.bump("calls_faulted")
            self.close_connection = True
        except Aborted:
            self.close_connection = True
        finally:
            self.fake.bump("active", -1)
