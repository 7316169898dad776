"""Which request features each backend carries, and the refusal, by name, of the rest
(docs/architecture.md section 9: nothing a caller asked for is dropped in silence)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from actors.backends.anthropic import AnthropicBackend
from actors.backends.base import BASIC_FEATURES, carried_features, refuse_unsupported
from actors.backends.ollama import OllamaBackend
from actors.backends.openai_compat import OpenAICompatBackend
from actors.testing import FakeBackend, ManualClock
from protocol import REQUEST_FEATURES, BackendRequest, JobSpec, ValidationError

NOWHERE = httpx.MockTransport(lambda request: httpx.Response(500))
TOOL = {"type": "function", "function": {"name": "f"}}
LOOK = [{"role": "user", "content": "what is this?", "images": ["aGk="]}]


def chat(**fields: object) -> BackendRequest:
    messages = fields.pop("messages", [{"role": "user", "content": "hi"}])
    return BackendRequest.for_spec(JobSpec.chat(model="m", messages=messages, **fields))  # type: ignore[arg-type]


def generate(**fields: object) -> BackendRequest:
    return BackendRequest.for_spec(JobSpec.generate(model="m", prompt="hi", **fields))


@pytest.fixture
def openai() -> Iterator[OpenAICompatBackend]:
    backend = OpenAICompatBackend("http://vllm.test", transport=NOWHERE)
    yield backend
    backend.close()


@pytest.fixture
def anthropic() -> Iterator[AnthropicBackend]:
    backend = AnthropicBackend("key", model="claude", transport=NOWHERE)
    yield backend
    backend.close()


def test_ollama_and_the_fake_backend_carry_every_feature() -> None:
    ollama = OllamaBackend("http://ollama.test", transport=NOWHERE)
    try:
        assert carried_features(ollama) == REQUEST_FEATURES
    finally:
        ollama.close()
    assert carried_features(FakeBackend(ManualClock())) == REQUEST_FEATURES


def test_a_backend_that_declares_nothing_carries_what_backends_carried_before() -> None:
    class Plain:
        name = "plain"

    assert carried_features(Plain()) == BASIC_FEATURES == {"format", "messages.images"}
    refuse_unsupported(Plain(), chat(format="json", messages=LOOK))
    with pytest.raises(ValidationError) as caught:
        refuse_unsupported(Plain(), chat(think=True))
    assert caught.value.field == "think" and "the plain backend cannot carry it" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"images": ["aGk="]}, "images"), ({"raw": True}, "raw"),
     ({"template": "{{ .Prompt }}"}, "template"), ({"context": [1, 2]}, "context")],
)  # fmt: skip
def test_the_openai_compatible_backend_refuses_by_name_what_the_completions_api_cannot_carry(
    openai: OpenAICompatBackend, fields: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        refuse_unsupported(openai, generate(**fields))
    assert caught.value.field == field and "the openai backend cannot carry it" in str(caught.value)


def test_the_openai_compatible_backend_refuses_think_on_a_generate_job_and_carries_it_on_chat(
    openai: OpenAICompatBackend,
) -> None:
    with pytest.raises(ValidationError) as caught:
        refuse_unsupported(openai, generate(think=True))
    assert caught.value.field == "think" and "no chat template" in str(caught.value)
    refuse_unsupported(openai, chat(think=True, tools=[TOOL], logprobs=True))


def test_the_openai_compatible_backend_carries_a_format_and_a_schema(
    openai: OpenAICompatBackend,
) -> None:
    refuse_unsupported(openai, chat(format="json"))
    refuse_unsupported(openai, chat(format={"type": "object"}))


@pytest.mark.parametrize(
    ("request_", "field"),
    [(lambda: chat(format="json"), "format"), (lambda: chat(logprobs=True), "logprobs"),
     (lambda: generate(suffix="x"), "suffix"), (lambda: generate(raw=True), "raw"),
     (lambda: chat(think="high", options={"temperature": 0}), "options.temperature")],
)  # fmt: skip
def test_the_anthropic_backend_refuses_by_name_what_the_messages_api_cannot_carry(
    anthropic: AnthropicBackend, request_: Callable[[], BackendRequest], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        refuse_unsupported(anthropic, request_())
    assert caught.value.field == field


def test_a_backend_that_declares_carries_is_taken_at_its_word() -> None:
    class Translating(OpenAICompatBackend):
        carries = frozenset({"format", "tools", "messages.tool_calls"})

    class Renamed(OpenAICompatBackend):
        """A subclass that declares nothing carries what its base carries."""

    translating = Translating("http://vllm.test", transport=NOWHERE)
    renamed = Renamed("http://vllm.test", transport=NOWHERE)
    try:
        refuse_unsupported(translating, chat(tools=[TOOL]))
        with pytest.raises(ValidationError, match="think"):
            refuse_unsupported(translating, chat(think=True))
        assert carried_features(renamed) == OpenAICompatBackend.carries
    finally:
        translating.close()
        renamed.close()
