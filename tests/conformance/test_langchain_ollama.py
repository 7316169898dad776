"""LangChain's ``ChatOllama`` and ``OllamaEmbeddings`` (langchain-ollama 1.1) against the
gateway's Ollama API, one feature per test (issue 14, "Show").

What was followed, from ``langchain_ollama/chat_models.py``: every call streams
(``_chat_params`` sets ``stream: True``; ``invoke`` aggregates the chunks) through the
official ``ollama`` client, built with ``client_kwargs`` (here the bearer key).
``bind_tools`` sends OpenAI-style tool schemas and ignores ``tool_choice``; tool calls
come back from ``message.tool_calls`` with fresh uuid ids (Ollama's own ids are not
read); a ``ToolMessage`` is sent as a ``tool`` message whose ``tool_call_id`` the
``ollama`` client's ``Message`` drops. ``with_structured_output`` with
``method="json_schema"`` (the default) sends the pydantic model's JSON schema as
``format``; with ``method="function_calling"`` it binds the schema as the only tool and
parses the first call's arguments. ``reasoning=True`` sends ``think: true`` and puts
``message.thinking`` in ``additional_kwargs["reasoning_content"]``. ``OllamaEmbeddings``
posts ``/api/embed``.
"""

from __future__ import annotations

from typing import Any

from conformance_kit import THINKER, City, last_job, validate
from gateway_kit import ALICE, Stack, bearer
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama, OllamaEmbeddings

from protocol.frozen import thaw

QUESTION = "Why is the queue slow today?"


def chat_model(stack: Stack, model: str = "tiny", **options: Any) -> ChatOllama:
    """A ChatOllama on the gateway, with ALICE's key."""
    return ChatOllama(model=model, base_url=stack.url,
                      client_kwargs={"headers": bearer(ALICE)}, **options)  # fmt: skip


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_invoke_answers_with_an_ai_message_and_usage(stack: Stack) -> None:
    answer = chat_model(stack).invoke(QUESTION)
    assert isinstance(answer, AIMessage) and isinstance(answer.content, str) and answer.content
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    assert answer.response_metadata["done_reason"] == "stop"


def test_stream_gives_chunks_that_join_to_the_invoked_answer(stack: Stack) -> None:
    model = chat_model(stack)
    chunks = list(model.stream(QUESTION))
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks) == model.invoke(QUESTION).content


def test_bound_tools_make_a_round_trip_through_a_tool_message(stack: Stack) -> None:
    model = chat_model(stack).bind_tools([get_weather, add])
    question = HumanMessage("What does add make of 2 and 3?")
    called = model.invoke([question])
    assert isinstance(called, AIMessage) and called.content == ""
    (call,) = called.tool_calls
    assert call["name"] == "add" and isinstance(call["args"]["a"], int)
    result = add.invoke(call)  # a ToolMessage answering the call by its id
    answer = model.invoke([question, called, result])
    assert isinstance(answer.content, str) and answer.content and not answer.tool_calls
    sent = last_job(stack).spec.messages
    assert sent[-1].role == "tool" and sent[-1].content == result.content
    assert [c.name for c in sent[-2].tool_calls] == ["add"]


def test_structured_output_by_json_schema_parses_into_the_model(stack: Stack) -> None:
    structured = chat_model(stack).with_structured_output(City, method="json_schema")
    city = structured.invoke("Describe a city.")
    assert isinstance(city, City)
    assert thaw(last_job(stack).spec.format) == City.model_json_schema()


def test_structured_output_by_function_calling_parses_the_tool_arguments(stack: Stack) -> None:
    structured = chat_model(stack).with_structured_output(City, method="function_calling")
    city = structured.invoke("Describe a city.")
    assert isinstance(city, City)
    (sent_tool,) = last_job(stack).spec.tools
    assert sent_tool.name == "City"
    validate(City(**city.model_dump()).model_dump_json(), thaw(sent_tool.parameters))


def test_reasoning_puts_the_thinking_in_reasoning_content(stack: Stack) -> None:
    answer = chat_model(stack, THINKER, reasoning=True).invoke(QUESTION)
    thinking = answer.additional_kwargs.get("reasoning_content")
    assert thinking and isinstance(answer.content, str) and answer.content
    assert "<think>" not in answer.content and last_job(stack).spec.think is True
    streamed = list(chat_model(stack, THINKER, reasoning=True).stream(QUESTION))
    pieces = [c.additional_kwargs.get("reasoning_content", "") for c in streamed]
    assert "".join(pieces) == thinking


def test_ollama_embeddings_embed_documents_and_a_query(stack: Stack) -> None:
    embedder = OllamaEmbeddings(model="tiny", base_url=stack.url,
                                client_kwargs={"headers": bearer(ALICE)})  # fmt: skip
    documents = embedder.embed_documents(["first", "second"])
    assert len(documents) == 2 and {len(v) for v in documents} == {16}
    assert embedder.embed_query("first") == documents[0]
