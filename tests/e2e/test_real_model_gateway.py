"""``gpulane serve`` with ``backend.kind = "openai"`` in front of a real model: llama-cpp-
python's server with SmolLM2-135M (conftest.py), driven with the official ``ollama`` and
``openai`` clients as a user would (issue 14, "Show"). Run by ``make test-real``.

Sampling is greedy (temperature 0, a fixed seed), so an answer and its stream are the
same text. The catalog routes answer from the server's ``/v1/models``.
"""

from __future__ import annotations

from typing import Any

import ollama
import openai
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
