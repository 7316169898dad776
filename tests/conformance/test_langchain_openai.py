"""LangChain's ``ChatOpenAI`` (langchain-openai 1.8) against the gateway's ``/v1`` routes,
one feature per test (issue 14, "Show").

What was followed, from ``langchain_openai/chat_models/base.py``: ``ChatOpenAI`` takes
the Responses API only when told to (``use_responses_api=True``), when a Responses-only
setting is given (``reasoning``, ``include``, ``truncation``, ``output_version=
"responses/v1"`` ...), for OpenAI's Responses-only model names, or for built-in tools
(``_use_responses_api``); a local model name with function tools goes to
``/v1/chat/completions``, so no test here needs ``use_responses_api=False``.
``bind_tools`` sends OpenAI tool schemas; ``with_structured_output`` defaults to
``method="json_schema"``, sent through the ``openai`` client's ``chat.completions.parse``
as a strict ``response_format``, and with ``method="function_calling"`` binds the schema
as the only tool with ``tool_choice`` naming it and ``parallel_tool_calls: false``. A
streamed answer's ``tool_call_chunks`` are joined by index into ``tool_calls``.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from conformance_kit import City, last_job
from gateway_kit import ALICE, Stack
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from protocol.frozen import thaw

QUESTION = "Why is the queue slow today?"


def chat_model(stack: Stack, **options: Any) -> ChatOpenAI:
    """A ChatOpenAI on the gateway's OpenAI API, with ALICE's key and no retries."""
    return ChatOpenAI(model="tiny", base_url=f"{stack.url}/v1", api_key=ALICE, max_retries=0,
                      **options)  # fmt: skip


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_invoke_uses_chat_completions_and_answers_with_usage(stack: Stack) -> None:
    model = chat_model(stack)
    assert not model._use_responses_api({})
    answer = model.invoke(QUESTION)
    assert isinstance(answer.content, str) and answer.content
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    assert answer.response_metadata["finish_reason"] == "stop"


def test_bound_tools_make_a_round_trip_through_a_tool_message(stack: Stack) -> None:
    model = chat_model(stack).bind_tools([get_weather, add])
    question = HumanMessage("What does add make of 2 and 3?")
    called = model.invoke([question])
    assert isinstance(called, AIMessage)
    (call,) = called.tool_calls
    assert call["name"] == "add" and call["id"] and isinstance(call["args"]["a"], int)
    assert called.response_metadata["finish_reason"] == "tool_calls"
    result = add.invoke(call)  # a ToolMessage answering the call by its id
    answer = model.invoke([question, called, result])
    assert isinstance(answer.content, str) and answer.content and not answer.tool_calls
    sent = last_job(stack).spec.messages
    assert sent[-1].role == "tool" and sent[-1].tool_call_id == call["id"]
    assert [c.id for c in sent[-2].tool_calls] == [call["id"]]


def test_streamed_tool_calls_are_joined_from_their_chunks(stack: Stack) -> None:
    model = chat_model(stack).bind_tools([get_weather, add])
    question: list[BaseMessage] = [HumanMessage("get_weather, then add")]
    joined: AIMessageChunk | None = None
    for chunk in model.stream(question):
        assert isinstance(chunk, AIMessageChunk)
        joined = chunk if joined is None else joined + chunk
    assert joined is not None
    whole = model.invoke(question)
    assert isinstance(whole, AIMessage)
    assert [(c["name"], c["args"]) for c in joined.tool_calls] == [
        (c["name"], c["args"]) for c in whole.tool_calls
    ]
    assert [c["name"] for c in joined.tool_calls] == ["get_weather", "add"]


def test_structured_output_by_json_schema_parses_into_the_model(stack: Stack) -> None:
    city = chat_model(stack).with_structured_output(City).invoke("Describe a city.")
    assert isinstance(city, City)
    schema = thaw(last_job(stack).spec.format)
    assert schema["required"] == list(City.model_fields)


def test_structured_output_by_function_calling_is_refused_naming_tool_choice(
    stack: Stack,
) -> None:
    """``method="function_calling"`` forces the call with a ``tool_choice`` naming the
    schema's tool; a model server only offers tools, which the model may answer in prose
    instead, so the gateway refuses it by name rather than drop it (``method="json_schema"``,
    above, is the way)."""
    structured = chat_model(stack).with_structured_output(City, method="function_calling")
    with pytest.raises(openai.BadRequestError) as refused:
        structured.invoke("Describe a city.")
    assert refused.value.param == "tool_choice" and "one tool" in refused.value.message
