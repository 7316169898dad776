"""The Ollama backend carries the whole request natively and reads everything a stream
line can hold: tools, thinking, format, images, raw, suffix, template, context, logprobs.

The wire shapes follow Ollama's own source (ollama/ollama ``api/types.go``: ChatRequest,
GenerateRequest, Message, ToolCall, ChatResponse, GenerateResponse, Logprob): a chat
stream carries ``message.thinking`` and ``message.tool_calls`` (each call whole, in one
line), a generate stream ``thinking`` and ``tool_calls`` at the top level, every line may
carry ``logprobs``, and the final line ``done_reason``, the metrics and, for generate,
``context``. Wire format on httpx.MockTransport; one round trip on the simulated server.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from backend_kit import json_answer, ndjson_answer, on_wire

from actors.backends.base import CancelToken
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import ModelProfile, SimulatedOllama
from protocol import (
    REQUEST_FEATURES,
    BackendError,
    BackendRequest,
    BackendResult,
    ChatMessage,
    Chunk,
    JobKind,
    JobSpec,
    Logprob,
    TokenLogprob,
    Tool,
    ToolCall,
)

URL = "http://ollama.test"
CREATED_AT = "2026-01-05T12:00:00.5Z"
WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
PARIS = ToolCall("get_weather", {"city": "Paris"}, id="call_a1", index=0)
ROUND_TRIP = JobSpec.chat(
    model="qwen3",
    messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "thinking": "Paris it is.",
         "tool_calls": [PARIS.to_dict()]},
        {"role": "tool", "content": "22 C", "tool_name": "get_weather",
         "tool_call_id": "call_a1"},
    ],
    tools=[WEATHER],
)  # fmt: skip
METRICS = {
    "total_duration": 9_000,
    "load_duration": 1_000,
    "prompt_eval_count": 11,
    "prompt_eval_duration": 2_000,
    "eval_count": 5,
    "eval_duration": 3_000,
}


def ollama_at(transport: httpx.BaseTransport) -> OllamaBackend:
    return OllamaBackend(URL, transport=transport)


def chat_line(done: bool = False, **message: Any) -> dict[str, Any]:
    """One /api/chat stream line with ``message`` parts."""
    return {
        "model": "qwen3", "created_at": CREATED_AT,
        "message": {"role": "assistant", "content": "", **message}, "done": done,
    }  # fmt: skip


def streamed(lines: Iterable[dict[str, Any]]) -> Any:
    """An answer function streaming ``lines`` to every request."""
    kept = list(lines)
    return lambda sent: ndjson_answer(kept)


def call(backend: OllamaBackend, request: BackendRequest) -> tuple[BackendResult, list[Chunk]]:
    chunks: list[Chunk] = []
    result = backend.complete(request, chunks.append, CancelToken())  # type: ignore[arg-type]
    return result, chunks


def test_the_ollama_backend_carries_every_request_feature() -> None:
    assert OllamaBackend.carries == REQUEST_FEATURES


def test_a_chat_sends_tools_think_format_logprobs_and_message_parts_by_ollamas_names() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    spec = ROUND_TRIP.replace(think="high", format=schema, logprobs=True, top_logprobs=3)
    final = chat_line(True, content="ok") | {"done_reason": "stop", **METRICS}
    with on_wire(ollama_at, streamed([final])) as (backend, wire):
        call(backend, BackendRequest.for_spec(spec))
    body = wire.last.body
    assert wire.last.path == "/api/chat"
    assert body["tools"] == [
        {"type": "function", "function": {
            "name": "get_weather", "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}}
    ]  # fmt: skip
    assert (body["think"], body["format"]) == ("high", schema)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "thinking": "Paris it is.",
         "tool_calls": [{"id": "call_a1", "function": {
             "index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "22 C", "tool_name": "get_weather",
         "tool_call_id": "call_a1"},
    ]  # fmt: skip


def test_think_false_is_sent_so_a_thinking_model_does_not_think() -> None:
    # Ollama thinks by default on a model that can unless told false (server/routes.go).
    final = chat_line(True, content="ok") | {"done_reason": "stop"}
    with on_wire(ollama_at, streamed([final])) as (backend, wire):
        call(backend, BackendRequest.for_spec(ROUND_TRIP.replace(think=False)))
        assert wire.last.body["think"] is False
        call(backend, BackendRequest.for_spec(ROUND_TRIP))
        assert "think" not in wire.last.body and "logprobs" not in wire.last.body


def test_a_generate_sends_images_suffix_template_context_and_raw() -> None:
    final = {"model": "m", "created_at": CREATED_AT, "response": "", "done": True}
    fim = JobSpec.generate(
        model="codellama", prompt="def add(a, b):", suffix="    return total",
        template="<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>", context=[3, 1, 4],
        images=["aGk="], system="terse", think="low",
    )  # fmt: skip
    with on_wire(ollama_at, streamed([final])) as (backend, wire):
        call(backend, BackendRequest.for_spec(fim))
        body = wire.last.body
        assert wire.last.path == "/api/generate"
        assert {k: body[k] for k in ("prompt", "suffix", "template", "context", "images")} == {
            "prompt": "def add(a, b):", "suffix": "    return total",
            "template": "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>", "context": [3, 1, 4],
            "images": ["aGk="],
        }  # fmt: skip
        assert (body["system"], body["think"], "raw" in body) == ("terse", "low", False)
        call(backend, BackendRequest.for_spec(JobSpec.generate(model="m", prompt="x", raw=True)))
        assert wire.last.body["raw"] is True and "template" not in wire.last.body


def test_a_chat_stream_of_thinking_then_a_tool_call_comes_back_piece_by_piece() -> None:
    lines = [
        chat_line(thinking="The user"),
        chat_line(thinking=" wants Paris."),
        chat_line(tool_calls=[PARIS.to_dict()]),
        chat_line(True) | {"done_reason": "stop", **METRICS},
    ]
    with on_wire(ollama_at, streamed(lines)) as (backend, _):
        result, chunks = call(backend, BackendRequest.for_spec(ROUND_TRIP))
    assert [(c.text, c.thinking, c.tool_calls) for c in chunks] == [
        ("", "The user", ()), ("", " wants Paris.", ()), ("", "", (PARIS,)),
    ]  # fmt: skip
    assert all(isinstance(c, Chunk) for c in chunks)
    assert (result.text, result.thinking, result.tool_calls) == (
        "",
        "The user wants Paris.",
        (PARIS,),
    )
    assert result.done_reason == "stop" and result.metrics.eval_count == 5


def test_a_generate_stream_carries_thinking_logprobs_and_the_context_to_keep() -> None:
    def line(response: str = "", **more: Any) -> dict[str, Any]:
        return {"model": "m", "created_at": CREATED_AT, "response": response, "done": False} | more

    hi = {
        "token": "Hi", "logprob": -0.1, "bytes": [72, 105],
        "top_logprobs": [{"token": "Hi", "logprob": -0.1}, {"token": "Hey", "logprob": -2.5}],
    }  # fmt: skip
    lines = [
        line(thinking="greet"),
        line("Hi", logprobs=[hi]),
        line("!", logprobs=[{"token": "!", "logprob": -0.5}]),
        line(done=True, done_reason="length", context=[9, 8, 7], **METRICS),
    ]
    with on_wire(ollama_at, streamed(lines)) as (backend, _):
        request = BackendRequest.for_spec(
            JobSpec.generate(model="m", prompt="say hi", logprobs=True, top_logprobs=2)
        )
        result, chunks = call(backend, request)
    expected_hi = Logprob(
        "Hi", -0.1, (72, 105), (TokenLogprob("Hi", -0.1), TokenLogprob("Hey", -2.5))
    )
    assert [c.logprobs for c in chunks] == [(), (expected_hi,), (Logprob("!", -0.5),)]
    assert (result.text, result.thinking, result.context) == ("Hi!", "greet", (9, 8, 7))
    assert result.logprobs == (expected_hi, Logprob("!", -0.5))
    assert result.done_reason == "length", "the backend's own done reason"


def test_an_answer_without_streaming_comes_back_in_one_chunk_with_all_its_parts() -> None:
    whole = chat_line(True, content="Calling.", thinking="hmm", tool_calls=[PARIS.to_dict()])
    with on_wire(ollama_at, lambda sent: json_answer(whole | {"done_reason": "stop"})) as (
        backend,
        wire,
    ):
        request = dataclasses.replace(BackendRequest.for_spec(ROUND_TRIP), stream=False)
        result, chunks = call(backend, request)
    assert wire.last.body["stream"] is False
    assert [(c.text, c.thinking, c.tool_calls) for c in chunks] == [("Calling.", "hmm", (PARIS,))]
    assert (result.text, result.tool_calls) == ("Calling.", (PARIS,))


@pytest.mark.parametrize(
    ("tool_calls", "field"),
    [
        (
            [{"function": {"name": "get_weather", "arguments": "{}"}}],
            "tool_calls[0].function.arguments",
        ),
        ([{"function": {"arguments": {}}}], "tool_calls[0].function.name"),
        ("get_weather", "tool_calls"),
    ],
)
def test_a_malformed_tool_call_from_the_server_is_a_permanent_error_naming_it(
    tool_calls: object, field: str
) -> None:
    lines = [chat_line(tool_calls=tool_calls), chat_line(True)]
    with on_wire(ollama_at, streamed(lines)) as (backend, _), pytest.raises(BackendError) as caught:
        call(backend, BackendRequest.for_spec(ROUND_TRIP))
    assert not caught.value.transient and field in str(caught.value)


def test_a_resumed_call_after_a_tool_result_continues_a_new_assistant_turn() -> None:
    final = chat_line(True, content=" sunny.") | {"done_reason": "stop"}
    request = BackendRequest.for_spec(ROUND_TRIP.replace(max_tokens=40))
    resumed = dataclasses.replace(request, resume_prefix="It is", max_tokens=30)
    with on_wire(ollama_at, streamed([final])) as (backend, wire):
        result, _ = call(backend, resumed)
    assert wire.last.body["messages"][-1] == {"role": "assistant", "content": "It is"}
    assert wire.last.body["options"] == {"num_predict": 30}
    assert result.text == " sunny."


def test_on_the_simulated_server_a_thinking_model_thinks_then_calls_the_tool_named() -> None:
    catalog = {
        "qwen3": ModelProfile(
            load_seconds=0.0, first_token_seconds=0.0, tokens_per_second=math.inf,
            thinking=True, tools=True,
        )
    }  # fmt: skip
    question = (ChatMessage("user", "What does get_weather say for Paris?"),)
    request = BackendRequest(kind=JobKind.CHAT, model="qwen3", messages=question, tools=(WEATHER,))
    with SimulatedOllama(catalog) as server:
        backend = OllamaBackend(server.url, timeout=5.0)
        try:
            result, chunks = call(backend, request)
        finally:
            backend.close()
    assert result.thinking and "".join(c.thinking for c in chunks) == result.thinking
    (called,) = result.tool_calls
    assert called.name == "get_weather" and isinstance(called.arguments.get("city"), str)
    assert [c.tool_calls for c in chunks if c.tool_calls] == [result.tool_calls]


def test_an_answer_field_gpulane_does_not_use_is_ignored_as_ollama_clients_do() -> None:
    line = chat_line(True, content="ok") | {"done_reason": "stop", "remote_host": "x"}
    with on_wire(ollama_at, lambda sent: ndjson_answer([line])) as (backend, _):
        result, _chunks = call(backend, BackendRequest.for_spec(ROUND_TRIP))
    assert result.text == "ok"
