"""The Anthropic backend carries the request field by field and reads back thinking and
tool calls: tools, ``tool_use`` and ``tool_result`` blocks, images, thinking (a budget
per level, or adaptive with an effort), a JSON schema as ``output_config.format``;
signed thinking goes back with the turn it belongs to; the rest is refused by name.

The shapes follow anthropic-sdk-python's ``types`` (ToolParam, ToolUseBlockParam,
ToolResultBlockParam, ImageBlockParam with Base64ImageSourceParam, ThinkingBlockParam
and RedactedThinkingBlockParam, ThinkingConfigEnabledParam / Adaptive / Disabled,
OutputConfigParam with JSONOutputFormatParam, InputJSONDelta, ThinkingDelta,
SignatureDelta, StopReason "tool_use") and the extended-thinking guide: a budget is at
least 1024 and below max_tokens; with thinking on there is no prefill and no
temperature or top_k; during a tool call's round trip the assistant turn goes back with
its thinking blocks, signatures unchanged. Wire format on httpx.MockTransport; round
trips on the fake, which refuses what the API refuses.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from backend_kit import json_answer, on_wire, sse_answer
from fake_anthropic import FakeAnthropic

from actors.backends.anthropic import AnthropicBackend, ThinkingMode
from actors.backends.base import CancelToken
from protocol import (
    BackendError,
    BackendRequest,
    BackendResult,
    Chunk,
    JobSpec,
    Tool,
    ToolCall,
    ValidationError,
)

URL = "https://anthropic.test"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR").decode()
GIF = base64.b64encode(b"GIF89a\x01\x00\x01\x00\x00\x00").decode()
WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = Tool("get_time")
PARIS = ToolCall("get_weather", {"city": "Paris"}, id="toolu_p", index=0)
QUESTION = {"role": "user", "content": "Weather and time in Paris?", "images": [PNG, GIF]}
ROUND_TRIP = JobSpec.chat(
    model="llama3.2",
    messages=[
        QUESTION,
        {"role": "assistant", "content": "Looking.",
         "tool_calls": [{"id": "toolu_a1", "function": {"name": "get_weather",
                                                        "arguments": {"city": "Paris"}}},
                        {"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "22 C", "tool_call_id": "toolu_a1"},
        {"role": "tool", "content": "noon", "tool_name": "get_time"},
    ],
    tools=[WEATHER, CLOCK],
)  # fmt: skip


def anthropic_at(
    transport: httpx.BaseTransport, thinking_mode: ThinkingMode = "budget"
) -> AnthropicBackend:
    return AnthropicBackend(
        "k", model="claude-test", base_url=URL, thinking_mode=thinking_mode, transport=transport
    )


def call(backend: AnthropicBackend, request: BackendRequest) -> tuple[BackendResult, list[Chunk]]:
    chunks: list[Chunk] = []
    result = backend.complete(request, chunks.append, CancelToken())  # type: ignore[arg-type]
    return result, chunks


def event(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return kind, {"type": kind, **fields}


def blocks(*content: list[tuple[str, dict[str, Any]]], stop: str = "end_turn") -> Any:
    """An answer function streaming the Messages API's events for content blocks, each
    given as its events between content_block_start and content_block_stop."""
    message = {"id": "m", "type": "message", "role": "assistant", "model": "claude-test",
               "content": [], "stop_reason": None, "usage": {"input_tokens": 7}}  # fmt: skip
    events = [event("message_start", message=message)]
    for index, block in enumerate(content):
        events.extend((name, {**data, "index": index}) for name, data in block)
        events.append(event("content_block_stop", index=index))
    events.append(event("message_delta", delta={"stop_reason": stop}, usage={"output_tokens": 5}))
    events.append(event("message_stop"))
    return lambda sent: sse_answer(events)


def text_block(*pieces: str) -> list[tuple[str, dict[str, Any]]]:
    start = event("content_block_start", content_block={"type": "text", "text": ""})
    deltas = [event("content_block_delta", delta={"type": "text_delta", "text": p}) for p in pieces]
    return [start, *deltas]


def thinking_block(signature: str, *pieces: str) -> list[tuple[str, dict[str, Any]]]:
    start = event("content_block_start", content_block={"type": "thinking", "thinking": ""})
    deltas = [
        event("content_block_delta", delta={"type": "thinking_delta", "thinking": p})
        for p in pieces
    ]
    sealed = event("content_block_delta", delta={"type": "signature_delta", "signature": signature})
    return [start, *deltas, sealed]


def tool_block(call_id: str, name: str, *pieces: str) -> list[tuple[str, dict[str, Any]]]:
    use = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
    start = event("content_block_start", content_block=use)
    return [
        start,
        *(
            event("content_block_delta", delta={"type": "input_json_delta", "partial_json": p})
            for p in pieces
        ),
    ]


def sent_body(spec: JobSpec, mode: ThinkingMode = "budget", **changes: Any) -> dict[str, Any]:
    request = dataclasses.replace(BackendRequest.for_spec(spec), **changes)
    with on_wire(lambda t: anthropic_at(t, mode), blocks(text_block("ok"))) as (backend, wire):
        call(backend, request)
    body: dict[str, Any] = wire.last.body
    return body


# ----------------------------------------------------------------- the request


def test_a_chat_carries_tools_tool_use_tool_results_and_images_as_content_blocks() -> None:
    body = sent_body(ROUND_TRIP)
    assert body["tools"] == [
        {"name": "get_weather", "description": "The weather in a city",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}},
        {"name": "get_time", "description": "", "input_schema": {"type": "object"}},
    ]  # fmt: skip
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    gif = {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": GIF}}
    assert body["messages"] == [
        {"role": "user", "content": [image, gif,
                                     {"type": "text", "text": "Weather and time in Paris?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "toolu_a1", "name": "get_weather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_1_1", "name": "get_time", "input": {}},
        ]},
        # Both results in one user turn; get_time's is found by its tool_name.
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a1", "content": "22 C"},
            {"type": "tool_result", "tool_use_id": "call_1_1", "content": "noon"},
        ]},
    ]  # fmt: skip


def test_a_generate_job_is_a_user_turn_with_its_images_before_the_prompt() -> None:
    spec = JobSpec.generate(model="m", prompt="What is this?", images=[PNG], system="Be brief.")
    body = sent_body(spec)
    assert body["system"] == "Be brief." and body["messages"] == [
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}},
            {"type": "text", "text": "What is this?"},
        ]},
    ]  # fmt: skip


def test_a_json_schema_format_is_the_output_config_format() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    body = sent_body(ROUND_TRIP.replace(format=schema))
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


@pytest.mark.parametrize(
    ("think", "max_tokens", "thinking", "sent_max"),
    [
        (True, None, {"type": "enabled", "budget_tokens": 4096}, 1024 + 4096),
        ("low", None, {"type": "enabled", "budget_tokens": 1024}, 1024 + 1024),
        ("max", None, {"type": "enabled", "budget_tokens": 32000}, 1024 + 32000),
        ("high", 2000, {"type": "enabled", "budget_tokens": 1999}, 2000),
        (False, None, None, 1024),
    ],
)
def test_think_is_a_thinking_budget_below_max_tokens(
    think: bool | str, max_tokens: int | None, thinking: dict[str, Any] | None, sent_max: int
) -> None:
    body = sent_body(ROUND_TRIP.replace(think=think, max_tokens=max_tokens))
    assert (body.get("thinking"), body["max_tokens"]) == (thinking, sent_max)


@pytest.mark.parametrize(
    ("think", "thinking", "output_config"),
    [
        (True, {"type": "adaptive"}, None),
        ("high", {"type": "adaptive"}, {"effort": "high"}),
        (False, {"type": "disabled"}, None),
    ],
)
def test_adaptive_thinking_sends_a_level_as_the_effort(
    think: bool | str, thinking: dict[str, Any], output_config: dict[str, Any] | None
) -> None:
    body = sent_body(ROUND_TRIP.replace(think=think), mode="adaptive")
    assert (body["thinking"], body.get("output_config"), body["max_tokens"]) == (
        thinking,
        output_config,
        1024,
    )


def chat(*messages: dict[str, Any], **fields: Any) -> JobSpec:
    return JobSpec.chat(
        model="m", messages=messages or [{"role": "user", "content": "?"}], **fields
    )


@pytest.mark.parametrize(
    ("spec", "changes", "field"),
    [
        (chat(format="json"), {}, "format"),
        (chat(logprobs=True), {}, "logprobs"),
        (chat(top_logprobs=2), {}, "top_logprobs"),
        (JobSpec.generate(model="m", prompt="x", suffix="y"), {}, "suffix"),
        (JobSpec.generate(model="m", prompt="x", raw=True), {}, "raw"),
        (JobSpec.generate(model="m", prompt="x", template="t"), {}, "template"),
        (JobSpec.generate(model="m", prompt="x", context=[1]), {}, "context"),
        (JobSpec.generate(model="m", prompt="x", images=["aGk="]), {}, "images[0]"),
        (chat(think=True, options={"temperature": 0.2}), {}, "options.temperature"),
        (chat(think="low", options={"top_k": 5}), {}, "options.top_k"),
        (chat({"role": "user", "content": "?"}, {"role": "assistant", "content": "Sure"},
              think=True), {}, "think"),
        (chat(think=True), {"resume_prefix": "It"}, "think"),
        (chat(think=True, max_tokens=1024), {}, "think"),
        (chat({"role": "user", "content": "?"},
              {"role": "assistant", "content": "", "images": [PNG]}), {}, "messages[1].images"),
        (chat({"role": "user", "content": "?"}, {"role": "tool", "content": "1",
                                                  "tool_name": "f"}), {}, "messages[1].tool_name"),
        (chat({"role": "user", "content": "?", "images": ["aGk="]}), {}, "messages[0].images[0]"),
        (chat({"role": "user", "content": "?"},
              {"role": "assistant", "content": "x", "thinking": "unsigned"}), {},
         "messages[1].thinking"),
    ],
)  # fmt: skip
def test_what_the_api_cannot_carry_is_refused_by_name_before_anything_is_sent(
    spec: JobSpec, changes: dict[str, Any], field: str
) -> None:
    request = dataclasses.replace(BackendRequest.for_spec(spec), **changes)
    with (
        on_wire(anthropic_at, blocks(text_block("ok"))) as (backend, wire),
        pytest.raises(ValidationError) as caught,
    ):
        call(backend, request)
    assert caught.value.field == field and wire.sent == []


# ------------------------------------------------------------------- the answer


def test_streamed_thinking_and_tool_use_come_back_as_thinking_then_whole_calls() -> None:
    answer = blocks(
        thinking_block("sig-1", "The user", " wants Paris."),
        text_block("Checking."),
        tool_block("toolu_p", "get_weather", '{"city"', ': "Paris"}'),
        stop="tool_use",
    )
    with on_wire(anthropic_at, answer) as (backend, _):
        result, chunks = call(backend, BackendRequest.for_spec(ROUND_TRIP.replace(think=True)))
    assert [(c.text, c.thinking, c.tool_calls) for c in chunks] == [
        ("", "The user", ()), ("", " wants Paris.", ()), ("Checking.", "", ()), ("", "", (PARIS,)),
    ]  # fmt: skip
    assert (result.text, result.thinking, result.tool_calls) == (
        "Checking.",
        "The user wants Paris.",
        (PARIS,),
    )
    assert result.done_reason == "tool_calls" and result.metrics.eval_count == 5


def next_turn(made: BackendResult, keep_thinking: bool) -> BackendRequest:
    """The request after ``made``'s tool call, answered by tool name (the client keeps
    the assistant's thinking, or, as OpenAI's clients do, leaves it out)."""
    reply = {"role": "assistant", "content": made.text,
             "thinking": made.thinking if keep_thinking else "",
             "tool_calls": [c.to_dict() for c in made.tool_calls]}  # fmt: skip
    result = {"role": "tool", "content": "22 C", "tool_name": "get_weather"}
    spec = chat({"role": "user", "content": "Weather?"}, reply, result, tools=[WEATHER], think=True)
    return BackendRequest.for_spec(spec)


@pytest.mark.parametrize("keep_thinking", [True, False], ids=["by-thinking", "by-call-id"])
def test_the_signed_thinking_of_an_answer_goes_back_with_its_turn(keep_thinking: bool) -> None:
    answer = blocks(
        thinking_block("sig-1", "Paris it is."),
        [event("content_block_start", content_block={"type": "redacted_thinking", "data": "x"})],
        tool_block("toolu_p", "get_weather", '{"city": "Paris"}'),
        stop="tool_use",
    )
    with on_wire(anthropic_at, answer) as (backend, wire):
        made, _ = call(backend, BackendRequest.for_spec(ROUND_TRIP.replace(think=True)))
        call(backend, next_turn(made, keep_thinking))
    assert wire.last.body["messages"][1] == {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Paris it is.", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "x"},
        {"type": "tool_use", "id": "toolu_p", "name": "get_weather", "input": {"city": "Paris"}},
    ]}  # fmt: skip
    assert wire.last.body["messages"][2]["content"][0]["tool_use_id"] == "toolu_p"


def test_an_answer_without_streaming_comes_back_in_one_chunk_and_keeps_its_signature() -> None:
    message = {
        "id": "m", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig-2"},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_p", "name": "get_weather",
             "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4},
    }  # fmt: skip
    request = BackendRequest.for_spec(ROUND_TRIP.replace(think=True))
    with on_wire(anthropic_at, lambda sent: json_answer(message)) as (backend, wire):
        made, chunks = call(backend, dataclasses.replace(request, stream=False))
        call(backend, dataclasses.replace(next_turn(made, keep_thinking=True), stream=False))
    assert [(c.text, c.thinking, c.tool_calls) for c in chunks] == [("Calling.", "hmm", (PARIS,))]
    assert made.done_reason == "tool_calls" and made.metrics.eval_count == 4
    assert wire.last.body["messages"][1]["content"][0] == message["content"][0]


def test_a_malformed_tool_input_from_the_api_is_a_permanent_error_naming_it() -> None:
    answer = blocks(tool_block("toolu_p", "get_weather", '{"city": '), stop="tool_use")
    with on_wire(anthropic_at, answer) as (backend, _), pytest.raises(BackendError) as caught:
        call(backend, BackendRequest.for_spec(ROUND_TRIP))
    assert not caught.value.transient and "tool_calls[0].arguments" in str(caught.value)


# ------------------------------------------------------------ on the fake server


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def backend(fake: FakeAnthropic) -> Iterator[AnthropicBackend]:
    client = AnthropicBackend("sk-ant-test", model="claude-test", base_url=fake.url, timeout=5)
    yield client
    client.close()


def asking(**fields: Any) -> BackendRequest:
    question = {"role": "user", "content": "What does get_weather say for Paris?"}
    return BackendRequest.for_spec(chat(question, **fields))


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("keep_thinking", [True, False], ids=["by-thinking", "by-call-id"])
def test_a_thinking_tool_round_trip_on_the_fake_api(
    backend: AnthropicBackend, fake: FakeAnthropic, stream: bool, keep_thinking: bool
) -> None:
    made, chunks = call(
        backend, dataclasses.replace(asking(tools=[WEATHER], think=True), stream=stream)
    )
    (use,) = made.tool_calls
    assert made.thinking and made.done_reason == "tool_calls" and use.name == "get_weather"
    assert "".join(c.thinking for c in chunks) == made.thinking
    # The fake refuses this turn unless its thinking block comes back with its signature.
    answer, _ = call(backend, next_turn(made, keep_thinking))
    assert answer.text and not answer.tool_calls and answer.done_reason == "stop"
    assert fake.requests[-1][1]["messages"][1]["content"][0]["type"] == "thinking"


def test_the_fake_refuses_a_tool_round_trip_without_the_thinking_block(
    fake: FakeAnthropic,
) -> None:
    body = {
        "model": "claude-test", "max_tokens": 2048, "stream": False,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_p", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_p", "content": "22 C"}]},
        ],
    }  # fmt: skip
    headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
    refused = httpx.post(fake.url + "/v1/messages", json=body, headers=headers)
    assert refused.status_code == 400 and "Expected `thinking`" in refused.text


def test_a_schema_answer_and_images_on_the_fake_api(backend: AnthropicBackend) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    result, _ = call(backend, asking(format=schema))
    assert isinstance(json.loads(result.text)["city"], str)
    looked, _ = call(backend, BackendRequest.for_spec(chat(QUESTION)))
    assert looked.text
