"""The OpenAI-compatible API end to end with the official ``openai`` client: chat and text
completions, whole and streamed, errors in OpenAI's shape, embeddings and the model list
(the request fields beyond these are test_openai_api_fields.py's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest
from gateway_kit import ALICE, HELLO, Stack, bearer, running_stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path) as running:
        yield running


def openai_client(stack: Stack, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)


def test_openai_client_gets_a_chat_completion_with_usage(stack: Stack) -> None:
    completion = openai_client(stack).chat.completions.create(model="tiny", messages=HELLO)  # type: ignore[arg-type]
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert completion.id.startswith("chatcmpl-")
    job = stack.lane.get(completion.id.removeprefix("chatcmpl-"))
    assert job.result == choice.message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_openai_client_streams_server_sent_events_to_the_same_text(stack: Stack) -> None:
    stream = openai_client(stack).chat.completions.create(
        model="tiny",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    job = stack.lane.get(chunks[0].id.removeprefix("chatcmpl-"))
    assert job.result == text


def test_openai_client_gets_a_text_completion_as_a_generate_job(stack: Stack) -> None:
    completion = openai_client(stack).completions.create(
        model="tiny", prompt="Why is the sky blue?", max_tokens=5
    )
    choice = completion.choices[0]
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    job = stack.lane.get(completion.id.removeprefix("cmpl-"))
    assert job.spec.kind.value == "generate" and job.spec.prompt == "Why is the sky blue?"
    assert job.result == choice.text and choice.finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_openai_client_streams_a_text_completion_to_the_same_text(stack: Stack) -> None:
    stream = openai_client(stack).completions.create(
        model="tiny",
        prompt="Why is the sky blue?",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text, "the simulated model answers this prompt with some tokens"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert stack.lane.get(chunks[0].id.removeprefix("cmpl-")).result == text


def test_a_text_completion_takes_one_prompt(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(stack).completions.create(model="tiny", prompt=["one", "two"])
    assert caught.value.body["param"] == "prompt"  # type: ignore[index]


def test_openai_errors_use_openais_shape_and_exceptions(stack: Stack) -> None:
    client = openai_client(stack)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=HELLO, n=2)  # type: ignore[arg-type]
    assert caught.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        openai_client(stack, key="wrong-key-000").models.list()


def test_openai_client_gets_embeddings_equal_to_ollamas_in_either_encoding(stack: Stack) -> None:
    client = openai_client(stack)
    texts = ["hello there", "general kenobi"]
    as_base64 = client.embeddings.create(model="tiny", input=texts)  # the client's default
    as_floats = client.embeddings.create(model="tiny", input=texts, encoding_format="float")
    ollama_client = ollama.Client(host=stack.url, headers=bearer(ALICE))
    ollama_vectors = ollama_client.embed(model="tiny", input=texts).embeddings
    assert [d.index for d in as_floats.data] == [0, 1]
    assert [d.embedding for d in as_floats.data] == [list(v) for v in ollama_vectors]
    for decoded, exact in zip(as_base64.data, as_floats.data, strict=True):
        assert decoded.embedding == pytest.approx(exact.embedding, rel=1e-6, abs=1e-7)  # float32
    assert as_floats.usage.prompt_tokens > 0


def test_openai_embeddings_refuse_dimensions_and_unknown_models(stack: Stack) -> None:
    client = openai_client(stack)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny", input="hi", dimensions=64)
    assert caught.value.body["param"] == "dimensions"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hi")


def test_openai_models_lists_the_model_servers_catalog(stack: Stack) -> None:
    ids = [m.id for m in openai_client(stack).models.list()]
    assert ids == ["tiny:latest", "endless:latest"]
