"""The Ollama backend against the simulated Ollama server, over real HTTP.

Every call, stream and failure class; cancellation that really drops the connection;
resume that neither repeats nor loses a token. A few request-shape checks use
httpx.MockTransport, the seam the backend takes for that.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from backend_kit import cancel_after, failure, run, seconds_until_cancelled

from actors.backends import http
from actors.backends.base import Backend, CallCancelledError, CancelToken
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import FaultKind, ModelProfile, SimulatedOllama
from protocol import BackendError, BackendRequest, ChatMessage, JobKind

TINY = ModelProfile(
    load_seconds=0.01,
    first_token_seconds=0.001,
    tokens_per_second=5000.0,
    mean_answer_tokens=20,
    max_answer_tokens=300,
    size_bytes=1_000_000,
    embedding_dimensions=16,
)
# Practically never ends on its own: runs until num_predict or the client leaves.
ENDLESS = ModelProfile(
    load_seconds=0.0, first_token_seconds=0.0, tokens_per_second=200.0,
    mean_answer_tokens=1_000_000, max_answer_tokens=2000,
)  # fmt: skip
SLOW_LOAD = ModelProfile(load_seconds=3.0, first_token_seconds=0.0)
EMBEDDER = ModelProfile(
    load_seconds=0.0, first_token_seconds=0.0, embedding_dimensions=8, embedding_only=True
)
CATALOG = {"tiny": TINY, "endless": ENDLESS, "slow-load": SLOW_LOAD, "embedder": EMBEDDER}
QUESTION = (ChatMessage("user", "How does the arbiter pick the next job?"),)


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


# ----------------------------------------------------------------------- calls


def test_the_ollama_backend_is_a_backend(backend: OllamaBackend) -> None:
    assert isinstance(backend, Backend) and backend.name == "ollama"


def test_a_chat_streams_each_token_and_returns_the_whole_new_text(
    backend: OllamaBackend,
) -> None:
    text, chunks = run(backend, chat())
    assert len(chunks) >= 3 and "".join(chunks) == text
    assert not chunks[0].startswith(" ") and all(c.startswith(" ") for c in chunks[1:])
    assert run(backend, chat()) == (text, chunks)  # deterministic


def test_a_generate_streams_each_token_and_returns_the_whole_new_text(
    backend: OllamaBackend,
) -> None:
    text, chunks = run(backend, generate())
    assert len(chunks) >= 3 and "".join(chunks) == text and text != run(backend, chat())[0]


def test_a_call_without_streaming_delivers_the_text_in_one_piece(
    backend: OllamaBackend,
) -> None:
    streamed, _ = run(backend, chat())
    text, chunks = run(backend, chat(stream=False))
    assert text == streamed and chunks == [streamed]


def test_metrics_and_done_reason_come_from_the_final_line(backend: OllamaBackend) -> None:
    result = backend.complete(chat(), lambda _: None, CancelToken())
    metrics = result.metrics
    assert result.done_reason == "stop"
    assert metrics.eval_count == len(result.text.split())
    assert metrics.prompt_eval_count == len(QUESTION[0].content.split()) + 2  # + role markers
    assert metrics.load_duration_ns > 0  # the first call loads the model
    assert metrics.prompt_eval_duration_ns > 0 and metrics.eval_duration_ns > 0
    assert metrics.total_duration_ns >= metrics.load_duration_ns + metrics.eval_duration_ns
    again = backend.complete(chat(), lambda _: None, CancelToken())
    assert again.metrics.load_duration_ns == 0


def test_max_tokens_becomes_num_predict(backend: OllamaBackend) -> None:
    result = backend.complete(chat("endless", max_tokens=6), lambda _: None, CancelToken())
    assert result.done_reason == "length" and result.metrics.eval_count == 6
    assert len(result.text.split()) == 6


def test_the_request_carries_system_format_keep_alive_options_and_the_resume_prefill() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def ollama(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, json.loads(request.content)))
        final = {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True}
        return httpx.Response(200, content=json.dumps(final) + "\n")

    backend = OllamaBackend("http://ollama.test", transport=httpx.MockTransport(ollama))
    request = BackendRequest(
        kind=JobKind.CHAT,
        model="m",
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
        model="m",
        messages=(*QUESTION, ChatMessage("assistant", "Well,")),
        resume_prefix=" it",
    )
    backend.complete(prefilled, lambda _: None, CancelToken())
    backend.close()
    assert sent[0] == (
        "/api/chat",
        {
            "model": "m",
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
    assert sent[1][1]["messages"][-1] == {"role": "assistant", "content": "Well, it"}


# -------------------------------------------------------------------- failures


def test_an_unknown_model_is_a_permanent_error_with_ollama_message(
    backend: OllamaBackend,
) -> None:
    error, _ = failure(backend, chat("ghost"))
    assert not error.transient and error.status == 404
    assert error.message == 'model "ghost" not found, try pulling it first'


def test_a_bad_request_is_a_permanent_error(backend: OllamaBackend) -> None:
    error, _ = failure(backend, chat("embedder"))
    assert (error.transient, error.status) == (False, 400)
    assert error.message == '"embedder" does not support chat'
    error, _ = failure(backend, chat(keep_alive="soon"))
    assert (error.transient, error.status) == (False, 400) and "invalid duration" in str(error)


def test_a_server_error_is_transient(backend: OllamaBackend, server: SimulatedOllama) -> None:
    server.inject(FaultKind.SERVER_ERROR)
    error, chunks = failure(backend, chat())
    assert (error.transient, error.status, chunks) == (True, 500, [])
    assert error.message == "llama runner process has terminated: signal: killed"


def test_a_busy_server_is_transient_and_the_next_call_succeeds(
    backend: OllamaBackend, server: SimulatedOllama
) -> None:
    server.inject(FaultKind.BUSY, path="/api/generate")
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


def test_an_error_line_after_output_began_is_transient_and_keeps_the_message(
    backend: OllamaBackend, server: SimulatedOllama
) -> None:
    server.inject(FaultKind.ERROR_LINE, after_chunks=2, message="CUDA error: out of memory")
    error, chunks = failure(backend, chat("endless"))
    assert error.transient and error.message == "CUDA error: out of memory" and len(chunks) == 2


def test_a_stream_that_ends_without_its_final_line_is_transient() -> None:
    def ollama(request: httpx.Request) -> httpx.Response:
        line = {"model": "m", "response": " half", "done": False}
        return httpx.Response(200, content=json.dumps(line) + "\n")

    backend = OllamaBackend("http://ollama.test", transport=httpx.MockTransport(ollama))
    error, chunks = failure(backend, generate())
    backend.close()
    assert error.transient and chunks == [" half"] and "without its final line" in error.message


def test_metrics_a_server_cannot_mean_are_read_as_zero() -> None:
    def ollama(request: httpx.Request) -> httpx.Response:
        final = {
            "model": "m", "response": "ok", "done": True, "eval_count": 2**70,
            "eval_duration": -5, "prompt_eval_count": 3.5, "load_duration": True,
            "total_duration": 2**63 - 1,
        }  # fmt: skip
        return httpx.Response(200, content=json.dumps(final) + "\n")

    backend = OllamaBackend("http://ollama.test", transport=httpx.MockTransport(ollama))
    result = backend.complete(generate(), lambda _: None, CancelToken())
    backend.close()
    metrics = result.metrics
    assert (metrics.eval_count, metrics.eval_duration_ns) == (0, 0)
    assert (metrics.prompt_eval_count, metrics.load_duration_ns) == (0, 0)
    assert metrics.total_duration_ns == 2**63 - 1


def test_a_slow_read_times_out_as_a_transient_error(server: SimulatedOllama) -> None:
    server.inject(FaultKind.STALL_STREAM, after_chunks=2, delay=10.0)
    impatient = OllamaBackend(server.url, timeout=httpx.Timeout(5.0, read=0.1))
    began = time.monotonic()
    error, chunks = failure(impatient, chat("endless"))
    impatient.close()
    assert error.transient and "timed out" in error.message and len(chunks) == 2
    assert time.monotonic() - began < 2.0


def test_a_slow_answer_to_a_plain_request_times_out_as_a_transient_error(
    server: SimulatedOllama,
) -> None:
    server.inject(FaultKind.SLOW_RESPONSE, path="/api/ps", delay=10.0)
    impatient = OllamaBackend(server.url, timeout=0.1)
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
    stats = server.wait_for(lambda s: s.calls_disconnected == 1, timeout=2.0)
    time.sleep(0.1)  # 20 more tokens at 200 tokens per second, had it kept going
    assert server.stats().tokens_generated == stats.tokens_generated <= 7
    assert stats.calls_finished == 0 and stats.active_calls == 0


def test_cancelling_from_another_thread_while_the_model_loads_returns_at_once(
    backend: OllamaBackend, server: SimulatedOllama
) -> None:
    elapsed = seconds_until_cancelled(backend, chat("slow-load"))
    assert 0.05 <= elapsed < 0.5  # the load takes 3 s; no response headers came yet
    assert server.stats().calls_finished == 0


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


def test_cancelling_while_the_model_loads_drops_a_reused_connection_at_once(
    backend: OllamaBackend, server: SimulatedOllama, opened: list[object]
) -> None:
    run(backend, chat())
    elapsed = seconds_until_cancelled(backend, chat("slow-load"))
    assert 0.05 <= elapsed < 0.5  # no response headers came yet on the reused connection
    assert len(opened) == 1
    backend.loaded_models()  # the next call answers, on a new connection
    assert len(opened) == 2


def test_a_client_whose_pools_cannot_be_wrapped_opens_one_connection_per_call_and_still_cancels(
    server: SimulatedOllama, opened: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "_bind_sockets", lambda client: False)
    backend = OllamaBackend(server.url, timeout=5.0)
    run(backend, chat())
    run(backend, chat())
    assert len(opened) == 2
    elapsed = seconds_until_cancelled(backend, chat("slow-load"))
    backend.close()
    assert elapsed < 0.5


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


def test_embed_returns_one_unit_vector_per_input_in_order(backend: OllamaBackend) -> None:
    result = backend.embed("embedder", ("first", "second"), {}, CancelToken())
    assert result.model == "embedder" and len(result.embeddings) == 2
    assert all(len(v) == 8 and abs(sum(x * x for x in v) - 1) < 1e-9 for v in result.embeddings)
    (second,) = backend.embed("embedder", ("second",), {}, CancelToken()).embeddings
    assert result.embeddings[1] == second and result.metrics.prompt_eval_count == 2


def test_loaded_models_reads_ps_with_expiry_in_epoch_seconds(backend: OllamaBackend) -> None:
    assert backend.loaded_models() == ()
    before = time.time()
    backend.load("tiny", keep_alive="10m")
    (model,) = backend.loaded_models()
    assert model.name == "tiny:latest" and model.size_bytes == model.size_vram_bytes == 1_000_000
    assert model.context_length == 4096
    assert model.expires_at is not None and before + 599 <= model.expires_at <= time.time() + 601
    backend.load("tiny", keep_alive=-1)
    assert backend.loaded_models()[0].expires_at is None  # "forever"


def test_load_and_unload_use_empty_requests_with_keep_alive(
    backend: OllamaBackend, server: SimulatedOllama
) -> None:
    backend.load("tiny")
    assert server.stats().loaded == ("tiny:latest",) and server.stats().calls_started == 0
    backend.unload("tiny")
    assert server.stats().loaded == () and server.stats().unloads == 1
    with pytest.raises(BackendError) as missing:
        backend.load("ghost")
    assert missing.value.status == 404 and not missing.value.transient


def test_keep_alive_zero_on_a_call_unloads_the_model_after_it(
    backend: OllamaBackend, server: SimulatedOllama
) -> None:
    run(backend, chat(keep_alive=0))
    assert backend.loaded_models() == () and server.stats().unloads == 1
