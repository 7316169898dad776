"""The OpenAI-compatible backend against a fake vLLM/llama.cpp server, over real HTTP.

Every call, stream and failure class; cancellation that drops the connection and stops
the server; each resume mode. The official ``openai`` client checks the fake itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from backend_kit import cancel_after, failure, run, seconds_until_cancelled
from fake_http import Fault
from fake_openai import FakeOpenAI

from actors import BackendSettings, Config, GpuLane, SystemClock
from actors.backends.base import Backend, CallCancelledError, CancelToken
from actors.backends.openai_compat import OpenAICompatBackend, ResumeMode
from protocol import BackendError, BackendRequest, ChatMessage, JobKind, JobSpec, StoreSettings

QUESTION = (ChatMessage("user", "How does the arbiter pick the next job?"),)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(("tiny", "embedder")) as fake:
        yield fake


@pytest.fixture
def backend(server: FakeOpenAI) -> Iterator[OpenAICompatBackend]:
    client = OpenAICompatBackend(server.url, timeout=5.0)
    yield client
    client.close()


def chat(model: str = "tiny", **fields: Any) -> BackendRequest:
    return BackendRequest(kind=JobKind.CHAT, model=model, messages=QUESTION, **fields)


def generate(prompt: str = "The GPU slot said", **fields: Any) -> BackendRequest:
    return BackendRequest(kind=JobKind.GENERATE, model="tiny", prompt=prompt, **fields)


# ---------------------------------------------------------------- the fake itself


def test_the_official_openai_client_reads_the_fake_server(server: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    whole = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}]
    )
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        if c.choices
    ]
    assert whole.choices[0].message.content == "".join(pieces) != ""
    assert whole.usage is not None and whole.usage.completion_tokens == len(
        [p for p in pieces if p]
    )
    text = client.completions.create(model="tiny", prompt="The GPU")
    assert text.choices[0].text and text.choices[0].finish_reason == "stop"
    vectors = client.embeddings.create(model="embedder", input=["a", "b"])
    assert [d.index for d in vectors.data] == [0, 1] and len(vectors.data[0].embedding) == 16
    assert [m.id for m in client.models.list()] == ["tiny", "embedder"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}])
    client.close()


# ----------------------------------------------------------------------- calls


def test_the_openai_backend_is_a_backend(backend: OpenAICompatBackend) -> None:
    assert isinstance(backend, Backend) and backend.name == "openai"


def test_a_chat_streams_each_token_over_sse_and_returns_the_whole_text(
    backend: OpenAICompatBackend, server: FakeOpenAI
) -> None:
    text, chunks = run(backend, chat())
    assert len(chunks) >= 3 and "".join(chunks) == text
    path, body, _ = server.requests[-1]
    assert path == "/v1/chat/completions" and body["stream_options"] == {"include_usage": True}
    assert run(backend, chat()) == (text, chunks)


def test_a_generate_goes_to_the_completions_endpoint_with_the_raw_prompt(
    backend: OpenAICompatBackend, server: FakeOpenAI
) -> None:
    text, chunks = run(backend, generate(system="Be brief."))
    assert len(chunks) >= 3 and "".join(chunks) == text
    path, body, _ = server.requests[-1]
    assert path == "/v1/completions" and body["prompt"] == "Be brief.\n\nThe GPU slot said"


def test_a_call_without_streaming_delivers_the_text_in_one_piece(
    backend: OpenAICompatBackend,
) -> None:
    streamed, _ = run(backend, chat())
    assert run(backend, chat(stream=False)) == (streamed, [streamed])
    streamed, _ = run(backend, generate())
    assert run(backend, generate(stream=False)) == (streamed, [streamed])


def test_usage_becomes_the_job_metrics_and_the_finish_reason_the_done_reason(
    backend: OpenAICompatBackend,
) -> None:
    result = backend.complete(chat(), lambda _: None, CancelToken())
    assert result.done_reason == "stop"
    assert result.metrics.eval_count == len(result.text.split())
    assert result.metrics.prompt_eval_count == len(QUESTION[0].content.split()) + 2
    assert result.metrics.total_duration_ns > 0
    capped = backend.complete(chat(max_tokens=3), lambda _: None, CancelToken())
    assert capped.done_reason == "length" and capped.metrics.eval_count == 3


def test_options_format_and_api_key_map_onto_openai_fields(server: FakeOpenAI) -> None:
    keyed = OpenAICompatBackend(server.url + "/v1", api_key="sk-local")
    request = chat(
        system="Be brief.",
        options={"temperature": 0.0, "seed": 7, "num_ctx": 8192, "stop": ["\n"]},
        format={"type": "object"},
        max_tokens=50,
    )
    keyed.complete(request, lambda _: None, CancelToken())
    keyed.close()
    _, body, headers = server.requests[-1]
    assert headers["Authorization"] == "Bearer sk-local"
    assert (body["temperature"], body["seed"], body["stop"], body["max_tokens"]) == (
        0.0,
        7,
        ["\n"],
        50,
    )
    assert "num_ctx" not in body
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


# -------------------------------------------------------------------- failures


def test_an_unknown_model_is_a_permanent_error_with_the_server_message(
    backend: OpenAICompatBackend,
) -> None:
    error, _ = failure(backend, chat("ghost"))
    assert (error.transient, error.status) == (False, 404)
    assert error.message == "The model `ghost` does not exist."


@pytest.mark.parametrize(
    ("status", "transient"), [(400, False), (401, False), (429, True), (500, True), (503, True)]
)
def test_error_statuses_are_classified(
    backend: OpenAICompatBackend, server: FakeOpenAI, status: int, transient: bool
) -> None:
    server.inject(Fault("status", status=status, message=f"status {status} from the server"))
    error, chunks = failure(backend, chat())
    assert (error.transient, error.status, chunks) == (transient, status, [])
    assert error.message == f"status {status} from the server"


def test_a_refused_connection_is_transient() -> None:
    with FakeOpenAI() as fake:
        url = fake.url
    backend = OpenAICompatBackend(url)
    error, _ = failure(backend, chat())
    backend.close()
    assert error.transient and "cannot connect" in error.message


def test_a_stream_cut_mid_way_is_transient(
    backend: OpenAICompatBackend, server: FakeOpenAI
) -> None:
    server.inject(Fault("cut", after_chunks=3))
    error, chunks = failure(backend, chat())
    assert error.transient and len(chunks) == 3 and "cut the response" in error.message


def test_an_error_event_after_output_began_is_transient_with_its_message(
    backend: OpenAICompatBackend, server: FakeOpenAI
) -> None:
    server.inject(Fault("error_event", after_chunks=2, message="CUDA out of memory"))
    error, chunks = failure(backend, chat())
    assert error.transient and error.message == "CUDA out of memory" and len(chunks) == 2


def test_a_slow_read_times_out_as_a_transient_error(server: FakeOpenAI) -> None:
    server.inject(Fault("stall", after_chunks=2, delay=5.0))
    impatient = OpenAICompatBackend(server.url, timeout=0.2)
    error, chunks = failure(impatient, chat())
    impatient.close()
    assert error.transient and "timed out" in error.message and len(chunks) == 2


# ---------------------------------------------------------------- cancellation


def test_cancelling_mid_stream_closes_the_connection_and_the_server_stops(
    server: FakeOpenAI,
) -> None:
    server.mean_answer_tokens = 10**6
    server.token_seconds = 0.005
    backend = OpenAICompatBackend(server.url)
    token, seen, sink = cancel_after(4)
    with pytest.raises(CallCancelledError):
        backend.complete(chat(), sink, token)
    assert len(seen) == 4
    stats = server.wait_for(lambda s: s["calls_disconnected"] == 1, timeout=2.0)
    time.sleep(0.1)  # 20 more tokens, had it kept going
    assert server.stats()["tokens"] == stats["tokens"] <= 6
    assert stats["calls_finished"] == 0
    backend.close()


def test_cancelling_from_another_thread_before_any_output_returns_at_once(
    backend: OpenAICompatBackend, server: FakeOpenAI
) -> None:
    server.inject(Fault("stall", delay=5.0))
    assert seconds_until_cancelled(backend, chat()) < 1.0
    server.wait_for(lambda s: s["calls_disconnected"] == 1)


# ---------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("mode", "prefill", "make"),
    [
        ("prefill", True, chat),
        ("continue_final_message", True, chat),
        ("regenerate", False, chat),
        ("prefill", True, generate),
    ],
    ids=["chat-prefill", "chat-vllm", "chat-regenerate", "generate"],
)
def test_an_interrupted_then_resumed_call_equals_the_uninterrupted_one(
    mode: ResumeMode, prefill: bool, make: Callable[..., BackendRequest]
) -> None:
    with FakeOpenAI(prefill=prefill) as fake:
        backend = OpenAICompatBackend(fake.url, resume=mode)
        full_text, full_chunks = run(backend, make())
        for k in (1, len(full_chunks) - 1):
            token, first, sink = cancel_after(k)
            with pytest.raises(CallCancelledError):
                backend.complete(make(), sink, token)
            prefix = "".join(first)
            rest_text, rest = run(backend, make(resume_prefix=prefix))
            assert prefix + rest_text == full_text and "".join(first + rest) == full_text
        _, body, _ = fake.requests[-1]
        backend.close()
    if make is chat and mode != "regenerate":
        assert body["messages"][-1]["role"] == "assistant"
    assert body.get("continue_final_message", False) == (mode == "continue_final_message")


def test_without_prefill_support_a_prefilled_chat_would_start_a_new_answer() -> None:
    """Why ``regenerate`` exists: such a server answers the prefill as a finished turn."""
    with FakeOpenAI(prefill=False) as fake:
        backend = OpenAICompatBackend(fake.url, resume="prefill")
        full_text, _ = run(backend, chat())
        prefix = full_text.split(" ")[0]
        rest_text, _ = run(backend, chat(resume_prefix=prefix))
        backend.close()
    assert prefix + rest_text != full_text


# ------------------------------------------------------------- embed, models


def test_embed_returns_one_vector_per_input_in_order(backend: OpenAICompatBackend) -> None:
    result = backend.embed("embedder", ("first", "second"), {"dimensions": 8}, CancelToken())
    assert result.model == "embedder" and len(result.embeddings) == 2
    assert all(len(v) == 8 for v in result.embeddings)
    (second,) = backend.embed("embedder", ("second",), {"dimensions": 8}, CancelToken()).embeddings
    assert result.embeddings[1] == second and result.metrics.prompt_eval_count == 2


def test_loaded_models_lists_the_served_models_and_load_checks_one(
    backend: OpenAICompatBackend,
) -> None:
    models = backend.loaded_models()
    assert [(m.name, m.context_length) for m in models] == [("tiny", 4096), ("embedder", 4096)]
    backend.load("tiny")
    backend.unload("tiny")
    with pytest.raises(BackendError) as missing:
        backend.load("ghost")
    assert (missing.value.status, missing.value.transient) == (404, False)


def test_gpulane_drives_an_openai_server_named_in_its_config(
    server: FakeOpenAI, tmp_path: Path
) -> None:
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        backend=BackendSettings(kind="openai", url=server.url + "/v1", resume="regenerate"),
    )
    with GpuLane.start(config, clock=SystemClock()) as lane:
        answer = lane.submit(JobSpec.chat(model="tiny", messages=[QUESTION[0]])).result(5)
        vectors = lane.embed("embedder", ["a", "b"], caller="test").embeddings
    assert answer == run_direct(server) and len(vectors) == 2


def run_direct(server: FakeOpenAI) -> str:
    backend = OpenAICompatBackend(server.url)
    text, _ = run(backend, chat())
    backend.close()
    return text
