"""The ``litellm`` SDK (litellm 1.110) against the gateway through its ``ollama_chat/``,
``ollama/`` and ``openai/`` providers, one feature per test (issue 14, "Show").

What was followed, from litellm's source:

- ``llms/ollama/chat/transformation.py`` (``ollama_chat/``): ``/api/chat`` at
  ``api_base``, ``api_key`` as a bearer header; ``tools`` passed as they are;
  an assistant message's ``tool_calls`` arguments parsed from their JSON string into an
  object, and a ``tool`` message's ``tool_call_id`` kept (Ollama ignores it); a reply
  with ``tool_calls`` gets ``finish_reason: "tool_calls"``.
- ``llms/ollama/completion/transformation.py`` and ``utils.get_optional_params``
  (``ollama/``): ``/api/generate`` with the messages rendered into one prompt; ``tools``
  are not sent as tools but written into the prompt (``function_call_prompt``) with
  ``format: "json"``, and a JSON answer shaped ``{"name", "arguments"}`` is read back as
  a tool call, any other JSON as content.
- ``openai/``: the ``openai`` client at ``api_base``.
- ``completion`` asks ``/api/show`` about an ``ollama`` model it has no price for
  (``responses/bridge_check.py`` → ``OllamaModelInfo.get_model_info``) at
  ``OLLAMA_API_BASE`` with ``OLLAMA_API_KEY``, not at the call's ``api_base``: both are
  set to the gateway, so litellm speaks to nothing else (conftest.py keeps its catalogs
  local too).
- Each call is logged on litellm's own thread pool
  (``litellm_core_utils/thread_pool_executor.py``), threads that live as long as the
  process: conftest.py caps it at ``LOGGING_EXECUTOR_MAX_THREADS`` threads, started
  before the tests, and each test waits for its logging before the gateway stops.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import litellm
import pytest
from conformance_kit import ADD, WEATHER, last_job, validate
from gateway_kit import ALICE, Stack
from litellm.constants import LOGGING_EXECUTOR_MAX_THREADS
from litellm.litellm_core_utils.thread_pool_executor import executor

from protocol import JobKind

# litellm's pydantic models of its GitHub Copilot payloads warn when first built.
pytestmark = pytest.mark.filterwarnings("ignore:Item.*ReadOnly:UserWarning")

QUESTION: list[Any] = [{"role": "user", "content": "Why is the queue slow today?"}]
ADDITION: list[Any] = [{"role": "user", "content": "What does add make of 2 and 3?"}]


def settle_logging() -> None:
    """Return once litellm's logging pool has every thread started and idle: one task per
    thread, all waiting for each other, can only run when nothing else is running."""
    together = threading.Barrier(LOGGING_EXECUTOR_MAX_THREADS)
    waits = [executor.submit(together.wait, 10) for _ in range(LOGGING_EXECUTOR_MAX_THREADS)]
    for wait in waits:
        wait.result(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def logging_threads_started() -> None:
    """litellm's logging threads, started before the suite's leak guard looks (they are
    litellm's for the life of the process, not a test's)."""
    settle_logging()


@pytest.fixture(autouse=True)
def model_info_from_the_gateway(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OLLAMA_API_BASE", stack.url)
    monkeypatch.setenv("OLLAMA_API_KEY", ALICE)
    yield
    settle_logging()


def complete(stack: Stack, model: str, messages: list[Any], **params: Any) -> Any:
    """``litellm.completion`` on the gateway: its OpenAI API for ``openai/``, else Ollama's."""
    base = f"{stack.url}/v1" if model.startswith("openai/") else stack.url
    return litellm.completion(model=model, messages=messages, api_base=base, api_key=ALICE,
                              num_retries=0, **params)  # fmt: skip


def streamed_text(stack: Stack, model: str) -> str:
    """The text of a streamed answer to QUESTION, joined from its deltas."""
    chunks = list(complete(stack, model, QUESTION, stream=True))
    assert len(chunks) > 2 and chunks[-1].choices[0].finish_reason == "stop"
    return "".join(c.choices[0].delta.content or "" for c in chunks)


def tool_round_trip(stack: Stack, model: str) -> str:
    """Ask for ``add``, check the call, answer it by its id, and return the final text."""
    called = complete(stack, model, ADDITION, tools=[WEATHER, ADD])
    (choice,) = called.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "add" and call.id
    validate(call.function.arguments, ADD["function"]["parameters"])
    result = {"role": "tool", "tool_call_id": call.id, "content": "5"}
    answer = complete(stack, model, [*ADDITION, choice.message, result], tools=[WEATHER, ADD])
    assert answer.choices[0].finish_reason == "stop" and not answer.choices[0].message.tool_calls
    sent = last_job(stack).spec.messages
    assert sent[-1].role == "tool" and sent[-1].content == "5"
    assert [c.name for c in sent[-2].tool_calls] == ["add"]
    text: str = answer.choices[0].message.content
    return text


# ------------------------------------------------------------------- ollama_chat/


def test_ollama_chat_provider_completes_a_chat(stack: Stack) -> None:
    reply = complete(stack, "ollama_chat/tiny", QUESTION)
    assert reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0
    assert last_job(stack).spec.kind is JobKind.CHAT


def test_ollama_chat_provider_streams_the_same_answer(stack: Stack) -> None:
    whole = complete(stack, "ollama_chat/tiny", QUESTION).choices[0].message.content
    assert streamed_text(stack, "ollama_chat/tiny") == whole


def test_ollama_chat_provider_makes_a_tool_round_trip(stack: Stack) -> None:
    assert tool_round_trip(stack, "ollama_chat/tiny")


# ------------------------------------------------------------------------ ollama/


def test_ollama_provider_completes_a_chat_as_a_generate_job(stack: Stack) -> None:
    reply = complete(stack, "ollama/tiny", QUESTION)
    assert reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
    job = last_job(stack)
    assert job.spec.kind is JobKind.GENERATE and QUESTION[0]["content"] in job.spec.prompt


def test_ollama_provider_streams_the_same_answer(stack: Stack) -> None:
    whole = complete(stack, "ollama/tiny", QUESTION).choices[0].message.content
    assert streamed_text(stack, "ollama/tiny") == whole


def test_ollama_provider_asks_for_tools_in_the_prompt_with_format_json(stack: Stack) -> None:
    reply = complete(stack, "ollama/tiny", ADDITION, tools=[WEATHER, ADD])
    job = last_job(stack)
    assert job.spec.format == "json" and not job.spec.tools
    assert "To call a function" in job.spec.prompt and f"\n{ADD}\n" in job.spec.prompt
    # The simulated model does not follow the prompt's instructions: its JSON object is
    # not a {"name", "arguments"} call, so litellm hands it over as content.
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


# ------------------------------------------------------------------------ openai/


def test_openai_provider_completes_a_chat(stack: Stack) -> None:
    reply = complete(stack, "openai/tiny", QUESTION)
    assert reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0


def test_openai_provider_streams_the_same_answer(stack: Stack) -> None:
    whole = complete(stack, "openai/tiny", QUESTION).choices[0].message.content
    assert streamed_text(stack, "openai/tiny") == whole


def test_openai_provider_makes_a_tool_round_trip(stack: Stack) -> None:
    assert tool_round_trip(stack, "openai/tiny")
    assert last_job(stack).spec.messages[-1].tool_call_id
