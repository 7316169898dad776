"""The official ``ollama`` Python client (ollama-python 0.6.3) against the gateway, one
feature per test (issue 14, "Show").

What was followed, from the client's ``_client.py`` and ``_types.py``: ``chat`` sends
``tools`` (dicts, ``Tool`` models, or Python functions turned into a schema from their
Google-style docstring by ``_utils.convert_function_to_tool``), ``think`` (a bool or a
level), ``format`` (``"json"`` or a schema) and messages whose ``images`` are base64
(``_copy_images``) and whose unknown keys are dropped (``Message`` has ``tool_name``, no
``tool_call_id``); it parses ``message.thinking`` and ``message.tool_calls`` (arguments
an object). ``generate`` sends ``suffix``, ``raw``, ``system``, ``template`` and
``context``, and reads ``context`` back. ``embed``, ``show``, ``list`` and ``ps`` are
``/api/embed``, ``/api/show``, ``/api/tags`` and ``/api/ps``. The simulated model's side
(which tool it calls, how it thinks, what a schema gets) is docs/backends.md's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import ollama
import pytest
from conformance_kit import (
    ADD,
    CODER,
    EYE,
    IMAGES,
    THINKER,
    WEATHER,
    City,
    last_job,
    validate,
)
from gateway_kit import ALICE, Stack, bearer

from protocol import ToolCall

QUESTION = [{"role": "user", "content": "Why is the queue slow today?"}]


@pytest.fixture
def client(stack: Stack) -> Iterator[ollama.Client]:
    with ollama.Client(host=stack.url, headers=bearer(ALICE)) as official:
        yield official


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
      a: the first factor
      b: the second factor
    """
    return a * b


# --------------------------------------------------------------------------- chat


def test_chat_answers_with_ollamas_message_and_metrics(client: ollama.Client) -> None:
    reply = client.chat(model="tiny", messages=QUESTION)
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done and reply.done_reason == "stop" and reply.eval_count


def test_a_streamed_chat_joins_to_the_whole_answer(client: ollama.Client) -> None:
    parts = list(client.chat(model="tiny", messages=QUESTION, stream=True))
    whole = client.chat(model="tiny", messages=QUESTION)
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


# -------------------------------------------------------------------------- tools


def test_a_tool_round_trip_calls_the_named_tool_and_answers_from_its_result(
    stack: Stack, client: ollama.Client
) -> None:
    question = [{"role": "user", "content": "What does add make of 2 and 3?"}]
    reply = client.chat(model="tiny", messages=question, tools=[WEATHER, ADD])
    (call,) = reply.message.tool_calls or []
    assert call.function.name == "add" and reply.done_reason == "stop"
    arguments = dict(call.function.arguments)
    jsonschema.validate(arguments, ADD["function"]["parameters"])
    result = {"role": "tool", "content": "5", "tool_name": "add"}
    answer = client.chat(model="tiny", messages=[*question, reply.message, result], tools=[ADD])
    assert answer.message.content and not answer.message.tool_calls
    sent = last_job(stack).spec.messages
    assert sent[-2].tool_calls == (ToolCall("add", arguments),)  # the client drops the id
    assert sent[-1].role == "tool" and sent[-1].tool_name == "add"
    other = {**result, "content": "6"}
    again = client.chat(model="tiny", messages=[*question, reply.message, other], tools=[ADD])
    assert again.message.content != answer.message.content  # the model read the result


def test_a_python_function_is_a_tool_whose_arguments_come_back_typed(
    client: ollama.Client,
) -> None:
    question = [{"role": "user", "content": "Use multiply on 6 and 7."}]
    reply = client.chat(model="tiny", messages=question, tools=[multiply])
    (call,) = reply.message.tool_calls or []
    assert call.function.name == "multiply"
    assert isinstance(multiply(**call.function.arguments), int)


def test_a_streamed_tool_call_comes_in_a_chunk_of_its_own(client: ollama.Client) -> None:
    question = [{"role": "user", "content": "get_weather, then add"}]
    parts = list(client.chat(model="tiny", messages=question, tools=[WEATHER, ADD], stream=True))
    with_calls = [part.message.tool_calls for part in parts if part.message.tool_calls]
    assert [len(calls) for calls in with_calls] == [1, 1]
    calls = [calls[0] for calls in with_calls]
    assert [c.function.name for c in calls] == ["get_weather", "add"]
    whole = client.chat(model="tiny", messages=question, tools=[WEATHER, ADD])
    assert calls == list(whole.message.tool_calls or [])
    assert parts[-1].done and parts[-1].done_reason == "stop"


# ----------------------------------------------------------------------- thinking


def test_think_gives_the_thinking_beside_the_answer(client: ollama.Client) -> None:
    reply = client.chat(model=THINKER, messages=QUESTION, think=True)
    assert reply.message.thinking and reply.message.content
    plain = client.chat(model=THINKER, messages=QUESTION, think=False)
    assert plain.message.thinking is None and plain.message.content == reply.message.content


def test_streamed_thinking_comes_before_the_answer(client: ollama.Client) -> None:
    parts = list(client.chat(model=THINKER, messages=QUESTION, think="low", stream=True))
    kinds = ["thinking" if p.message.thinking else "content" for p in parts[:-1]]
    assert kinds == sorted(kinds, reverse=True) and set(kinds) == {"thinking", "content"}
    whole = client.chat(model=THINKER, messages=QUESTION, think="low")
    assert "".join(p.message.thinking or "" for p in parts) == whole.message.thinking


def test_think_on_a_model_that_cannot_think_is_ollamas_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError, match="does not support thinking") as refused:
        client.chat(model="tiny", messages=QUESTION, think=True)
    assert refused.value.status_code == 400


# --------------------------------------------------------------- structured output


def test_format_json_gives_a_json_object(client: ollama.Client) -> None:
    reply = client.chat(model="tiny", messages=QUESTION, format="json")
    assert isinstance(validate(reply.message.content or "", {"type": "object"}), dict)


def test_a_schema_format_gives_json_that_satisfies_it(client: ollama.Client) -> None:
    schema = City.model_json_schema()
    reply = client.chat(model="tiny", messages=QUESTION, format=schema)
    text = reply.message.content or ""
    validate(text, schema)
    assert City.model_validate_json(text).population >= 0


# ------------------------------------------------------------------------- images


def test_a_vision_model_sees_the_image_a_message_carries(client: ollama.Client) -> None:
    def look(*images: bytes) -> str:
        turn: dict[str, Any] = {"role": "user", "content": "What is in the picture?"}
        reply = client.chat(model=EYE, messages=[{**turn, "images": list(images) or None}])
        return reply.message.content or ""

    answers = {look(IMAGES[0]), look(IMAGES[1]), look()}
    assert len(answers) == 3 and all(answers)


def test_generate_carries_images_to_a_vision_model(client: ollama.Client) -> None:
    answers = {
        client.generate(model=EYE, prompt="Describe it.", images=[image]).response
        for image in IMAGES
    }
    assert len(answers) == 2


# ----------------------------------------------------------------------- generate


def test_generate_with_a_suffix_fills_in_the_middle(stack: Stack, client: ollama.Client) -> None:
    middle = client.generate(model=CODER, prompt="def add(a, b):", suffix="    return result")
    assert last_job(stack).spec.suffix == "    return result"
    plain = client.generate(model=CODER, prompt="def add(a, b):")
    assert middle.response and middle.response != plain.response


def test_a_suffix_on_a_model_without_insert_is_ollamas_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError, match="does not support insert") as refused:
        client.generate(model="tiny", prompt="def add(a, b):", suffix="    return result")
    assert refused.value.status_code == 400


def test_generate_raw_skips_the_template_and_returns_no_context(
    stack: Stack, client: ollama.Client
) -> None:
    raw = client.generate(model="tiny", prompt="<|user|>\nhi\n<|assistant|>\n", raw=True)
    assert raw.response and raw.context is None
    assert last_job(stack).spec.raw is True
    with pytest.raises(ollama.ResponseError) as refused:
        client.generate(model="tiny", prompt="hi", raw=True, system="Be brief.")
    assert refused.value.status_code == 400 and "raw" in str(refused.value.error)


def test_generate_system_and_template_change_the_prompt_the_model_reads(
    stack: Stack, client: ollama.Client
) -> None:
    plain = client.generate(model="tiny", prompt="Why is the sky blue?").response
    system = client.generate(model="tiny", prompt="Why is the sky blue?", system="Be a pirate.")
    assert last_job(stack).spec.system == "Be a pirate."
    template = client.generate(model="tiny", prompt="Why is the sky blue?",
                               template="Q: {{ .Prompt }}\nA:")  # fmt: skip
    assert last_job(stack).spec.template == "Q: {{ .Prompt }}\nA:"
    assert len({plain, system.response, template.response}) == 3


def test_generate_context_continues_the_previous_answer(
    stack: Stack, client: ollama.Client
) -> None:
    first = client.generate(model="tiny", prompt="Tell me about queues.")
    assert first.context
    follow_up = client.generate(model="tiny", prompt="And then?", context=first.context)
    assert last_job(stack).spec.context == tuple(first.context)
    fresh = client.generate(model="tiny", prompt="And then?")
    assert follow_up.response != fresh.response
    assert follow_up.context and len(follow_up.context) > len(first.context)


# ---------------------------------------------------------------- the other routes


def test_embed_gives_one_vector_per_text(client: ollama.Client) -> None:
    reply = client.embed(model="tiny", input=["first", "second"])
    assert len(reply.embeddings) == 2 and {len(v) for v in reply.embeddings} == {16}


def test_show_lists_each_models_capabilities(client: ollama.Client) -> None:
    assert client.show("tiny").capabilities == ["completion", "tools"]
    assert client.show(THINKER).capabilities == ["completion", "tools", "thinking"]
    assert client.show(EYE).capabilities == ["completion", "vision"]
    shown = client.show(CODER)
    assert shown.capabilities == ["completion", "tools", "insert"]
    assert shown.details is not None and shown.details.family == "llama" and shown.template


def test_list_names_every_model_the_server_has(client: ollama.Client) -> None:
    names = {model.model for model in client.list().models}
    assert names == {f"{n}:latest" for n in ("tiny", "endless", THINKER, EYE, CODER)}


def test_ps_shows_the_model_a_chat_loaded(client: ollama.Client) -> None:
    client.chat(model=THINKER, messages=QUESTION, think=False)
    (loaded,) = client.ps().models
    assert loaded.model == f"{THINKER}:latest" and loaded.expires_at is not None
