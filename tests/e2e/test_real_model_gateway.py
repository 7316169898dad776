"""``gpulane serve`` with ``backend.kind = "openai"`` in front of a real model: llama-cpp-
python's server with SmolLM2-135M (conftest.py), driven with the official ``ollama`` and
``openai`` clients as a user would (issue 14, "Show"). Run by ``make test-real``.

Sampling is greedy (temperature 0, a fixed seed), so an answer and its stream are the
same text. The catalog routes answer from the server's ``/v1/models``.

Structured output: llama-cpp-python's server (0.3.36, ``server/types.py``) takes
``response_format`` as ``{"type": "json_object", "schema": {...}}`` only
(``llama_types.ChatCompletionRequestResponseFormat``: type "text" or "json_object"), so
the gateway's config says ``schema_form = "json_object"`` (conftest.py); the server
compiles the schema into a grammar that constrains every token
(``llama_chat_format._grammar_for_response_format``), so even a 135M model's answer
parses against it.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import ollama
import openai
import pydantic
import pytest
from real_model_kit import MODEL

pytestmark = pytest.mark.real

QUESTION: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0.0, "seed": 1}


def test_the_catalog_routes_list_the_model_the_server_serves(
    ollama_client: ollama.Client, openai_client: openai.OpenAI
) -> None:
    assert [m.model for m in ollama_client.list().models] == [MODEL]
    assert [m.id for m in openai_client.models.list()] == [MODEL]
    assert openai_client.models.retrieve(MODEL).id == MODEL


def test_an_ollama_client_chats_and_streams_through_the_gateway(
    ollama_client: ollama.Client,
) -> None:
    options = {**GREEDY, "num_predict": 24}
    reply = ollama_client.chat(model=MODEL, messages=QUESTION, options=options)
    assert "Paris" in (reply.message.content or "") and reply.done
    assert reply.eval_count is not None and 0 < reply.eval_count <= 24
    parts = list(ollama_client.chat(model=MODEL, messages=QUESTION, options=options, stream=True))
    assert len(parts) > 3 and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == reply.message.content


def test_an_openai_client_chats_and_streams_through_the_gateway(
    openai_client: openai.OpenAI,
) -> None:
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, **GREEDY
    )
    text = reply.choices[0].message.content or ""
    assert "Paris" in text and reply.usage is not None and reply.usage.completion_tokens <= 24
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, stream=True, **GREEDY
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text


class Capital(pydantic.BaseModel):
    """A structured answer with bounded strings, so the constrained answer stays short."""

    country: str = pydantic.Field(max_length=30)
    capital: str = pydantic.Field(max_length=30)


def test_structured_output_parses_against_its_json_schema(
    ollama_client: ollama.Client, openai_client: openai.OpenAI
) -> None:
    asked: list[Any] = [{"role": "user", "content": "Name a country and its capital as JSON."}]
    parsed = openai_client.chat.completions.parse(
        model=MODEL, messages=asked, response_format=Capital, max_tokens=80, **GREEDY
    )
    message = parsed.choices[0].message
    assert isinstance(message.parsed, Capital) and parsed.choices[0].finish_reason == "stop"
    schema = Capital.model_json_schema()
    reply = ollama_client.chat(model=MODEL, messages=asked, format=schema,
                               options={**GREEDY, "num_predict": 80})  # fmt: skip
    text = reply.message.content or ""
    jsonschema.validate(json.loads(text), schema)
    assert Capital.model_validate_json(text).capital
