"""The Anthropic Messages API backend: its wire format on httpx.MockTransport, and a local
fake of the API over real HTTP where a socket (or a server that generates) is the point.

Headers, bodies, SSE and JSON parsing and the failure classes go through
``httpx.MockTransport`` (docs/architecture.md section 12); a cut stream, a refused
connection, a cancel that stops the server, and resume run on the fake.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from backend_kit import Sent, Wire, failure, json_answer, on_wire, run, sse_answer
from fake_anthropic import ERROR_TYPES, FakeAnthropic
from fake_http import Fault

from actors.backends.anthropic import ANTHROPIC_VERSION, AnthropicBackend
from actors.backends.base import Backend, CallCancelledError, CancelToken
from protocol import BackendError, BackendRequest, ChatMessage, JobKind

QUESTION = (ChatMessage("user", "How does the arbiter pick the next job?"),)

# ------------------------------------------------------------------- the wire

URL = "https://anthropic.test"
KEY = "sk-ant-test"
ANSWER = ("The", " arbiter", " serves", " internal", " work", " first,", " then", " the",
          " rest.")  # fmt: skip
INPUT_TOKENS = 14


def anthropic_at(transport: httpx.BaseTransport, key: str = KEY) -> AnthropicBackend:
    return AnthropicBackend(key, model="claude-test", base_url=URL, transport=transport)


def api_error(status: int, message: str) -> httpx.Response:
    """An error answer in the Messages API's shape."""
    error = {"type": ERROR_TYPES.get(status, "api_error"), "message": message}
    return json_answer({"type": "error", "error": error}, status)


def message(
    body: dict[str, Any], text: str | None, stop: str | None, output: int
) -> dict[str, Any]:
    """A message object (``text`` None: no content yet, as in ``message_start``)."""
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [] if text is None else [{"type": "text", "text": text}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": output},
    }


def event(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    """One named server-sent event of the Messages API."""
    return kind, {"type": kind, **fields}


def delta(text: str) -> tuple[str, dict[str, Any]]:
    return event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})


def messages_api(sent: Sent) -> httpx.Response:
    """What the Messages API answers: a wrong key is a 401; ``/v1/models`` lists
    "claude-test"; a message is a canned answer cut at ``max_tokens``, streamed as the
    API's events or one message object."""
    if sent.headers.get("x-api-key") != KEY:
        return api_error(401, "invalid x-api-key")
    if sent.path == "/v1/models":
        model = {"type": "model", "id": "claude-test", "display_name": "Claude Test"}
        return json_answer({"data": [model], "has_more": False})
    body = sent.body
    tokens = ANSWER[: body["max_tokens"]]
    stop = "max_tokens" if body["max_tokens"] <= len(ANSWER) else "end_turn"
    if not body.get("stream"):
        return json_answer(message(body, "".join(tokens), stop, len(tokens)))
    return sse_answer(
        [
            event("message_start", message=message(body, None, None, 1)),
            event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
            event("ping"),
            *(delta(token) for token in tokens),
            event("content_block_stop", index=0),
            event(
                "message_delta",
                delta={"stop_reason": stop, "stop_sequence": None},
                usage={"output_tokens": len(tokens)},
            ),
            event("message_stop"),
        ]
    )


@pytest.fixture
def wire() -> Iterator[tuple[AnthropicBackend, Wire]]:
    with on_wire(anthropic_at, messages_api) as wired:
        yield wired


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
    wire: tuple[AnthropicBackend, Wire],
) -> None:
    backend, sent = wire
    result = backend.complete(
        chat(system="Be brief.", max_tokens=200), lambda _: None, CancelToken()
    )
    text, chunks = run(backend, chat(system="Be brief.", max_tokens=200))
    assert text == result.text and chunks == list(ANSWER) and "".join(chunks) == text
    path, body, headers = sent.last.path, sent.last.body, sent.last.headers
    assert path == "/v1/messages" and body["model"] == "claude-test" and body["stream"] is True
    assert body["system"] == "Be brief." and body["max_tokens"] == 200
    assert body["messages"] == [{"role": "user", "content": QUESTION[0].content}]
    assert headers["x-api-key"] == "sk-ant-test"
    assert headers["anthropic-version"] == ANTHROPIC_VERSION
    assert result.done_reason == "stop" and result.metrics.eval_count == len(chunks)
    assert result.metrics.prompt_eval_count == INPUT_TOKENS


def test_a_call_without_streaming_and_a_generate_job(wire: tuple[AnthropicBackend, Wire]) -> None:
    backend, sent = wire
    streamed, _ = run(backend, chat())
    assert run(backend, chat(stream=False)) == (streamed, [streamed])
    assert sent.last.body["stream"] is False
    prompt = BackendRequest(kind=JobKind.GENERATE, model="m", prompt="Once upon a time")
    text, _ = run(backend, prompt)
    assert text and sent.last.body["messages"] == [{"role": "user", "content": "Once upon a time"}]


def test_max_tokens_ends_with_length(wire: tuple[AnthropicBackend, Wire]) -> None:
    backend, sent = wire
    result = backend.complete(chat(max_tokens=3), lambda _: None, CancelToken())
    assert sent.last.body["max_tokens"] == 3
    assert result.done_reason == "length" and result.metrics.eval_count == 3


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (401, False), (404, False), (429, True), (500, True), (529, True)],
)
def test_error_statuses_are_classified_with_the_api_message(status: int, transient: bool) -> None:
    with on_wire(anthropic_at, lambda _: api_error(status, "Overloaded")) as (backend, _):
        error, chunks = failure(backend, chat())
    assert (error.transient, error.status, chunks) == (transient, status, [])
    assert error.message == f"{ERROR_TYPES[status]}: Overloaded"


def test_a_wrong_api_key_is_a_permanent_authentication_error() -> None:
    with on_wire(lambda t: anthropic_at(t, key="sk-wrong"), messages_api) as (wrong, sent):
        error, _ = failure(wrong, chat())
    assert sent.last.headers["x-api-key"] == "sk-wrong"
    assert (error.transient, error.status) == (False, 401)
    assert error.message == "authentication_error: invalid x-api-key"


@pytest.mark.parametrize(
    ("error_type", "transient"), [("overloaded_error", True), ("invalid_request_error", False)]
)
def test_an_error_event_mid_stream_is_classified_by_its_type(
    error_type: str, transient: bool
) -> None:
    def two_deltas_then_an_error(sent: Sent) -> httpx.Response:
        start = event("message_start", message=message(sent.body, None, None, 1))
        failed = event("error", error={"type": error_type, "message": "stop"})
        return sse_answer([start, *(delta(token) for token in ANSWER[:2]), failed])

    with on_wire(anthropic_at, two_deltas_then_an_error) as (backend, _):
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
    # Once no call is active the generation has ended, so its token count is final.
    stats = server.wait_for(lambda s: s["calls_disconnected"] == 1 and s["active"] == 0)
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
    wire: tuple[AnthropicBackend, Wire],
) -> None:
    backend, sent = wire
    assert [m.name for m in backend.loaded_models()] == ["claude-test"]
    assert (sent.last.method, sent.last.path) == ("GET", "/v1/models")
    backend.load("claude-test")
    backend.unload("claude-test")
    assert len(sent.sent) == 1  # neither sends anything
    with pytest.raises(BackendError) as refused:
        backend.embed("m", ("x",), {}, CancelToken())
    assert not refused.value.transient
