"""The Ollama backend: its wire format on httpx.MockTransport, and the simulated Ollama
server over real HTTP where a socket is the point.

The request bodies, the parsing of streams, answers and metrics, and the failure classes
go through ``httpx.MockTransport`` (the seam the backend takes, docs/architecture.md
section 12). Refused and cut connections, time-outs, cancellation that really drops the
connection, keep-alive reuse, and resume that neither repeats nor loses a token run on
the simulated server; where a call must hang until it is cancelled or times out, that
server runs on a manual clock that is never advanced.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from backend_kit import (
    Sent,
    Wire,
    cancel_after,
    cancel_while,
    failure,
    json_answer,
    ndjson_answer,
    on_wire,
    run,
)
from profiles import EMBEDDER, ENDLESS, TINY

from actors.backends import http
from actors.backends.base import Backend, CallCancelledError, CancelToken
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import FaultKind, ModelProfile, SimulatedOllama, embedding
from actors.runtime import ManualClock
from protocol import BackendError, BackendRequest, ChatMessage, JobKind, JobMetrics

CATALOG = {"tiny": TINY, "endless": ENDLESS, "embedder": EMBEDDER}
# On a manual clock: "tiny" and "endless" take no time; "slow-load" loads until the clock
# is advanced by three seconds, which the tests never do.
PAUSED_CATALOG = {
    "tiny": ModelProfile(
        load_seconds=0.0, first_token_seconds=0.0, tokens_per_second=math.inf,
        mean_answer_tokens=20,
    ),
    "endless": ModelProfile(
        load_seconds=0.0, first_token_seconds=0.0, tokens_per_second=math.inf,
        mean_answer_tokens=1_000_000, max_answer_tokens=2000,
    ),
    "slow-load": ModelProfile(load_seconds=3.0, first_token_seconds=0.0),
}  # fmt: skip
QUESTION = (ChatMessage("user", "How does the arbiter pick the next job?"),)
PATIENT = 120.0  # a backend time-out that outlasts cancel_while's hang guard

# ------------------------------------------------------------------- the wire

URL = "http://ollama.test"
KNOWN = frozenset({"tiny", "endless", "embedder"})
CHAT_ANSWER = ("The", " arbiter", " serves", " internal", " work", " first,", " then", " the",
               " rest.")  # fmt: skip
GENERATE_ANSWER = (" a", " job", " is", " done", " when", " its", " stream", " ends.")
CREATED_AT = "2026-01-05T12:00:00.5Z"
LOADED_NS = 4_000_000
RUNNER_KILLED = "llama runner process has terminated: signal: killed"
BUSY = "server busy, please try again.  maximum pending requests exceeded"


def ollama_at(transport: httpx.BaseTransport) -> OllamaBackend:
    return OllamaBackend(URL, transport=transport)


def line(body: dict[str, Any], text: str, *, done: bool) -> dict[str, Any]:
    """One Ollama answer object for ``body``'s kind (chat or generate) carrying ``text``."""
    if "messages" in body:
        field: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
    else:
        field = {"response": text}
    return {"model": body["model"], "created_at": CREATED_AT, **field, "done": done}


def ollama(sent: Sent, *, load_ns: int = LOADED_NS) -> httpx.Response:
    """What Ollama answers a chat or generate request: a canned answer, one token per
    NDJSON line then the final line with the metrics (one object when ``stream`` is
    false), cut at ``num_predict`` with done_reason "length"; an empty request loads or
    (keep_alive 0) unloads; an unknown model is Ollama's 404."""
    body = sent.body
    if body["model"] not in KNOWN:
        return json_answer(
            {"error": f'model "{body["model"]}" not found, try pulling it first'}, 404
        )
    if not body.get("messages") and not body.get("prompt"):
        reason = "unload" if body.get("keep_alive") == 0 else "load"
        return json_answer({**line(body, "", done=True), "done_reason": reason})
    words = CHAT_ANSWER if "messages" in body else GENERATE_ANSWER
    limit = (body.get("options") or {}).get("num_predict")
    tokens = words[:limit] if limit else words
    streams = body.get("stream", True)
    final = {
        **line(body, "" if streams else "".join(tokens), done=True),
        "done_reason": "length" if limit is not None and limit <= len(words) else "stop",
        "total_duration": 9_000_000 + load_ns,
        "load_duration": load_ns,
        "prompt_eval_count": 11,
        "prompt_eval_duration": 1_000_000,
        "eval_count": len(tokens),
        "eval_duration": 3_000_000,
    }
    if not streams:
        return json_answer(final)
    return ndjson_answer([*(line(body, token, done=False) for token in tokens), final])


def answers_in_turn(*answers: httpx.Response) -> Callable[[Sent], httpx.Response]:
    """An answer function giving ``answers`` one per request, then what Ollama answers."""
    queued = iter(answers)

    def answer(sent: Sent) -> httpx.Response:
        queued_answer = next(queued, None)
        return ollama(sent) if queued_answer is None else queued_answer

    return answer


# -------------------------------------------------------------------- fixtures


@pytest.fixture
def wire() -> Iterator[tuple[OllamaBackend, Wire]]:
    with on_wire(ollama_at, ollama) as wired:
        yield wired


@pytest.fixture
def server() -> Iterator[SimulatedOllama]:
    with SimulatedOllama(CATALOG) as sim:
        yield sim


@pytest.fixture
def backend(server: SimulatedOllama) -> Iterator[OllamaBackend]:
    ollama = OllamaBackend(server.url, timeout=5.0)
    yield ollama
    ollama.close()


@pytest.fixture
def paused(manual_clock: ManualClock) -> Iterator[SimulatedOllama]:
    """A simulated server on a manual clock the test never advances: a load or a stall
    lasts until the call is cancelled or times out."""
    with SimulatedOllama(PAUSED_CATALOG, clock=manual_clock) as sim:
        yield sim


@pytest.fixture
def paused_backend(paused: SimulatedOllama) -> Iterator[OllamaBackend]:
    """A backend whose time-out is far longer than cancel_while's hang guard, so that only
    the cancel can end a call the paused server holds."""
    ollama = OllamaBackend(paused.url, timeout=PATIENT)
    yield ollama
    ollama.close()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The addresses of the TCP connections opened from now on (one entry per connection)."""
    addresses: list[object] = []
    connect = socket.create_connection

    def counting(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        addresses.append(address)
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    return addresses


def chat(model: str = "tiny", **fields: Any) -> BackendRequest:
    return BackendRequest(kind=JobKind.CHAT, model=model, messages=QUESTION, **fields)


def generate(prompt: str = "The GPU slot said", **fields: Any) -> BackendRequest:
    return BackendRequest(kind=JobKind.GENERATE, model="tiny", prompt=prompt, **fields)


def slow_load_started(server: SimulatedOllama) -> Callable[[], object]:
    """Waits until ``server`` is loading "slow-load" (so the call is waiting on it)."""
    return lambda: server.wait_for(lambda s: s.loading == ("slow-load:latest",))


# ----------------------------------------------------------------------- calls


def test_the_ollama_backend_is_a_backend(wire: tuple[OllamaBackend, Wire]) -> None:
    backend, _ = wire
    assert isinstance(backend, Backend) and backend.name == "ollama"


def test_a_chat_streams_each_token_and_returns_the_whole_new_text(
    wire: tuple[OllamaBackend, Wire],
) -> None:
    backend, sent = wire
    text, chunks = run(backend, chat())
    assert chunks == list(CHAT_ANSWER) and "".join(chunks) == text  # leading spaces kept
    assert sent.last.path == "/api/chat" and sent.last.body["stream"] is True
    assert run(backend, chat()) == (text, chunks)


def test_a_generate_streams_each_token_and_returns_the_whole_new_text(
    wire: tuple[OllamaBackend, Wire],
) -> None:
    backend, sent = wire
    text, chunks = run(backend, generate())
    assert chunks == list(GENERATE_ANSWER) and "".join(chunks) == text
    assert sent.last.path == "/api/generate" and text != run(backend, chat())[0]


def test_a_call_without_streaming_delivers_the_text_in_one_piece(
    wire: tuple[OllamaBackend, Wire],
) -> None:
    backend, sent = wire
    streamed, _ = run(backend, chat())
    text, chunks = run(backend, chat(stream=False))
    assert text == streamed and chunks == [streamed] and sent.last.body["stream"] is False


def test_metrics_and_done_reason_come_from_the_final_line() -> None:
    loads = iter([LOADED_NS, 0])  # the first call loads the model, the second finds it
    with on_wire(ollama_at, lambda sent: ollama(sent, load_ns=next(loads))) as (backend, _):
        result = backend.complete(chat(), lambda _: None, CancelToken())
        again = backend.complete(chat(), lambda _: None, CancelToken())
    assert result.done_reason == "stop"
    assert result.metrics == JobMetrics(
        load_duration_ns=LOADED_NS,
        prompt_eval_count=11,
        prompt_eval_duration_ns=1_000_000,
        eval_count=len(CHAT_ANSWER),
        eval_duration_ns=3_000_000,
        total_duration_ns=9_000_000 + LOADED_NS,
    )
    assert result.metrics.eval_count == len(result.text.split())
    assert again.metrics.load_duration_ns == 0


def test_max_tokens_becomes_num_predict(wire: tuple[OllamaBackend, Wire]) -> None:
    backend, sent = wire
    result = backend.complete(chat("endless", max_tokens=6), lambda _: None, CancelToken())
    assert sent.last.body["options"] == {"num_predict": 6}
    assert result.done_reason == "length" and result.metrics.eval_count == 6
    assert len(result.text.split()) == 6


def test_the_request_carries_system_format_keep_alive_options_and_the_resume_prefill(
    wire: tuple[OllamaBackend, Wire],
) -> None:
    backend, sent = wire
    request = BackendRequest(
        kind=JobKind.CHAT,
        model="tiny",
        messages=QUESTION,
        system="Be brief.",
        options={"num_ctx": 8192},
        format="json",
        max_tokens=50,
        keep_alive="10m",
        resume_prefix="It takes",
    )
    backend.complete(request, lambda _: None, CancelToken())
    prefilled = BackendRequest(
        kind=JobKind.CHAT,
        model="tiny",
        messages=(*QUESTION, ChatMessage("assistant", "Well,")),
        resume_prefix=" it",
    )
    backend.complete(prefilled, lambda _: None, CancelToken())
    assert (sent.sent[0].path, sent.sent[0].body) == (
        "/api/chat",
        {
            "model": "tiny",
            "stream": True,
            "options": {"num_ctx": 8192, "num_predict": 50},
            "format": "json",
            "keep_alive": "10m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": QUESTION[0].content},
                {"role": "assistant", "content": "It takes"},
            ],
        },
    )
    assert sent.sent[1].body["messages"][-1] == {"role": "assistant", "content": "Well, it"}


# -------------------------------------------------------------------- failures


def test_an_unknown_model_is_a_permanent_error_with_ollama_message(
    wire: tuple[OllamaBackend, Wire],
) -> None:
    backend, _ = wire
    error, _ = failure(backend, chat("ghost"))
    assert not error.transient and error.status == 404
    assert error.message == 'model "ghost" not found, try pulling it first'


def test_a_bad_request_is_a_permanent_error() -> None:
    answer = answers_in_turn(
        json_answer({"error": '"embedder" does not support chat'}, 400),
        json_answer({"error": 'time: invalid duration "soon"'}, 400),
    )
    with on_wire(ollama_at, answer) as (backend, sent):
        error, _ = failure(backend, chat("embedder"))
        assert (error.transient, error.status) == (False, 400)
        assert error.message == '"embedder" does not support chat'
        error, _ = failure(backend, chat(keep_alive="soon"))
    assert (error.transient, error.status) == (False, 400) and "invalid duration" in str(error)
    assert sent.last.body["keep_alive"] == "soon"


def test_a_server_error_is_transient() -> None:
    killed = answers_in_turn(json_answer({"error": RUNNER_KILLED}, 500))
    with on_wire(ollama_at, killed) as (backend, _):
        error, chunks = failure(backend, chat())
    assert (error.transient, error.status, chunks) == (True, 500, [])
    assert error.message == RUNNER_KILLED


def test_a_busy_server_is_transient_and_the_next_call_succeeds() -> None:
    with on_wire(ollama_at, answers_in_turn(json_answer({"error": BUSY}, 503))) as (backend, _):
        error, _ = failure(backend, generate())
        assert (error.transient, error.status) == (True, 503)
        assert error.message.startswith("server busy, please try again")
        assert run(backend, generate())[0]


def test_a_refused_connection_is_transient(backend: OllamaBackend, server: SimulatedOllama) -> None:
    server.refuse_connections()
    error, _ = failure(backend, chat())
    assert error.transient and error.status is None
    assert "cannot connect to Ollama" in error.message and "refused" in error.message
    with pytest.raises(BackendError) as down:
        backend.loaded_models()
    assert down.value.transient
    server.accept_connections()
    assert run(backend, chat())[0]


def test_a_stream_cut_mid_way_is_a_transient_error(
    backend: OllamaBackend, server: SimulatedOllama
) -> None:
    server.inject(FaultKind.CUT_STREAM, after_chunks=3)
    error, chunks = failure(backend, chat("endless"))
    assert error.transient and error.status is None and len(chunks) == 3
    assert "cut the response" in error.message


def test_an_error_line_after_output_began_is_transient_and_keeps_the_message() -> None:
    def two_lines_then_an_error(sent: Sent) -> httpx.Response:
        words = [line(sent.body, word, done=False) for word in CHAT_ANSWER[:2]]
        return ndjson_answer([*words, {"error": "CUDA error: out of memory"}])

    with on_wire(ollama_at, two_lines_then_an_error) as (backend, _):
        error, chunks = failure(backend, chat("endless"))
    assert error.transient and error.message == "CUDA error: out of memory" and len(chunks) == 2


def test_a_stream_that_ends_without_its_final_line_is_transient() -> None:
    half = ndjson_answer([{"model": "tiny", "response": " half", "done": False}])
    with on_wire(ollama_at, lambda _: half) as (backend, _):
        error, chunks = failure(backend, generate())
    assert error.transient and chunks == [" half"] and "without its final line" in error.message


def test_metrics_a_server_cannot_mean_are_read_as_zero() -> None:
    final = {
        "model": "tiny", "response": "ok", "done": True, "eval_count": 2**70,
        "eval_duration": -5, "prompt_eval_count": 3.5, "load_duration": True,
        "total_duration": 2**63 - 1,
    }  # fmt: skip
    with on_wire(ollama_at, lambda _: ndjson_answer([final])) as (backend, _):
        result = backend.complete(generate(), lambda _: None, CancelToken())
    metrics = result.metrics
    assert (metrics.eval_count, metrics.eval_duration_ns) == (0, 0)
    assert (metrics.prompt_eval_count, metrics.load_duration_ns) == (0, 0)
    assert metrics.total_duration_ns == 2**63 - 1


def test_a_slow_read_times_out_as_a_transient_error(paused: SimulatedOllama) -> None:
    # The stall never ends on the paused server's clock: only the read time-out (real
    # time, as httpx measures it) can end the call.
    paused.inject(FaultKind.STALL_STREAM, after_chunks=2, delay=10.0)
    impatient = OllamaBackend(paused.url, timeout=httpx.Timeout(5.0, read=0.1))
    error, chunks = failure(impatient, chat("endless"))
    impatient.close()
    assert error.transient and "timed out" in error.message and len(chunks) == 2


def test_a_slow_answer_to_a_plain_request_times_out_as_a_transient_error(
    paused: SimulatedOllama,
) -> None:
    # As above: the delay never passes, so the time-out is what ends the call.
    paused.inject(FaultKind.SLOW_RESPONSE, path="/api/ps", delay=10.0)
    impatient = OllamaBackend(paused.url, timeout=0.1)
    with pytest.raises(BackendError) as caught:
        impatient.loaded_models()
    impatient.close()
    assert caught.value.transient and "timed out" in caught.value.message


# ---------------------------------------------------------------- cancellation


def test_cancelling_mid_stream_closes_the_connection_and_the_server_stops_generating(
    backend: OllamaBackend, server: SimulatedOllama
) -> None:
    token, seen, sink = cancel_after(5)
    with pytest.raises(CallCancelledError):
        backend.complete(chat("endless"), sink, token)
    assert len(seen) == 5
    # Once no call is active the generation has ended, so its token count is final.
    stats = server.wait_for(lambda s: s.calls_disconnected == 1 and s.active_calls == 0)
    assert server.stats().tokens_generated == stats.tokens_generated <= 7
    assert stats.calls_finished == 0


def test_cancelling_from_another_thread_while_the_model_loads_ends_the_call(
    paused_backend: OllamaBackend, paused: SimulatedOllama
) -> None:
    # No response headers came yet, and the load never ends on the paused clock.
    cancel_while(paused_backend, chat("slow-load"), slow_load_started(paused))
    assert paused.stats().calls_finished == 0


def test_a_call_cancelled_before_it_starts_never_reaches_the_server(
    backend: OllamaBackend, server: SimulatedOllama
) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(CallCancelledError):
        backend.complete(chat(), lambda _: None, token)
    with pytest.raises(CallCancelledError):
        backend.embed("embedder", ("x",), {}, token)
    assert server.stats().requests == 0


def test_calls_one_after_another_reuse_one_keep_alive_connection(
    backend: OllamaBackend, opened: list[object]
) -> None:
    for _ in range(3):
        run(backend, chat())
    run(backend, generate())
    backend.loaded_models()
    assert len(opened) == 1


def test_a_connection_cancelled_mid_stream_is_dropped_and_the_next_call_gets_a_new_one(
    backend: OllamaBackend, server: SimulatedOllama, opened: list[object]
) -> None:
    text, _ = run(backend, chat())
    token, seen, sink = cancel_after(5)
    with pytest.raises(CallCancelledError):
        backend.complete(chat("endless"), sink, token)
    assert len(seen) == 5
    assert len(opened) == 1  # the cancelled call ran on the pooled connection
    server.wait_for(lambda s: s.calls_disconnected == 1, timeout=2.0)
    assert run(backend, chat())[0] == text
    assert len(opened) == 2  # the dropped connection was not reused


def test_cancelling_while_the_model_loads_drops_a_reused_connection(
    paused_backend: OllamaBackend, paused: SimulatedOllama, opened: list[object]
) -> None:
    run(paused_backend, chat())
    # No response headers came yet on the reused connection.
    cancel_while(paused_backend, chat("slow-load"), slow_load_started(paused))
    assert len(opened) == 1
    paused_backend.loaded_models()  # the next call answers, on a new connection
    assert len(opened) == 2


def test_a_client_whose_pools_cannot_be_wrapped_opens_one_connection_per_call_and_still_cancels(
    paused: SimulatedOllama, opened: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "_bind_sockets", lambda client: False)
    backend = OllamaBackend(paused.url, timeout=PATIENT)
    run(backend, chat())
    run(backend, chat())
    assert len(opened) == 2
    cancel_while(backend, chat("slow-load"), slow_load_started(paused))
    backend.close()


def test_a_cancel_after_the_call_ended_changes_nothing(backend: OllamaBackend) -> None:
    token = CancelToken()
    text, _ = run(backend, chat(), token)
    token.cancel()
    assert run(backend, chat())[0] == text


# ---------------------------------------------------------------------- resume


@pytest.mark.parametrize("make", [chat, generate], ids=["chat", "generate"])
def test_an_interrupted_then_resumed_call_equals_the_uninterrupted_one(
    backend: OllamaBackend, make: Callable[..., BackendRequest]
) -> None:
    full_text, full_chunks = run(backend, make())
    assert len(full_chunks) >= 4
    for k in (1, 2, len(full_chunks) - 1):
        token, first, sink = cancel_after(k)
        with pytest.raises(CallCancelledError):
            backend.complete(make(), sink, token)
        prefix = "".join(first)
        rest_text, rest = run(backend, make(resume_prefix=prefix))
        assert first + rest == full_chunks, f"interrupted after {k} chunks"
        assert prefix + rest_text == full_text


# ------------------------------------------------------------- embed, residency


def test_embed_returns_one_unit_vector_per_input_in_order() -> None:
    def embeds(sent: Sent) -> httpx.Response:
        inputs = sent.body["input"]
        vectors = [embedding(sent.body["model"], text, 8) for text in inputs]
        return json_answer(
            {"model": sent.body["model"], "embeddings": vectors, "total_duration": 1_000,
             "load_duration": 0, "prompt_eval_count": len(inputs)}
        )  # fmt: skip

    with on_wire(ollama_at, embeds) as (backend, sent):
        result = backend.embed("embedder", ("first", "second"), {}, CancelToken())
        assert sent.last.path == "/api/embed"
        assert sent.last.body == {"model": "embedder", "input": ["first", "second"]}
        (second,) = backend.embed("embedder", ("second",), {}, CancelToken()).embeddings
    assert result.model == "embedder" and len(result.embeddings) == 2
    assert all(len(v) == 8 and abs(sum(x * x for x in v) - 1) < 1e-9 for v in result.embeddings)
    assert result.embeddings[1] == second and result.metrics.prompt_eval_count == 2


def test_loaded_models_reads_ps_with_expiry_in_epoch_seconds() -> None:
    tiny = {
        "name": "tiny:latest", "model": "tiny:latest", "size": 1_000_000, "digest": "d" * 64,
        "details": {"family": "llama"}, "expires_at": "2026-01-05T12:10:00Z",
        "size_vram": 1_000_000, "context_length": 4096,
    }  # fmt: skip
    forever = {**tiny, "expires_at": "2318-04-23T12:00:00.123456789Z"}
    listings = iter([[], [tiny], [forever]])

    def ps(sent: Sent) -> httpx.Response:
        if sent.path == "/api/ps":
            return json_answer({"models": next(listings)})
        return ollama(sent)

    with on_wire(ollama_at, ps) as (backend, _):
        assert backend.loaded_models() == ()
        backend.load("tiny", keep_alive="10m")
        (model,) = backend.loaded_models()
        backend.load("tiny", keep_alive=-1)
        assert backend.loaded_models()[0].expires_at is None  # "forever"
    assert model.name == "tiny:latest" and model.size_bytes == model.size_vram_bytes == 1_000_000
    assert model.context_length == 4096
    assert model.expires_at == datetime(2026, 1, 5, 12, 10, tzinfo=UTC).timestamp()


def test_load_and_unload_send_empty_requests_with_keep_alive(
    wire: tuple[OllamaBackend, Wire],
) -> None:
    backend, sent = wire
    backend.load("tiny")
    # No prompt and no messages: Ollama loads the model and generates nothing.
    assert (sent.last.path, sent.last.body) == ("/api/generate", {"model": "tiny", "stream": False})
    backend.unload("tiny")
    assert (sent.last.path, sent.last.body) == ("/api/generate", {"model": "tiny", "keep_alive": 0})
    with pytest.raises(BackendError) as missing:
        backend.load("ghost")
    assert missing.value.status == 404 and not missing.value.transient


def test_keep_alive_zero_on_a_call_asks_ollama_to_unload_the_model_after_it(
    wire: tuple[OllamaBackend, Wire],
) -> None:
    backend, sent = wire
    assert run(backend, chat(keep_alive=0))[0]
    assert sent.last.body["keep_alive"] == 0
