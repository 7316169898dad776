"""The OpenAI API's chat request through the gateway, with the official ``openai`` client
(openai-python 3.63): tools and a tool round trip, streamed tool-call deltas, tool_choice
and parallel_tool_calls, structured output, reasoning, image content parts and logprobs;
``suffix`` on the older completions; what a job cannot carry refused by name.

Shapes follow openai-python's ``types/chat`` (``completion_create_params``,
``chat_completion_chunk``: a streamed call's first delta carries its index, id, type and
name, later ones pieces of its arguments, which ``chat.completions.stream`` assembles by
index in ``lib/streaming/chat/_completions.py``); ``reasoning_content`` is where vLLM and
DeepSeek put a model's reasoning; the reasoning_effort scale is mapped as Ollama's
``openai/openai.go`` maps it; ``parallel_tool_calls: false`` keeps the first call, as vLLM
does. The simulated model's side is docs/backends.md's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from fields_kit import (
    CITY,
    CLOCK,
    PICTURES,
    SEER,
    THINKER,
    WEATHER,
    b64,
    fields_stack,
    newest_job,
    satisfies,
)
from gateway_kit import ALICE, HELLO, Stack

from protocol.frozen import thaw

BOTH: list[Any] = [{"role": "user", "content": "the clock and the weather, please"}]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with fields_stack(tmp_path) as running:
        yield running


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key=ALICE, max_retries=0) as official:
        yield official


def events(stack: Stack, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The data of each server-sent event of a streamed chat completion, before [DONE]."""
    with stack.client() as http:
        response = http.post("/v1/chat/completions", json={"stream": True, **body})
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def refusal(stack: Stack, body: dict[str, Any], path: str = "/v1/chat/completions") -> str:
    """The field a 400 names, after checking that nothing reached the model server."""
    with stack.client() as http:
        response = http.post(path, json={"model": "tiny", **body})
    assert response.status_code == 400, response.text
    assert stack.sim.stats().calls_started == 0
    field: str = response.json()["error"]["param"]
    return field


# --------------------------------------------------------------------------- tools


def test_a_tool_round_trip_sends_calls_as_json_strings_and_answers_the_result(
    stack: Stack, client: openai.OpenAI
) -> None:
    asked: list[Any] = [{"role": "user", "content": "what is the weather in Oslo?"}]
    reply = client.chat.completions.create(model="tiny", messages=asked, tools=[CLOCK, WEATHER])
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id and call.function.name == "weather"
    assert satisfies(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    result = {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}
    answer = client.chat.completions.create(
        model="tiny", messages=[*asked, choice.message, result], tools=[CLOCK, WEATHER]
    )
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    sent = newest_job(stack).spec.messages
    assert sent[1].tool_calls[0].arguments == json.loads(call.function.arguments)
    assert (sent[2].tool_call_id, sent[2].tool_name) == (call.id, "weather"), (
        "the tool's name found by the call it answers, as Ollama's OpenAI layer does"
    )


def test_streamed_tool_calls_open_with_id_and_name_then_give_their_arguments(
    stack: Stack,
) -> None:
    chunks = events(stack, {"model": "tiny", "messages": BOTH, "tools": [CLOCK, WEATHER]})
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [c["index"] for c in calls] == [0, 0, 1, 1]
    opened, given = calls[0::2], calls[1::2]
    assert [c["function"]["name"] for c in opened] == ["clock", "weather"]
    assert all(c["id"] and c["type"] == "function" and c["function"]["arguments"] == ""
               for c in opened)  # fmt: skip
    assert all(set(c) == {"index", "function"} for c in given)
    assert satisfies(json.loads(given[0]["function"]["arguments"]), CLOCK["function"]["parameters"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_the_official_client_assembles_the_streamed_calls_into_the_whole_answer(
    client: openai.OpenAI,
) -> None:
    with client.chat.completions.stream(model="tiny", messages=BOTH,
                                        tools=[CLOCK, WEATHER]) as stream:  # fmt: skip
        done = [e.name for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    whole = client.chat.completions.create(model="tiny", messages=BOTH, tools=[CLOCK, WEATHER])
    assert done == ["clock", "weather"]

    def calls(message: Any) -> list[tuple[str, Any]]:
        return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]

    assert calls(final.choices[0].message) == calls(whole.choices[0].message)
    assert final.choices[0].finish_reason == "tool_calls"


def test_parallel_tool_calls_false_keeps_the_first_call_only(
    stack: Stack, client: openai.OpenAI
) -> None:
    whole = client.chat.completions.create(
        model="tiny", messages=BOTH, tools=[CLOCK, WEATHER], parallel_tool_calls=False
    )
    assert [c.function.name for c in whole.choices[0].message.tool_calls or ()] == ["clock"]
    body = {"model": "tiny", "messages": BOTH, "tools": [CLOCK, WEATHER],
            "parallel_tool_calls": False}  # fmt: skip
    streamed = [c["choices"][0]["delta"].get("tool_calls") for c in events(stack, body)]
    assert [call[0]["index"] for call in streamed if call] == [0, 0]


def test_tool_choice_none_runs_the_call_without_its_tools(
    stack: Stack, client: openai.OpenAI
) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=BOTH, tools=[CLOCK, WEATHER], tool_choice="none"
    )
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "stop" and newest_job(stack).spec.tools == ()
    client.chat.completions.create(model="tiny", messages=BOTH, tools=[CLOCK], tool_choice="auto")
    assert [tool.name for tool in newest_job(stack).spec.tools] == ["clock"]


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "clock"}}]
)
def test_a_tool_choice_that_forces_a_call_is_refused_by_name(stack: Stack, choice: Any) -> None:
    body = {"messages": BOTH, "tools": [CLOCK], "tool_choice": choice}
    assert refusal(stack, body) == "tool_choice"


# -------------------------------------------------------------- structured output


def test_a_json_schema_response_format_gives_json_that_satisfies_it(
    stack: Stack, client: openai.OpenAI
) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=HELLO,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": CITY, "strict": True}},
    )  # fmt: skip
    assert satisfies(json.loads(reply.choices[0].message.content or ""), CITY)
    assert thaw(newest_job(stack).spec.format) == CITY
    plain = client.chat.completions.create(
        model="tiny", messages=HELLO, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(plain.choices[0].message.content or ""), dict)


class Town(pydantic.BaseModel):
    """What ``chat.completions.parse`` is asked for."""

    name: str
    population: int = pydantic.Field(ge=0)
    rivers: list[str]


def test_parse_gets_an_instance_of_the_pydantic_model(client: openai.OpenAI) -> None:
    reply = client.chat.completions.parse(model="tiny", messages=HELLO, response_format=Town)
    assert isinstance(reply.choices[0].message.parsed, Town)


# ----------------------------------------------------------------------- reasoning


def test_reasoning_effort_thinks_and_answers_with_reasoning_content(
    stack: Stack, client: openai.OpenAI
) -> None:
    reply = client.chat.completions.create(
        model=THINKER, messages=HELLO, reasoning_effort="minimal"
    )
    message = reply.choices[0].message
    assert message.content and getattr(message, "reasoning_content", None)
    assert newest_job(stack).spec.think == "low", "minimal is Ollama's low"
    chunks = events(stack, {"model": THINKER, "messages": HELLO, "reasoning_effort": "xhigh"})
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    thought = "".join(d.get("reasoning_content", "") for d in deltas)
    said = [d.get("content") or "" for d in deltas]
    first_said = min(i for i, piece in enumerate(said) if piece)
    assert thought and not any("reasoning_content" in d for d in deltas[first_said:])
    assert newest_job(stack).spec.think == "max"
    quiet = client.chat.completions.create(model=THINKER, messages=HELLO, reasoning_effort="none")
    assert not getattr(quiet.choices[0].message, "reasoning_content", None)
    assert quiet.choices[0].message.content == message.content


@pytest.mark.parametrize(
    ("effort", "think"),
    [("none", False), ("minimal", "low"), ("low", "low"), ("medium", "medium"),
     ("high", "high"), ("xhigh", "max"), ("max", "max"), ("ultra", "max")],
)  # fmt: skip
def test_every_reasoning_effort_is_ollamas_think_level(
    stack: Stack, client: openai.OpenAI, effort: Any, think: bool | str
) -> None:
    client.chat.completions.create(model=THINKER, messages=HELLO, reasoning_effort=effort)
    assert newest_job(stack).spec.think == think


def test_reasoning_asked_of_a_model_that_cannot_is_a_400(client: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="does not support thinking"):
            client.chat.completions.create(
                model="tiny", messages=HELLO, reasoning_effort="high", stream=stream
            )


def test_an_assistant_turns_reasoning_content_is_carried_as_thinking(
    stack: Stack, client: openai.OpenAI
) -> None:
    turn = {"role": "assistant", "content": "Hello.", "reasoning_content": "A greeting."}
    client.chat.completions.create(model=THINKER, messages=[*HELLO, turn, *HELLO])  # type: ignore[list-item]
    assert newest_job(stack).spec.messages[1].thinking == "A greeting."


# -------------------------------------------------------------------------- images


def data_url(picture: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{b64(picture)}"


def test_image_parts_reach_a_vision_model_as_the_messages_images(
    stack: Stack, client: openai.OpenAI
) -> None:
    def look(*pictures: bytes) -> str:
        parts: list[Any] = [{"type": "text", "text": "What is this?"}]
        parts += [{"type": "image_url", "image_url": {"url": data_url(p)}} for p in pictures]
        reply = client.chat.completions.create(
            model=SEER, messages=[{"role": "user", "content": parts}]
        )
        return reply.choices[0].message.content or ""

    first = look(PICTURES[0])
    assert len({first, look(PICTURES[1]), look()}) == 3
    as_ollama_takes_it = [{"type": "image_url", "image_url": data_url(PICTURES[0], media="")}]
    same = client.chat.completions.create(
        model=SEER, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"}, *as_ollama_takes_it]}],
    )  # fmt: skip
    assert same.choices[0].message.content == first, "a URL as a plain string, no media type"
    look(*PICTURES)
    (message,) = newest_job(stack).spec.messages
    assert message.images == tuple(b64(p) for p in PICTURES)
    assert message.content == "What is this?"


@pytest.mark.parametrize(
    ("part", "field"),
    [
        ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
         "messages[0].content[1].image_url"),
        ({"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}},
         "messages[0].content[1].image_url"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,not base64"}},
         "messages[0].content[1].image_url"),
        ({"type": "input_audio", "input_audio": {"data": "aGk=", "format": "wav"}},
         "messages[0].content[1].type"),
    ],
)  # fmt: skip
def test_an_image_gpulane_cannot_carry_is_a_400_naming_the_part(
    stack: Stack, part: dict[str, Any], field: str
) -> None:
    content = [{"type": "text", "text": "What is this?"}, part]
    assert refusal(stack, {"messages": [{"role": "user", "content": content}]}) == field


# ------------------------------------------------------------------------ logprobs


def test_logprobs_come_in_openais_shape_whole_and_streamed(
    stack: Stack, client: openai.OpenAI
) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=HELLO, logprobs=True, top_logprobs=2
    )
    (choice,) = reply.choices
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    assert all(len(t.top_logprobs) == 2 and t.bytes == list(t.token.encode()) for t in tokens)
    chunks = events(stack, {"model": "tiny", "messages": HELLO, "logprobs": True})
    streamed = [t for c in chunks if c["choices"] for t in
                (c["choices"][0].get("logprobs") or {}).get("content", [])]  # fmt: skip
    assert [t["token"] for t in streamed] == [t.token for t in tokens]
    plain = client.chat.completions.create(model="tiny", messages=HELLO)
    assert plain.choices[0].logprobs is None


# ----------------------------------------------------------- what is not carried


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"n": 3}, "n"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"store": True}, "store"),
        ({"verbosity": "low"}, "verbosity"),
        ({"moderation": {"mode": "block"}}, "moderation"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}, "tools[0].type"),
        ({"tools": [{**CLOCK, "function": {**CLOCK["function"], "strict": True}}]},
         "tools[0].function.strict"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"messages": [{"role": "user", "content": "hi", "name": "alice"}]}, "messages[0].name"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages[0].role"),
        ({"messages": [*HELLO, {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
         "messages[1].tool_calls[0].function.arguments"),
        ({"messages": [*HELLO, {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
         "messages[1].tool_calls[0].function.arguments"),
    ],
)  # fmt: skip
def test_what_a_job_cannot_carry_is_a_400_naming_the_field(
    stack: Stack, extra: dict[str, Any], field: str
) -> None:
    assert refusal(stack, {"messages": HELLO, **extra}) == field


def test_fields_that_only_tag_a_request_are_accepted(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=HELLO, user="alice@example.com", metadata={"run": "7"},
        store=False, service_tier="auto", n=1, parallel_tool_calls=True,
        frequency_penalty=0.5, presence_penalty=0.5,
    )  # fmt: skip
    assert reply.choices[0].message.content


# ------------------------------------------------------------- older completions


def test_a_text_completion_carries_its_suffix(stack: Stack, client: openai.OpenAI) -> None:
    client.completions.create(model="coder", prompt="def f():", suffix="    return x")
    assert newest_job(stack).spec.suffix == "    return x"


@pytest.mark.parametrize(
    ("extra", "field"), [({"echo": True}, "echo"), ({"best_of": 2}, "best_of"),
                         ({"logprobs": 2}, "logprobs")],
)  # fmt: skip
def test_what_a_text_completion_cannot_carry_is_refused_by_name(
    stack: Stack, extra: dict[str, Any], field: str
) -> None:
    assert refusal(stack, {"prompt": "hi", **extra}, "/v1/completions") == field


def test_a_remote_image_is_refused_with_a_message_that_says_why(stack: Stack) -> None:
    part = {"type": "image_url", "image_url": "http://example.com/cat.png"}
    with stack.client() as http:
        response = http.post("/v1/chat/completions", json={
            "model": SEER, "messages": [{"role": "user", "content": [part]}]})  # fmt: skip
    assert response.status_code == 400
    assert "does not fetch" in response.json()["error"]["message"]
