"""The Ollama API's whole request through the gateway, with the official ``ollama`` client
(ollama-python 0.6.3) where a client sends it: tools and a tool round trip, thinking,
structured output, images, logprobs and generate's own fields, each carried to the job and
back; what a job cannot carry is refused by name.

Shapes follow ollama/ollama's api/types.go (ChatRequest, GenerateRequest, Message,
ToolCall, ChatResponse, GenerateResponse) and server/routes.go (a non-streamed answer
gathers thinking, content and logprobs; the final line carries done_reason, a generate's
context and the metrics). The simulated model's side (which tool it calls, how it thinks,
what images change) is docs/backends.md's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from fields_kit import (
    CITY,
    CLOCK,
    CODER,
    PICTURES,
    SEER,
    THINKER,
    WEATHER,
    b64,
    fields_stack,
    newest_job,
    satisfies,
)
from gateway_kit import ALICE, HELLO, Stack, bearer

from actors.backends.simulated import FaultKind
from protocol import JobState
from protocol.frozen import thaw


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with fields_stack(tmp_path) as running:
        yield running


@pytest.fixture
def client(stack: Stack) -> ollama.Client:
    return ollama.Client(host=stack.url, headers=bearer(ALICE))


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.read().decode().splitlines()]


# --------------------------------------------------------------------------- tools


def test_a_tool_round_trip_calls_the_tool_and_answers_its_result(
    stack: Stack, client: ollama.Client
) -> None:
    asked = [{"role": "user", "content": "what is the weather in Oslo?"}]
    reply = client.chat(model="tiny", messages=asked, tools=[CLOCK, WEATHER])
    (call,) = reply.message.tool_calls or []
    assert call.function.name == "weather" and reply.done_reason == "stop"
    assert satisfies(dict(call.function.arguments), WEATHER["function"]["parameters"])
    assert not reply.message.content
    result = {"role": "tool", "content": "sunny, 21 C", "tool_name": "weather"}
    answer = client.chat(
        model="tiny", messages=[*asked, reply.message, result], tools=[CLOCK, WEATHER]
    )
    assert answer.message.content and not answer.message.tool_calls
    sent = newest_job(stack).spec
    assert [tool.name for tool in sent.tools] == ["clock", "weather"]
    assert sent.messages[1].tool_calls[0].arguments == call.function.arguments
    assert sent.messages[2].tool_name == "weather"


def test_a_streamed_tool_call_arrives_whole_in_a_line_of_its_own(
    stack: Stack, client: ollama.Client
) -> None:
    asked = [{"role": "user", "content": "clock and weather, please"}]
    parts = list(client.chat(model="tiny", messages=asked, tools=[CLOCK, WEATHER], stream=True))
    streamed = [call for part in parts for call in part.message.tool_calls or ()]
    whole = client.chat(model="tiny", messages=asked, tools=[CLOCK, WEATHER])
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls or ()
    ]
    assert [c.function.name for c in streamed] == ["clock", "weather"]
    assert parts[-1].done and parts[-1].done_reason == "stop"
    assert [call.name for call in newest_job(stack).output.tool_calls] == ["clock", "weather"]  # type: ignore[union-attr]


def test_tools_are_the_model_servers_to_refuse_on_a_model_without_them(
    client: ollama.Client,
) -> None:
    with pytest.raises(ollama.ResponseError, match="does not support tools") as refused:
        client.chat(model=SEER, messages=HELLO, tools=[WEATHER])
    assert refused.value.status_code == 400, "the model server's 400, not a 502"


# ------------------------------------------------------------------------ thinking


def test_thinking_comes_beside_the_answer_and_streams_before_it(
    stack: Stack, client: ollama.Client
) -> None:
    whole = client.chat(model=THINKER, messages=HELLO, think=True)
    assert whole.message.thinking and whole.message.content
    parts = list(client.chat(model=THINKER, messages=HELLO, think=True, stream=True))
    thought = [p.message.thinking or "" for p in parts]
    said = [p.message.content or "" for p in parts]
    last_thought = max(i for i, piece in enumerate(thought) if piece)
    assert not any(said[: last_thought + 1]), "thinking first, then the answer"
    assert "".join(thought) == whole.message.thinking and "".join(said) == whole.message.content
    assert newest_job(stack).spec.think is True


def test_a_thinking_level_and_think_false_reach_the_job(
    stack: Stack, client: ollama.Client
) -> None:
    low = client.chat(model=THINKER, messages=HELLO, think="low")
    assert low.message.thinking and newest_job(stack).spec.think == "low"
    quiet = client.chat(model=THINKER, messages=HELLO, think=False)
    assert not quiet.message.thinking and quiet.message.content == low.message.content


def test_thinking_asked_of_a_model_that_cannot_is_ollamas_400(client: ollama.Client) -> None:
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError, match="does not support thinking") as refused:
            reply = client.chat(model="tiny", messages=HELLO, think=True, stream=stream)
            list(reply) if stream else None  # type: ignore[call-overload]
        assert refused.value.status_code == 400


def test_generate_gives_its_thinking_in_the_final_object(client: ollama.Client) -> None:
    reply = client.generate(model=THINKER, prompt="why?", think="medium")
    assert reply.thinking and reply.response and reply.done_reason == "stop"


def test_an_earlier_assistant_turns_thinking_is_carried(
    stack: Stack, client: ollama.Client
) -> None:
    turn = {"role": "assistant", "content": "Hello.", "thinking": "They greeted me."}
    client.chat(model=THINKER, messages=[*HELLO, turn, *HELLO])
    assert newest_job(stack).spec.messages[1].thinking == "They greeted me."


# -------------------------------------------------------------- structured output


def test_a_json_schema_format_gives_an_answer_that_satisfies_it(
    stack: Stack, client: ollama.Client
) -> None:
    reply = client.chat(model="tiny", messages=HELLO, format=CITY)
    assert satisfies(json.loads(reply.message.content or ""), CITY)
    assert thaw(newest_job(stack).spec.format) == CITY
    streamed = client.generate(model="tiny", prompt="a city", format=CITY, stream=True)
    assert satisfies(json.loads("".join(part.response for part in streamed)), CITY)


def test_format_json_gives_a_json_object(client: ollama.Client) -> None:
    reply = client.generate(model="tiny", prompt="a city", format="json")
    assert isinstance(json.loads(reply.response), dict)


# -------------------------------------------------------------------------- images


def test_images_reach_a_vision_model_on_chat_and_generate(client: ollama.Client) -> None:
    def look(*pictures: bytes) -> str:
        asked = {"role": "user", "content": "What is this?", "images": list(pictures) or None}
        return client.chat(model=SEER, messages=[asked]).message.content or ""

    assert len({look(PICTURES[0]), look(PICTURES[1]), look()}) == 3
    described = {client.generate(model=SEER, prompt="Describe it.", images=[p]).response
                 for p in PICTURES}  # fmt: skip
    assert len(described) == 2


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/chat",
         {"messages": [{"role": "user", "content": "x", "images": [b64(b"ok"), "not base64!"]}]},
         "messages[0].images[1]"),
        ("/api/generate", {"prompt": "x", "images": ["abc"]}, "images[0]"),
    ],
)  # fmt: skip
def test_an_image_that_is_not_base64_is_a_400_naming_it_before_the_model_server(
    stack: Stack, path: str, body: dict[str, Any], field: str
) -> None:
    with stack.client() as http:
        response = http.post(path, json={"model": SEER, "stream": False, **body})
    assert response.status_code == 400 and response.json()["field"] == field
    assert stack.sim.stats().calls_started == 0


# ----------------------------------------------------------------------- generate


def test_generate_returns_a_context_that_the_next_request_continues_from(
    stack: Stack, client: ollama.Client
) -> None:
    first = client.generate(model="tiny", prompt="Once upon a time")
    assert first.context
    second = client.generate(model="tiny", prompt="and then?", context=first.context)
    assert second.context and newest_job(stack).spec.context == tuple(first.context)
    streamed = list(client.generate(model="tiny", prompt="and then?", context=first.context,
                                    stream=True))  # fmt: skip
    assert streamed[-1].context == second.context
    assert "".join(part.response for part in streamed) == second.response


def test_generate_carries_system_template_suffix_and_raw(
    stack: Stack, client: ollama.Client
) -> None:
    client.generate(model=CODER, prompt="def f():", suffix="    return x", system="Be brief.",
                    template="{{ .System }} {{ .Prompt }}")  # fmt: skip
    spec = newest_job(stack).spec
    assert (spec.suffix, spec.system) == ("    return x", "Be brief.")
    assert spec.template == "{{ .System }} {{ .Prompt }}"
    raw = client.generate(model="tiny", prompt="[INST] tell me a story [/INST]", raw=True)
    assert raw.response and not raw.context, "a raw answer has no context, as Ollama's"
    assert newest_job(stack).spec.raw is True


def test_raw_with_a_system_prompt_is_a_400_naming_system(stack: Stack) -> None:
    with stack.client() as http:
        response = http.post(
            "/api/generate", json={"model": "tiny", "prompt": "x", "raw": True, "system": "s"}
        )
    assert response.status_code == 400 and response.json()["field"] == "system"


def test_a_suffix_on_a_model_without_insert_is_ollamas_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError, match="does not support insert") as refused:
        client.generate(model="tiny", prompt="def f():", suffix="    return x")
    assert refused.value.status_code == 400


# ------------------------------------------------------------------------ logprobs


def test_logprobs_come_with_each_piece_and_gathered_in_the_whole_answer(
    stack: Stack, client: ollama.Client
) -> None:
    whole = client.chat(model="tiny", messages=HELLO, logprobs=True, top_logprobs=2)
    assert whole.logprobs and all(len(item.top_logprobs or ()) == 2 for item in whole.logprobs)
    assert "".join(item.token for item in whole.logprobs) == whole.message.content
    parts = list(client.chat(model="tiny", messages=HELLO, logprobs=True, stream=True))
    streamed = [item for part in parts for item in part.logprobs or ()]
    assert [(i.token, i.logprob) for i in streamed] == [
        (i.token, i.logprob) for i in whole.logprobs
    ]
    assert newest_job(stack).spec.top_logprobs == 0


def test_plain_pieces_carry_no_empty_parts(stack: Stack) -> None:
    with stack.client() as http:
        response = http.post("/api/chat", json={"model": THINKER, "messages": HELLO})
    *pieces, last = lines(response)
    assert all(set(p) == {"model", "created_at", "message", "done"} for p in pieces)
    assert all(set(p["message"]) in ({"role", "content"}, {"role", "content", "thinking"})
               for p in pieces)  # fmt: skip
    assert last["message"] == {"role": "assistant", "content": ""} and "context" not in last


# ----------------------------------------------------------- what is not carried


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"truncate": False}, "truncate"),
        ({"shift": False}, "shift"),
        ({"_debug_render_only": True}, "_debug_render_only"),
        ({"think": "extreme"}, "think"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
         "tools[0].function.strict"),
        ({"messages": [{"role": "user", "content": "hi"},
                       {"role": "assistant", "tool_calls": [
                           {"function": {"name": "f", "arguments": '{"a": 1}'}}]}]},
         "messages[1].tool_calls[0].function.arguments"),
        ({"messages": [{"role": "user", "content": "hi", "tool_name": "f"}]},
         "messages[0].tool_name"),
    ],
)  # fmt: skip
def test_what_a_job_cannot_carry_is_a_400_naming_the_field(
    stack: Stack, extra: dict[str, Any], field: str
) -> None:
    body = {"model": "tiny", "messages": HELLO, "stream": False, **extra}
    with stack.client() as http:
        response = http.post("/api/chat", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert stack.sim.stats().calls_started == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/embed", {"input": "hi", "truncate": False}, "truncate"),
        ("/api/embed", {"input": "hi", "keep_alive": "10m"}, "keep_alive"),
        ("/api/embeddings", {"prompt": "hi", "keep_alive": 0}, "keep_alive"),
    ],
)
def test_what_an_embedding_call_cannot_carry_is_a_400_naming_the_field(
    stack: Stack, path: str, body: dict[str, Any], field: str
) -> None:
    with stack.client() as http:
        response = http.post(path, json={"model": "tiny", **body})
        assert response.status_code == 400 and response.json()["field"] == field
        assert stack.sim.stats().embed_requests == 0
        default = http.post("/api/embed", json={"model": "tiny", "input": "hi", "truncate": True})
    assert default.status_code == 200


def test_ollamas_defaults_and_unknown_keys_are_accepted_as_ollama_accepts_them(
    stack: Stack,
) -> None:
    messages = [{"role": "User", "content": "hi", "emoji": "wave"}]
    body = {"model": "tiny", "messages": messages, "stream": False, "truncate": True,
            "shift": True, "width": 512, "caller": "someone else"}  # fmt: skip
    with stack.client() as http:
        response = http.post("/api/chat", json=body)
    assert response.status_code == 200, response.text
    job = newest_job(stack)
    assert job.spec.messages[0].role == "user" and job.spec.caller == "alice"


# ---------------------------------------------------------- the model server's word


def test_a_job_that_kept_failing_is_a_502_and_one_refused_at_once_a_400(
    stack: Stack, client: ollama.Client
) -> None:
    stack.sim.inject(FaultKind.SERVER_ERROR, path="/api/chat", times=3)
    with pytest.raises(ollama.ResponseError) as failed:
        client.chat(model="tiny", messages=HELLO)
    assert failed.value.status_code == 502 and "llama runner" in failed.value.error
    assert newest_job(stack).attempts == 3
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="tiny", messages=HELLO, think="high")
    assert refused.value.status_code == 400
    job = newest_job(stack)
    assert job.state is JobState.FAILED and job.attempts == 1
