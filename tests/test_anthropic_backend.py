"""The Anthropic Messages API backend against a local fake of the API, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from backend_kit import failure, run
from fake_anthropic import FakeAnthropic
from fake_http import Fault

from actors.backends.anthropic import ANTHROPIC_VERSION, AnthropicBackend
from actors.backends.base import Backend, CallCancelledError, CancelToken
from protocol import BackendError, BackendRequest, ChatMessage, JobKind

QUESTION = (ChatMessage("user", "How does the arbiter pick the next job?"),)


@pytest.fixture
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def backend(server: FakeAnthropic) -> Iterator[AnthropicBackend]:
    client = AnthropicBackend("sk-ant-test", model="claude-test", base_url=server.url, timeout=5)
    yield client
    client.close()


def chat(**fields: Any) -> BackendRequest:
    return BackendRequest(kind=JobKind.CHAT, model="llama3.2", messages=QUESTION, **fields)


def test_the_anthropic_backend_is_a_backend(backend: AnthropicBackend) -> None:
    assert isinstance(backend, Backend) and backend.name == "anthropic"


def test_a_chat_streams_text_deltas_with_the_cloud_model_and_headers(
    backend: AnthropicBackend, server: FakeAnthropic
) -> None:
    result = backend.complete(
        chat(system="Be brief.", max_tokens=200), lambda _: None, CancelToken()
    )
    text, chunks = run(backend, chat(system="Be brief.", max_tokens=200))
    assert text == result.text and len(chunks) >= 3 and "".join(chunks) == text
    path, body, headers = server.requests[-1]
    assert path == "/v1/messages" and body["model"] == "claude-test" and body["stream"] is True
    assert body["system"] == "Be brief." and body["max_tokens"] == 200
    assert headers["x-api-key"] == "sk-ant-test"
    assert headers["anthropic-version"] == ANTHROPIC_VERSION
    assert result.done_reason == "stop" and result.metrics.eval_count == len(chunks)
    assert result.metrics.prompt_eval_count > 0


def test_a_call_without_streaming_and_a_generate_job(
    backend: AnthropicBackend, server: FakeAnthropic
) -> None:
    streamed, _ = run(backend, chat())
    assert run(backend, chat(stream=False)) == (streamed, [streamed])
    prompt = BackendRequest(kind=JobKind.GENERATE, model="m", prompt="Once upon a time")
    text, _ = run(backend, prompt)
    assert text and server.requests[-1][1]["messages"] == [
        {"role": "user", "content": "Once upon a time"}
    ]


def test_max_tokens_ends_with_length(backend: AnthropicBackend) -> None:
    result = backend.complete(chat(max_tokens=3), lambda _: None, CancelToken())
    assert result.done_reason == "length" and result.metrics.eval_count == 3


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (401, False), (404, False), (429, True), (500, True), (529, True)],
)
def test_error_statuses_are_classified_with_the_api_message(
    backend: AnthropicBackend, server: FakeAnthropic, status: int, transient: bool
) -> None:
    server.inject(Fault("status", status=status, message="Overloaded"))
    error, chunks = failure(backend, chat())
    assert (error.transient, error.status, chunks) == (transient, status, [])
    assert error.message.endswith(": Overloaded")


def test_a_wrong_api_key_is_a_permanent_authentication_error(server: FakeAnthropic) -> None:
    wrong = AnthropicBackend("sk-wrong", model="claude-test", base_url=server.url)
    error, _ = failure(wrong, chat())
    wrong.close()
    assert (error.transient, error.status) == (False, 401)
    assert error.message == "authentication_error: invalid x-api-key"


@pytest.mark.parametrize(
    ("error_type", "transient"), [("overloaded_error", True), ("invalid_request_error", False)]
)
def test_an_error_event_mid_stream_is_classified_by_its_type(
    backend: AnthropicBackend, server: FakeAnthropic, error_type: str, transient: bool
) -> None:
    server.inject(Fault("error_event", after_chunks=2, error_type=error_type, message="stop"))
    error, chunks = failure(backend, chat())
    assert (error.transient, error.message, len(chunks)) == (transient, "stop", 2)


def test_a_stream_cut_before_message_stop_is_transient(
    backend: AnthropicBackend, server: FakeAnthropic
) -> None:
    server.inject(Fault("cut", after_chunks=3))
    error, chunks = failure(backend, chat())
    assert error.transient and len(chunks) == 3


def test_a_refused_connection_is_transient() -> None:
    with FakeAnthropic() as fake:
        url = fake.url
    gone = AnthropicBackend("k", model="m", base_url=url)
    error, _ = failure(gone, chat())
    gone.close()
    assert error.transient and "cannot connect to the Anthropic API" in error.message


def test_cancelling_mid_stream_closes_the_connection_and_the_fake_stops(
    server: FakeAnthropic,
) -> None:
    server.mean_answer_tokens, server.token_seconds = 10**6, 0.005
    backend = AnthropicBackend("sk-ant-test", model="claude-test", base_url=server.url)
    token, seen = CancelToken(), []

    def sink(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 4:
            token.cancel()

    with pytest.raises(CallCancelledError):
        backend.complete(chat(), sink, token)
    backend.close()
    stats = server.wait_for(lambda s: s["calls_disconnected"] == 1)
    time.sleep(0.1)
    assert server.stats()["tokens"] == stats["tokens"] <= 6 and len(seen) == 4


def test_a_resumed_call_continues_the_prefill_even_when_it_ends_in_a_space(
    backend: AnthropicBackend, server: FakeAnthropic
) -> None:
    full, chunks = run(backend, chat())
    for k in (1, 3):
        prefix = "".join(chunks[:k]) + " "  # a cut after a space: the API refuses that prefill
        rest, _ = run(backend, chat(resume_prefix=prefix))
        assert prefix + rest == full
        assert server.requests[-1][1]["messages"][-1] == {
            "role": "assistant",
            "content": prefix.rstrip(),
        }


def test_models_are_listed_embeddings_refused_and_residency_is_a_no_op(
    backend: AnthropicBackend,
) -> None:
    assert [m.name for m in backend.loaded_models()] == ["claude-test"]
    backend.load("claude-test")
    backend.unload("claude-test")
    with pytest.raises(BackendError) as refused:
        backend.embed("m", ("x",), {}, CancelToken())
    assert not refused.value.transient
