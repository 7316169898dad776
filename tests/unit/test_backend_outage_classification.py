"""Whose failure is it: every backend marks the failures that belong to the model server
(``BackendError.outage``: unreachable, connection dropped, busy or loading) apart from
those that belong to the request (transient or permanent), on httpx.MockTransport (the
transport is the seam, docs/backends.md).

What each case follows:
- httpcore maps a refused connection and a DNS failure (socket.gaierror, an OSError) to
  ConnectError, a connect time-out to ConnectTimeout, a peer that closes before answering
  to RemoteProtocolError "Server disconnected without sending a response.", a reset to
  ReadError or WriteError (httpcore/_backends/sync.py, _sync/http11.py).
- Ollama: a full scheduler queue is 503 "server busy, please try again.  maximum pending
  requests exceeded" (server/sched.go ErrMaxQueue, answered by server/routes.go
  handleScheduleError); a runner that died is a 500 for this request.
- llama.cpp's server answers 503 ``{"error": {"code": 503, "message": "Loading model",
  "type": "unavailable_error"}}`` until its model is loaded (tools/server, format_error_response
  with ERROR_TYPE_UNAVAILABLE).
- Anthropic: 529 OverloadedError, 503 ServiceUnavailableError and 504 DeadlineExceededError
  (anthropic-sdk-python _exceptions.py); the 504 is the API's "timeout_error", this
  request's time-out, so it stays the request's.
- 502 and 504 from a proxy in front of a local server: nothing answers behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from backend_kit import Sent, failure, json_answer, on_wire, sse_answer

from actors.backends.anthropic import AnthropicBackend
from actors.backends.base import Backend
from actors.backends.ollama import OllamaBackend
from actors.backends.openai_compat import OpenAICompatBackend
from protocol import BackendError, BackendRequest, ChatMessage, JobKind

MakeBackend = Callable[[httpx.BaseTransport], Backend]

BACKENDS: dict[str, MakeBackend] = {
    "ollama": lambda transport: OllamaBackend("http://ollama.test", transport=transport),
    "openai": lambda transport: OpenAICompatBackend("http://vllm.test", transport=transport),
    "anthropic": lambda transport: AnthropicBackend(
        "key", model="claude-haiku-4-5", transport=transport
    ),
}
QUESTION = BackendRequest(
    kind=JobKind.CHAT, model="tiny", messages=(ChatMessage("user", "Which job runs next?"),)
)
BUSY = "server busy, please try again.  maximum pending requests exceeded"
BAD_GATEWAY = "<html><body><h1>502 Bad Gateway</h1></body></html>"


def raising(error: httpx.HTTPError) -> Callable[[Sent], httpx.Response]:
    def answer(sent: Sent) -> httpx.Response:
        raise error

    return answer


def classify(make: MakeBackend, answer: Callable[[Sent], httpx.Response]) -> BackendError:
    """The error a chat call on ``make``'s backend raises when the wire answers ``answer``."""
    with on_wire(make, answer) as (backend, _):
        error, _ = failure(backend, QUESTION)
    return error


@pytest.fixture(params=sorted(BACKENDS))
def make(request: pytest.FixtureRequest) -> Iterator[MakeBackend]:
    yield BACKENDS[request.param]


# ------------------------------------------------------------ the connection


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ConnectError("[Errno -2] Name or service not known"),
        httpx.ConnectTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("[Errno 104] Connection reset by peer"),
        httpx.WriteError("[Errno 32] Broken pipe"),
        httpx.ProxyError("502 Bad Gateway"),
    ],
    ids=["refused", "dns", "connect-timeout", "disconnected", "reset", "broken-pipe", "proxy"],
)
def test_a_server_that_cannot_be_reached_or_drops_the_connection_is_an_outage(
    make: MakeBackend, error: httpx.HTTPError
) -> None:
    caught = classify(make, raising(error))
    assert (caught.outage, caught.transient, caught.status) == (True, True, None)
    assert str(error) in caught.message


@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout("timed out"), httpx.WriteTimeout("timed out"), httpx.PoolTimeout("")],
    ids=["read", "write", "pool"],
)
def test_a_time_out_is_the_request_s_transient_failure_not_an_outage(
    make: MakeBackend, error: httpx.HTTPError
) -> None:
    caught = classify(make, raising(error))
    assert (caught.outage, caught.transient) == (False, True)
    assert "timed out" in caught.message


def test_a_malformed_url_is_permanent_and_not_an_outage(make: MakeBackend) -> None:
    caught = classify(make, raising(httpx.UnsupportedProtocol("Request URL has no scheme")))
    assert (caught.outage, caught.transient) == (False, False)


# -------------------------------------------------------------- the statuses


@pytest.mark.parametrize(
    ("answer", "outage", "transient"),
    [
        (json_answer({"error": BUSY}, 503), True, True),
        (httpx.Response(502, text=BAD_GATEWAY), True, True),
        (httpx.Response(504, text="gateway time-out"), True, True),
        (json_answer({"error": "llama runner process has terminated: signal: killed"}, 500),
         False, True),
        (json_answer({"error": 'model "ghost" not found, try pulling it first'}, 404),
         False, False),
        (json_answer({"error": 'time: invalid duration "soon"'}, 400), False, False),
    ],
    ids=["503-busy", "502-proxy", "504-proxy", "500-runner", "404", "400"],
)  # fmt: skip
def test_ollama_statuses_land_in_their_class(
    answer: httpx.Response, outage: bool, transient: bool
) -> None:
    caught = classify(BACKENDS["ollama"], lambda sent: answer)
    assert (caught.outage, caught.transient, caught.status) == (
        outage,
        transient,
        answer.status_code,
    )


def test_ollama_busy_keeps_its_message() -> None:
    caught = classify(BACKENDS["ollama"], lambda sent: json_answer({"error": BUSY}, 503))
    assert caught.message == BUSY


LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
PYDANTIC_400 = (
    "1 validation error for CreateChatCompletionRequest\n"
    "{'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required'}"
)


@pytest.mark.parametrize(
    ("answer", "outage", "transient", "status"),
    [
        (json_answer(LOADING, 503), True, True, 503),
        (httpx.Response(502, text=BAD_GATEWAY), True, True, 502),
        (httpx.Response(504, text="upstream request timeout"), True, True, 504),
        (json_answer({"error": {"message": "CUDA out of memory", "type": "server_error"}}, 500),
         False, True, 500),
        (httpx.Response(500), False, True, 500),  # vLLM's engine error: an empty 500
        (json_answer({"error": {"message": PYDANTIC_400}}, 500), False, False, 400),
        (json_answer({"error": {"message": "too many requests"}}, 429), False, True, 429),
        (json_answer({"error": {"message": "model 'ghost' not found"}}, 404), False, False, 404),
    ],
    ids=["503-loading", "502-proxy", "504-proxy", "500-oom", "500-empty", "500-body", "429",
         "404"],
)  # fmt: skip
def test_openai_compatible_statuses_land_in_their_class(
    answer: httpx.Response, outage: bool, transient: bool, status: int
) -> None:
    caught = classify(BACKENDS["openai"], lambda sent: answer)
    assert (caught.outage, caught.transient, caught.status) == (outage, transient, status)


def test_a_loading_llama_cpp_server_keeps_its_message() -> None:
    caught = classify(BACKENDS["openai"], lambda sent: json_answer(LOADING, 503))
    assert caught.message == "Loading model"


def anthropic_error(status: int, kind: str, message: str) -> httpx.Response:
    return json_answer({"type": "error", "error": {"type": kind, "message": message}}, status)


@pytest.mark.parametrize(
    ("answer", "outage", "transient"),
    [
        (anthropic_error(529, "overloaded_error", "Overloaded"), True, True),
        (anthropic_error(503, "api_error", "Service unavailable"), True, True),
        (httpx.Response(502, text=BAD_GATEWAY), True, True),
        (anthropic_error(504, "timeout_error", "Request timed out"), False, True),
        (anthropic_error(500, "api_error", "Internal server error"), False, True),
        (anthropic_error(429, "rate_limit_error", "Number of requests has exceeded"),
         False, True),
        (anthropic_error(400, "invalid_request_error", "max_tokens: too large"), False, False),
    ],
    ids=["529-overloaded", "503", "502-proxy", "504-timeout", "500", "429", "400"],
)  # fmt: skip
def test_anthropic_statuses_land_in_their_class(
    answer: httpx.Response, outage: bool, transient: bool
) -> None:
    caught = classify(BACKENDS["anthropic"], lambda sent: answer)
    assert (caught.outage, caught.transient, caught.status) == (
        outage,
        transient,
        answer.status_code,
    )


def test_an_overloaded_event_in_an_anthropic_stream_is_an_outage_and_an_api_error_is_not() -> None:
    def stream_failing_with(kind: str) -> Callable[[Sent], httpx.Response]:
        start = {"type": "message_start", "message": {"usage": {"input_tokens": 5}}}
        error = {"type": "error", "error": {"type": kind, "message": kind}}
        return lambda sent: sse_answer([("message_start", start), ("error", error)])

    with on_wire(BACKENDS["anthropic"], stream_failing_with("overloaded_error")) as (backend, _):
        overloaded, _ = failure(backend, QUESTION)
    with on_wire(BACKENDS["anthropic"], stream_failing_with("api_error")) as (backend, _):
        api_error, _ = failure(backend, QUESTION)
    assert (overloaded.outage, overloaded.transient) == (True, True)
    assert (api_error.outage, api_error.transient) == (False, True)


def test_an_error_line_in_an_ollama_stream_is_the_request_s_failure() -> None:
    def error_line(sent: Sent) -> httpx.Response:
        return httpx.Response(200, content=b'{"error": "unexpected EOF"}\n')

    caught = classify(BACKENDS["ollama"], error_line)
    assert (caught.outage, caught.transient) == (False, True)
