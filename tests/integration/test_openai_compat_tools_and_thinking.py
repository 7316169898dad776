"""The OpenAI-compatible backend carries the whole request field by field and reads back
everything an answer holds: tools and tool calls, thinking, images, format, logprobs,
generate's suffix; what the API cannot carry is refused by name.

The wire shapes follow openai-python's ``types/chat`` (ChatCompletionMessageParam,
ChatCompletionMessageToolCallParam, ChatCompletionToolMessageParam, the content parts,
ChoiceDeltaToolCall, ChatCompletionTokenLogprob, ``response_format``) and, where servers
extend the API, vLLM's and llama.cpp's: ``reasoning`` (vLLM's ``chat_utils`` reads it
on input messages; responses since 0.11) and ``reasoning_content`` (llama.cpp's
``common_chat_msgs_parse_oaicompat``), ``chat_template_kwargs``, and llama.cpp's
chat-shaped ``logprobs`` on ``/v1/completions``. Wire format on httpx.MockTransport;
round trips on the fake server, which the official ``openai`` client checks first.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from backend_kit import Sent, cancel_after, json_answer, on_wire, sse_answer
from fake_openai import FakeOpenAI

from actors import BackendSettings, Config, GpuLane, SystemClock
from actors.backends.base import CallCancelledError, CancelToken
from actors.backends.openai_compat import OpenAICompatBackend
from protocol import (
    BackendError,
    BackendRequest,
    BackendResult,
    ChatMessage,
    Chunk,
    JobSpec,
    JobState,
    Logprob,
    StoreSettings,
    TokenLogprob,
    Tool,
    ToolCall,
    ValidationError,
)

URL = "http://vllm.test"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR").decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01").decode()
WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = Tool("get_time", "The time in a city", {"type": "object", "properties": {}})
ROUND_TRIP = JobSpec.chat(
    model="tiny",
    messages=[
        {"role": "user", "content": "Weather and time in Paris?", "images": [PNG, JPEG]},
        {"role": "assistant", "content": "", "thinking": "Two tools.",
         "tool_calls": [{"id": "call_a1", "function": {"name": "get_weather",
                                                       "arguments": {"city": "Paris"}}},
                        {"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "22 C", "tool_call_id": "call_a1"},
        {"role": "tool", "content": "noon", "tool_name": "get_time"},
    ],
    tools=[WEATHER, CLOCK],
)  # fmt: skip
PARIS = ToolCall("get_weather", {"city": "Paris"}, id="call_p", index=0)
LONDON = ToolCall("get_weather", {"city": "London"}, id="call_l", index=1)


def openai_at(transport: httpx.BaseTransport) -> OpenAICompatBackend:
    return OpenAICompatBackend(URL, transport=transport)


def call(
    backend: OpenAICompatBackend, request: BackendRequest
) -> tuple[BackendResult, list[Chunk]]:
    chunks: list[Chunk] = []
    result = backend.complete(request, chunks.append, CancelToken())  # type: ignore[arg-type]
    return result, chunks


def deltas(*items: dict[str, Any], finish: str = "stop") -> Callable[[Sent], httpx.Response]:
    """An answer function streaming a chunk per delta (then the finish reason, usage and
    [DONE]), as vLLM and llama.cpp do."""

    def answer(sent: Sent) -> httpx.Response:
        head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "tiny"}
        chunks = [
            {**head, "choices": [{"index": 0, "finish_reason": None, **item}]} for item in items
        ]
        chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        usage = {"prompt_tokens": 9, "completion_tokens": len(items), "total_tokens": 9}
        chunks.append({**head, "choices": [], "usage": usage})
        return sse_answer([*((None, c) for c in chunks), (None, "[DONE]")])

    return answer


def delta(**fields: Any) -> dict[str, Any]:
    return {"delta": fields}


def sent_body(request: BackendRequest) -> dict[str, Any]:
    """The body the backend sends for ``request``."""
    with on_wire(openai_at, deltas(delta(content="ok"))) as (backend, wire):
        call(backend, request)
    body: dict[str, Any] = wire.last.body
    return body


# ----------------------------------------------------------------- the request


def test_a_chat_carries_tools_calls_results_thinking_and_images_in_openais_shapes() -> None:
    body = sent_body(BackendRequest.for_spec(ROUND_TRIP))
    assert body["tools"] == [tool.to_dict() for tool in (WEATHER, CLOCK)]
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}  # fmt: skip
    user, assistant, weather, time = body["messages"]
    assert user == {"role": "user", "content": [
        {"type": "text", "text": "Weather and time in Paris?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
    ]}  # fmt: skip
    assert assistant == {
        "role": "assistant", "content": "",
        "reasoning_content": "Two tools.", "reasoning": "Two tools.",
        "tool_calls": [
            {"id": "call_a1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_1_1", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }  # fmt: skip
    assert weather == {"role": "tool", "content": "22 C", "tool_call_id": "call_a1"}
    # Ollama's tool_name finds the call it answers; it also goes as the message's name.
    assert time == {"role": "tool", "content": "noon", "tool_call_id": "call_1_1",
                    "name": "get_time"}  # fmt: skip
    assert sent_body(BackendRequest.for_spec(ROUND_TRIP)) == body, "stable generated ids"


@pytest.mark.parametrize(
    ("think", "fields"),
    [
        (True, {"chat_template_kwargs": {"enable_thinking": True}}),
        (False, {"chat_template_kwargs": {"enable_thinking": False}}),
        ("high", {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"}),
        (None, {}),
    ],
)
def test_think_becomes_enable_thinking_for_the_chat_template_and_a_level_reasoning_effort(
    think: bool | str | None, fields: dict[str, Any]
) -> None:
    body = sent_body(BackendRequest.for_spec(ROUND_TRIP.replace(think=think)))
    assert {k: body[k] for k in ("chat_template_kwargs", "reasoning_effort") if k in body} == fields


def test_a_schema_is_a_strict_json_schema_and_logprobs_are_asked_for_by_name() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    spec = ROUND_TRIP.replace(format=schema, logprobs=True, top_logprobs=3)
    body = sent_body(BackendRequest.for_spec(spec))
    assert body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}
    }  # fmt: skip
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)
    plain = sent_body(BackendRequest.for_spec(ROUND_TRIP.replace(format="json")))
    assert plain["response_format"] == {"type": "json_object"} and "logprobs" not in plain


def test_schema_form_json_object_sends_the_schema_beside_json_object() -> None:
    """llama-cpp-python's form (its ``ChatCompletionRequestResponseFormat``: type "text"
    or "json_object", and an optional ``schema``), which llama.cpp's server takes too."""
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}

    def llama_cpp_python(transport: httpx.BaseTransport) -> OpenAICompatBackend:
        return OpenAICompatBackend(URL, schema_form="json_object", transport=transport)

    for asked, form in ((schema, {"type": "json_object", "schema": schema}),
                        ("json", {"type": "json_object"})):  # fmt: skip
        request = BackendRequest.for_spec(ROUND_TRIP.replace(format=asked))
        with on_wire(llama_cpp_python, deltas(delta(content="{}"))) as (backend, wire):
            call(backend, request)
        assert wire.last.body["response_format"] == form


def test_a_generate_carries_its_suffix_and_asks_the_legacy_api_for_at_least_one_logprob() -> None:
    fim = JobSpec.generate(model="tiny", prompt="def add(a, b):", suffix="    return total")
    body = sent_body(BackendRequest.for_spec(fim.replace(logprobs=True)))
    assert (body["prompt"], body["suffix"], body["logprobs"]) == (
        "def add(a, b):",
        "    return total",
        1,
    )
    assert sent_body(BackendRequest.for_spec(fim.replace(top_logprobs=4)))["logprobs"] == 4


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (JobSpec.generate(model="tiny", prompt="x", think=True), "think"),
        (JobSpec.generate(model="tiny", prompt="x", raw=True), "raw"),
        (JobSpec.generate(model="tiny", prompt="x", template="{{ .Prompt }}"), "template"),
        (JobSpec.generate(model="tiny", prompt="x", context=[1, 2]), "context"),
        (JobSpec.generate(model="tiny", prompt="x", images=[PNG]), "images"),
        (JobSpec.chat(model="tiny", messages=[{"role": "user", "content": "?",
                                               "images": ["aGk="]}]), "messages[0].images[0]"),
        (JobSpec.chat(model="tiny", messages=[{"role": "user", "content": "?",
                                               "images": ["!!!!"]}]), "messages[0].images[0]"),
    ],
)  # fmt: skip
def test_what_the_api_cannot_carry_is_refused_by_name_before_anything_is_sent(
    spec: JobSpec, field: str
) -> None:
    with (
        on_wire(openai_at, deltas(delta(content="ok"))) as (backend, wire),
        pytest.raises(ValidationError) as caught,
    ):
        call(backend, BackendRequest.for_spec(spec))
    assert caught.value.field == field and wire.sent == []


def test_a_resumed_call_with_tools_continues_its_text_after_the_tool_results() -> None:
    request = dataclasses.replace(BackendRequest.for_spec(ROUND_TRIP), resume_prefix="It is")
    with on_wire(openai_at, deltas(delta(content=" sunny"), delta(content=" at noon."))) as (
        backend,
        wire,
    ):
        result, _ = call(backend, request)
    assert wire.last.body["tools"] and wire.last.body["messages"][-1] == {
        "role": "assistant",
        "content": "It is",
    }
    assert result.text == " sunny at noon."


def test_regenerate_drops_the_text_it_repeats_and_the_logprobs_of_a_piece_it_drops() -> None:
    request = dataclasses.replace(
        BackendRequest.for_spec(ROUND_TRIP.replace(logprobs=True)), resume_prefix="It is"
    )
    first = {"token": "It", "logprob": -0.1, "bytes": None, "top_logprobs": []}
    stream = deltas(
        delta(content="It") | {"logprobs": {"content": [first]}},
        delta(content=" is sunny"),
        delta(content="."),
    )
    with on_wire(lambda t: OpenAICompatBackend(URL, resume="regenerate", transport=t), stream) as (
        backend,
        wire,
    ):
        result, chunks = call(backend, request)
    assert wire.last.body["messages"][-1]["role"] == "tool", "asked again without the prefix"
    # "It" is repeated text: dropped, with its logprobs; " is sunny" loses its " is".
    assert [(c.text, c.logprobs) for c in chunks] == [(" sunny", ()), (".", ())]
    assert result.text == " sunny."


# ------------------------------------------------------------------- the answer


def test_streamed_tool_call_deltas_come_back_as_whole_calls_in_index_order() -> None:
    # vLLM and llama.cpp send a call's id and name first, then its arguments in pieces;
    # a new index means the calls before it are done.
    stream = deltas(
        delta(tool_calls=[{"index": 0, "id": "call_p", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
        delta(tool_calls=[{"index": 1, "id": "call_l", "type": "function",
                           "function": {"name": "get_weather", "arguments": '{"city":'}}]),
        delta(tool_calls=[{"index": 1, "function": {"arguments": ' "London"}'}}]),
        finish="tool_calls",
    )  # fmt: skip
    with on_wire(openai_at, stream) as (backend, _):
        result, chunks = call(backend, BackendRequest.for_spec(ROUND_TRIP))
    assert [c.tool_calls for c in chunks if c.tool_calls] == [(PARIS,), (LONDON,)]
    assert all(c.text == "" for c in chunks)
    assert (result.tool_calls, result.done_reason) == ((PARIS, LONDON), "tool_calls")
    assert result.metrics.eval_count == 5


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_streamed_reasoning_comes_back_as_thinking_under_either_name(key: str) -> None:
    stream = deltas(delta(**{key: "The user"}), delta(**{key: " asks."}), delta(content="Hi."))
    with on_wire(openai_at, stream) as (backend, _):
        result, chunks = call(backend, BackendRequest.for_spec(ROUND_TRIP.replace(think=True)))
    assert [(c.text, c.thinking) for c in chunks] == [
        ("", "The user"), ("", " asks."), ("Hi.", ""),
    ]  # fmt: skip
    assert (result.text, result.thinking) == ("Hi.", "The user asks.")


def test_chat_logprobs_come_back_with_at_most_the_alternatives_asked_for() -> None:
    tops = [{"token": t, "logprob": lp, "bytes": None} for t, lp in (("Hi", -0.1), ("Hey", -2.0))]
    item = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": tops}
    stream = deltas(delta(content="Hi") | {"logprobs": {"content": [item]}})
    request = BackendRequest.for_spec(ROUND_TRIP.replace(logprobs=True, top_logprobs=1))
    with on_wire(openai_at, stream) as (backend, _):
        result, _chunks = call(backend, request)
    assert result.logprobs == (Logprob("Hi", -0.1, (72, 105), (TokenLogprob("Hi", -0.1),)),)


@pytest.mark.parametrize(
    "logprobs",
    [
        # OpenAI's and vLLM's legacy shape, the alternatives as a map
        {"tokens": ["Hi"], "token_logprobs": [-0.1], "top_logprobs": [{"Hey": -2.0, "Hi": -0.1}]},
        # llama.cpp answers /v1/completions in the chat shape
        {"content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": [
            {"token": "Hi", "logprob": -0.1}, {"token": "Hey", "logprob": -2.0}]}]},
    ],
    ids=["legacy", "llama.cpp"],
)  # fmt: skip
def test_completion_logprobs_are_read_in_either_shape(logprobs: dict[str, Any]) -> None:
    head = {"id": "c", "object": "text_completion", "created": 0, "model": "tiny"}
    choice = {"index": 0, "text": "Hi", "finish_reason": "length", "logprobs": logprobs}
    answer = json_answer({**head, "choices": [choice], "usage": {"completion_tokens": 1}})
    spec = JobSpec.generate(model="tiny", prompt="say", logprobs=True, top_logprobs=2)
    request = dataclasses.replace(BackendRequest.for_spec(spec), stream=False)
    with on_wire(openai_at, lambda sent: answer) as (backend, _):
        result, _chunks = call(backend, request)
    tops = (TokenLogprob("Hi", -0.1), TokenLogprob("Hey", -2.0))
    assert result.logprobs == (Logprob("Hi", -0.1, top_logprobs=tops),)
    assert result.done_reason == "length"


def test_an_answer_without_streaming_comes_back_in_one_chunk_with_all_its_parts() -> None:
    message = {
        "role": "assistant", "content": None, "reasoning": "hmm",
        "tool_calls": [{"id": "call_p", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
    }  # fmt: skip
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
    whole = {"id": "c", "object": "chat.completion", "created": 0, "model": "tiny",
             "choices": [choice]}  # fmt: skip
    request = dataclasses.replace(BackendRequest.for_spec(ROUND_TRIP), stream=False)
    with on_wire(openai_at, lambda sent: json_answer(whole)) as (backend, _):
        result, chunks = call(backend, request)
    assert [(c.text, c.thinking, c.tool_calls) for c in chunks] == [("", "hmm", (PARIS,))]
    assert (result.tool_calls, result.done_reason) == ((PARIS,), "tool_calls")


@pytest.mark.parametrize(
    ("arguments", "field"),
    [('{"city": ', "tool_calls[0].arguments"), ('["Paris"]', "tool_calls[0].arguments")],
)
def test_a_malformed_tool_call_from_the_server_is_a_permanent_error_naming_it(
    arguments: str, field: str
) -> None:
    stream = deltas(
        delta(tool_calls=[{"index": 0, "id": "c", "type": "function",
                           "function": {"name": "get_weather", "arguments": arguments}}]),
        finish="tool_calls",
    )  # fmt: skip
    with on_wire(openai_at, stream) as (backend, _), pytest.raises(BackendError) as caught:
        call(backend, BackendRequest.for_spec(ROUND_TRIP))
    assert not caught.value.transient and field in str(caught.value)


# ------------------------------------------------------------ on the fake server

QUESTION = "What does get_weather say for Paris?"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(("tiny",)) as fake:
        yield fake


@pytest.fixture
def backend(server: FakeOpenAI) -> Iterator[OpenAICompatBackend]:
    client = OpenAICompatBackend(server.url, timeout=5.0)
    yield client
    client.close()


def asking(*messages: dict[str, Any], **fields: Any) -> BackendRequest:
    turns = [{"role": "user", "content": QUESTION}, *messages]
    return BackendRequest.for_spec(JobSpec.chat(model="tiny", messages=turns, **fields))


def test_the_official_openai_client_reads_the_fakes_tool_calls_and_reasoning(
    server: FakeOpenAI,
) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    tools: Iterable[Any] = [WEATHER.to_dict()]
    messages: Iterable[Any] = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="tiny", messages=messages, tools=tools)
    (made,) = whole.choices[0].message.tool_calls or []
    assert made.type == "function" and made.function.name == "get_weather"
    assert isinstance(json.loads(made.function.arguments)["city"], str)
    assert whole.choices[0].finish_reason == "tool_calls"
    pieces = list(
        client.chat.completions.create(model="tiny", messages=messages, tools=tools, stream=True)
    )
    calls = [c for p in pieces if p.choices for c in p.choices[0].delta.tool_calls or []]
    assert calls[0].id == made.id and calls[0].function and calls[0].function.name == "get_weather"
    assert "".join(c.function.arguments or "" for c in calls if c.function) == (
        made.function.arguments
    )
    thought = client.chat.completions.create(
        model="tiny",
        messages=messages,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    assert thought.choices[0].message.model_extra and thought.choices[0].message.content
    assert thought.choices[0].message.model_extra["reasoning_content"]
    client.close()


@pytest.mark.parametrize("reasoning_key", ["reasoning_content", "reasoning"])
def test_a_thinking_tool_round_trip_on_the_fake_server(reasoning_key: str) -> None:
    with FakeOpenAI(("tiny",), reasoning_key=reasoning_key) as fake:
        backend = OpenAICompatBackend(fake.url, timeout=5.0)
        first, chunks = call(backend, asking(tools=(WEATHER,), think=True))
        (made,) = first.tool_calls
        assert first.thinking and first.done_reason == "tool_calls"
        assert [c.tool_calls for c in chunks if c.tool_calls] == [(made,)]
        assert made.name == "get_weather" and made.id and made.id.startswith("call_")
        # The client answers by the tool's name alone, as Ollama's clients do.
        reply = {"role": "assistant", "content": "", "thinking": first.thinking,
                 "tool_calls": [made.to_dict()]}  # fmt: skip
        result = {"role": "tool", "content": "22 C", "tool_name": "get_weather"}
        second, _ = call(backend, asking(reply, result, tools=(WEATHER,)))
        backend.close()
    assert second.text and not second.tool_calls and second.done_reason == "stop"
    sent = fake.requests[-1][1]["messages"]
    assert sent[2]["tool_call_id"] == made.id and sent[1][reasoning_key] == first.thinking


def test_a_json_schema_answer_from_the_fake_satisfies_it(backend: OpenAICompatBackend) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    result, _ = call(backend, asking(format=schema))
    assert isinstance(json.loads(result.text)["city"], str)


def test_logprobs_from_the_fake_come_with_each_streamed_token(
    backend: OpenAICompatBackend,
) -> None:
    result, chunks = call(backend, asking(logprobs=True, top_logprobs=2))
    assert [c.logprobs[0].token for c in chunks] == [c.text for c in chunks]
    assert len(result.logprobs) == len(chunks) and all(
        len(item.top_logprobs) == 2 for item in result.logprobs
    )


def test_an_answer_after_a_tool_result_resumes_exactly_with_the_tools_still_offered(
    backend: OpenAICompatBackend, server: FakeOpenAI
) -> None:
    made = ToolCall("get_weather", {"city": "Paris"}, id="call_x")
    turns = (
        {"role": "assistant", "content": "", "tool_calls": [made.to_dict()]},
        {"role": "tool", "content": "22 C", "tool_call_id": "call_x"},
    )
    full, _ = call(backend, asking(*turns, tools=(WEATHER,)))
    assert full.text and not full.tool_calls
    token, first, sink = cancel_after(2)
    with pytest.raises(CallCancelledError):
        backend.complete(asking(*turns, tools=(WEATHER,)), sink, token)
    prefix = "".join(first)
    rest, _ = call(
        backend, dataclasses.replace(asking(*turns, tools=(WEATHER,)), resume_prefix=prefix)
    )
    assert prefix + rest.text == full.text
    assert server.requests[-1][1]["tools"] and server.requests[-1][1]["messages"][-1] == {
        "role": "assistant",
        "content": prefix,
    }


def test_gpulane_sends_a_schema_in_the_form_its_config_names(tmp_path: Path) -> None:
    """On a server that takes a schema only beside ``json_object`` (llama-cpp-python's),
    ``schema_form = "json_object"`` gets an answer that satisfies the schema; the
    default form is refused with the server's 500, which fails the job at once (a
    retry would send the same body) with the server's message."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    spec = JobSpec.chat(model="tiny", messages=[ChatMessage("user", QUESTION)], format=schema)
    answers = {}
    with FakeOpenAI(("tiny",), prefill=False, json_schema=False) as fake:
        for form in ("json_object", "json_schema"):
            config = Config(
                store=StoreSettings(path=str(tmp_path / f"{form}.sqlite3")),
                backend=BackendSettings(kind="openai", url=fake.url, schema_form=form),
            )
            with GpuLane.start(config, clock=SystemClock()) as lane:
                answers[form] = lane.submit(spec).job(5)
    parsed = answers["json_object"]
    assert parsed.result is not None and isinstance(json.loads(parsed.result)["city"], str)
    refused = answers["json_schema"]
    assert refused.state is JobState.FAILED and refused.attempts == 1
    assert "Input should be 'text' or 'json_object'" in (refused.error or "")


def test_gpulane_runs_a_tool_call_through_an_openai_server(
    server: FakeOpenAI, tmp_path: Path
) -> None:
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        backend=BackendSettings(kind="openai", url=server.url + "/v1"),
    )
    spec = JobSpec.chat(model="tiny", messages=[ChatMessage("user", QUESTION)], tools=[WEATHER])
    with GpuLane.start(config, clock=SystemClock()) as lane:
        answer = lane.submit(spec).result(5)
    (made,) = answer.tool_calls
    assert made.name == "get_weather" and answer == "" and answer.done_reason == "tool_calls"
