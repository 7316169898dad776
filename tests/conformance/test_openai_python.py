"""The official ``openai`` Python client (openai-python 3.63) against the gateway's
``/v1`` routes, one feature per test (issue 14, "Show").

What was followed, from the client's source: ``chat.completions.create`` sends
``tools``, ``tool_choice``, ``reasoning_effort``, messages with ``tool_calls`` (arguments
a JSON string) and ``tool`` messages with ``tool_call_id``, and content parts
(``image_url`` with a ``data:`` URL); the answer's message is a pydantic model that keeps
fields the API does not define (``reasoning_content``, as DeepSeek, vLLM and llama.cpp
send a model's reasoning) as extras. ``chat.completions.stream``
(``lib/streaming/chat/_completions.py``) assembles streamed ``tool_calls`` deltas by
their ``index`` (the first delta of a call carries its ``id``, ``type`` and name, the
rest pieces of its arguments). ``chat.completions.parse`` turns a pydantic model into
``response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict":
true}}`` (``lib/_parsing/_completions.py``) and parses the content back into it.
``embeddings.create`` asks for base64 unless told otherwise. The simulated model's side
is docs/backends.md's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conformance_kit import ADD, EYE, IMAGES, THINKER, WEATHER, City, data_url, last_job, validate
from gateway_kit import ALICE, Stack

from protocol.frozen import thaw

QUESTION: list[Any] = [{"role": "user", "content": "Why is the queue slow today?"}]


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key=ALICE, max_retries=0) as official:
        yield official


# --------------------------------------------------------------------------- chat


def test_a_chat_completion_answers_with_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=QUESTION)
    (choice,) = reply.choices
    assert choice.message.content and choice.finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_a_streamed_chat_completion_joins_to_the_whole_answer(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    whole = client.chat.completions.create(model="tiny", messages=QUESTION)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage == whole.usage


# -------------------------------------------------------------------------- tools


def test_a_tool_round_trip_answers_the_call_by_its_id(stack: Stack, client: openai.OpenAI) -> None:
    question: list[Any] = [{"role": "user", "content": "What does add make of 2 and 3?"}]
    reply = client.chat.completions.create(model="tiny", messages=question, tools=[WEATHER, ADD],
                                           tool_choice="auto")  # fmt: skip
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id and call.function.name == "add"
    validate(call.function.arguments, ADD["function"]["parameters"])
    result = {"role": "tool", "tool_call_id": call.id, "content": "5"}
    answer = client.chat.completions.create(
        model="tiny", messages=[*question, choice.message, result], tools=[WEATHER, ADD]
    )
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "stop"
    sent = last_job(stack).spec.messages
    assert [c.id for c in sent[-2].tool_calls] == [call.id]
    assert sent[-2].tool_calls[0].arguments == json.loads(call.function.arguments)
    assert sent[-1].role == "tool" and sent[-1].tool_call_id == call.id
    other = {**result, "content": "6"}
    again = client.chat.completions.create(
        model="tiny", messages=[*question, choice.message, other], tools=[WEATHER, ADD]
    )
    assert again.choices[0].message.content != answer.choices[0].message.content


def test_streamed_tool_call_deltas_are_assembled_by_the_client(client: openai.OpenAI) -> None:
    question: list[Any] = [{"role": "user", "content": "get_weather, then add"}]
    with client.chat.completions.stream(model="tiny", messages=question,
                                        tools=[WEATHER, ADD]) as stream:  # fmt: skip
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [e.name for e in done] == ["get_weather", "add"] and [e.index for e in done] == [0, 1]
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    whole = client.chat.completions.create(model="tiny", messages=question, tools=[WEATHER, ADD])
    expected = whole.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (c.function.name, json.loads(c.function.arguments)) for c in expected
    ]
    assert all(c.id and c.type == "function" for c in calls)


# --------------------------------------------------------------- structured output


def test_parse_with_a_pydantic_model_gets_an_instance_of_it(
    stack: Stack, client: openai.OpenAI
) -> None:
    reply = client.chat.completions.parse(model="tiny", messages=QUESTION, response_format=City)
    message = reply.choices[0].message
    assert isinstance(message.parsed, City) and message.refusal is None
    schema = thaw(last_job(stack).spec.format)
    assert schema["required"] == list(City.model_fields) and not schema["additionalProperties"]
    validate(message.content or "", schema)


def test_json_object_mode_gives_a_json_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=QUESTION,
                                           response_format={"type": "json_object"})  # fmt: skip
    assert isinstance(validate(reply.choices[0].message.content or "", {"type": "object"}), dict)


# ---------------------------------------------------------------------- reasoning


def test_reasoning_effort_gives_reasoning_content_beside_the_answer(
    client: openai.OpenAI,
) -> None:
    reply = client.chat.completions.create(model=THINKER, messages=QUESTION,
                                           reasoning_effort="low")  # fmt: skip
    message = reply.choices[0].message
    assert message.content and getattr(message, "reasoning_content", None)


def test_streamed_reasoning_content_comes_before_the_answer(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=THINKER, messages=QUESTION, stream=True,
                                                 reasoning_effort="low"))  # fmt: skip
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [getattr(d, "reasoning_content", None) or "" for d in deltas]
    content = [d.content or "" for d in deltas]
    last_reasoning = max(i for i, piece in enumerate(reasoning) if piece)
    assert not any(content[: last_reasoning + 1]) and "".join(content[last_reasoning:])
    whole = client.chat.completions.create(model=THINKER, messages=QUESTION,
                                           reasoning_effort="low")  # fmt: skip
    assert "".join(reasoning) == getattr(whole.choices[0].message, "reasoning_content", None)


# ------------------------------------------------------------------------- images


def test_image_content_parts_reach_a_vision_model(client: openai.OpenAI) -> None:
    def look(*images: bytes) -> str:
        parts: list[Any] = [{"type": "text", "text": "What is in the picture?"}]
        parts += [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
        reply = client.chat.completions.create(
            model=EYE, messages=[{"role": "user", "content": parts}]
        )
        return reply.choices[0].message.content or ""

    answers = {look(IMAGES[0]), look(IMAGES[1]), look()}
    assert len(answers) == 3 and all(answers)


# ---------------------------------------------------------------- the other routes


def test_models_list_and_retrieve_name_the_served_models(client: openai.OpenAI) -> None:
    listed = {model.id for model in client.models.list()}
    assert {"tiny:latest", f"{THINKER}:latest", f"{EYE}:latest"} <= listed
    found = client.models.retrieve(THINKER)
    assert found.id == THINKER and found.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_embeddings_give_one_vector_per_text(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model="tiny", input=["first", "second"])
    assert [item.index for item in reply.data] == [0, 1]
    assert {len(item.embedding) for item in reply.data} == {16}
