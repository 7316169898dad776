"""The simulated Ollama answers tools, thinking, structured output and images as Ollama does.

What was followed (ollama/ollama at fb30760, ollama/ollama-python 0.6.3):

- server/routes.go ChatHandler: a tool call is sent in ``message.tool_calls`` as
  ``[{"id": "call_<8>", "function": {"index", "name", "arguments": {...}}}]`` with empty
  content, in a chunk of its own when streaming, and done_reason "stop"; a thinking model
  thinks unless ``think`` is false (``req.Think == nil`` becomes true); ``think`` on a model
  without the capability is a 400 ``"<model>" does not support thinking``; missing tool
  support is scheduleRunner's 400 ``<full name> does not support tools``; thinking
  streams in ``message.thinking`` (``thinking`` on generate) with empty content.
- api/types.go ThinkValue: true, false, "low", "medium", "high" or "max"; anything else
  is a 400 naming the allowed values; ``true`` is the "medium" level.
- llm/llama_server.go: ``format`` is "json" or a JSON schema object, else a 500
  ``invalid format: ...; expected "json" or a valid JSON Schema object``; the grammar
  constrains the tokens generated from their start, so a prefilled answer is followed
  by a whole JSON value.
- model.ErrNoVisionModel and runner/ollamarunner NewSequence: images on a model without
  vision are a 500 ``Failed to create new sequence: failed to process inputs: this model
  is missing data required for image input``; api.ImageData is Go's []byte, so bad base64
  is a 400 ``illegal base64 data at input byte N``.
- server/routes.go GenerateHandler: ``raw`` with template, system or context is a 400;
  ``suffix`` needs the insert capability; the answer carries ``context`` unless raw.
- ollama-python's _types.py Message.ToolCall and ChatResponse parse all of it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import ollama
import pydantic
import pytest
from simulated_kit import QUESTION, instant, post, stream_lines

from actors.backends.simulated import SimulatedOllama
from actors.runtime import ManualClock

CATALOG = {
    "tiny": instant(),
    "thinker": instant(thinking=True),
    "eye": instant(vision=True, tools=False),
    "plain": instant(tools=False),
    "filler": instant(insert=True),
    "endless": instant(mean_answer_tokens=1_000_000, max_answer_tokens=100_000, thinking=True),
}
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "the city"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
ADD: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}
IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\n a tiny picture").decode()


class Pet(pydantic.BaseModel):
    name: str
    age: int


class Owner(pydantic.BaseModel):
    owner: str
    pets: list[Pet]
    nickname: str | None = None


@pytest.fixture
def server(manual_clock: ManualClock) -> Iterator[SimulatedOllama]:
    """Instant profiles on a clock that never moves: every answer comes at once."""
    with SimulatedOllama(CATALOG, clock=manual_clock) as sim:
        yield sim


@pytest.fixture
def http(server: SimulatedOllama) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        yield client


@pytest.fixture
def client(server: SimulatedOllama) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.url) as official:
        yield official


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chat(http: httpx.Client, model: str, messages: list[dict[str, Any]], **extra: Any) -> Any:
    body = {"model": model, "messages": messages, "stream": False, **extra}
    return post(http, "/api/chat", body)


def error(http: httpx.Client, path: str, body: dict[str, Any]) -> tuple[int, str]:
    reply = http.post(path, json=body)
    return reply.status_code, reply.json()["error"]


# -------------------------------------------------------------------------- tools


def test_a_chat_with_tools_calls_the_tool_the_last_user_message_names(
    http: httpx.Client,
) -> None:
    reply = chat(http, "tiny", ask("What does add say about 2 and 3?"), tools=[WEATHER, ADD])
    message = reply["message"]
    assert message["content"] == "" and reply["done_reason"] == "stop"
    (call,) = message["tool_calls"]
    assert set(call) == {"id", "function"} and len(call["id"]) == len("call_") + 8
    assert call["function"]["name"] == "add" and call["function"]["index"] == 0
    jsonschema.validate(call["function"]["arguments"], ADD["function"]["parameters"])
    assert reply["eval_count"] > 0
    again = chat(http, "tiny", ask("What does add say about 2 and 3?"), tools=[WEATHER, ADD])
    assert again["message"]["tool_calls"] == message["tool_calls"]  # deterministic


def test_without_a_named_tool_the_first_tool_is_called_with_arguments_from_its_schema(
    http: httpx.Client,
) -> None:
    reply = chat(http, "tiny", ask("Is it raining in Paris?"), tools=[WEATHER, ADD])
    (call,) = reply["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    arguments = call["function"]["arguments"]
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    assert set(arguments) == {"city", "days", "unit"}  # every property, not just required


def test_every_named_tool_is_called_and_a_stream_sends_each_call_in_a_chunk_of_its_own(
    http: httpx.Client,
) -> None:
    body = {"model": "tiny", "messages": ask("get_weather, then ADD"), "tools": [WEATHER, ADD]}
    *chunks, final = stream_lines(http, "/api/chat", body)
    assert [c["message"]["content"] for c in chunks] == ["", ""]
    calls = [c["message"]["tool_calls"] for c in chunks]
    assert [[c["function"]["name"] for c in chunk] for chunk in calls] == [["get_weather"], ["add"]]
    assert [chunk[0]["function"]["index"] for chunk in calls] == [0, 1]
    assert final["done"] and final["done_reason"] == "stop" and final["message"]["content"] == ""
    assert "tool_calls" not in final["message"]
    together = chat(http, "tiny", ask("get_weather, then ADD"), tools=[WEATHER, ADD])
    assert together["message"]["tool_calls"] == [chunk[0] for chunk in calls]


def test_after_a_tool_result_the_model_answers_in_text(http: httpx.Client) -> None:
    question = ask("What is add of 2 and 3?")
    (call,) = chat(http, "tiny", question, tools=[ADD])["message"]["tool_calls"]
    turns: list[dict[str, Any]] = [
        *question,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "5", "tool_name": "add"},
    ]
    reply = chat(http, "tiny", turns, tools=[ADD])
    assert reply["message"]["content"].strip() and "tool_calls" not in reply["message"]
    other = chat(http, "tiny", [*turns[:-1], {"role": "tool", "content": "6", "tool_name": "add"}])
    assert other["message"]["content"] != reply["message"]["content"]  # the result is read


def test_a_tool_call_cut_by_num_predict_comes_back_as_text_with_done_reason_length(
    http: httpx.Client,
) -> None:
    reply = chat(http, "tiny", ask("add"), tools=[ADD], options={"num_predict": 2})
    assert reply["done_reason"] == "length" and reply["eval_count"] == 2
    assert "tool_calls" not in reply["message"]
    assert reply["message"]["content"].startswith('{"name": "add",')


def test_a_model_without_tool_support_refuses_tools_as_ollama_does(http: httpx.Client) -> None:
    body = {"model": "plain", "messages": QUESTION, "tools": [ADD]}
    assert error(http, "/api/chat", body) == (
        400,
        "registry.ollama.ai/library/plain:latest does not support tools",
    )


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ({"name": "add"}, "tools must be a list"),
        ([{"type": "function"}], 'tools[0] needs a "function" object'),
        ([{"function": {"name": ""}}], "tools[0].function.name"),
        ([ADD, {"function": {"name": "x", "parameters": []}}], "tools[1].function.parameters"),
    ],
)
def test_malformed_tools_are_a_400_that_names_the_field(
    http: httpx.Client, tools: Any, message: str
) -> None:
    status, text = error(http, "/api/chat", {"model": "tiny", "messages": QUESTION, "tools": tools})
    assert status == 400 and message in text


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        ({"function": {}}, "messages[1].tool_calls must be a list"),
        ([{"name": "add"}], 'messages[1].tool_calls[0] needs a "function" with a "name"'),
        ([{"function": {"name": "add", "arguments": '{"a": 1}'}}],
         "messages[1].tool_calls[0].function.arguments must be an object"),
    ],
)  # fmt: skip
def test_a_message_with_malformed_tool_calls_is_a_400_naming_the_field(
    http: httpx.Client, calls: Any, message: str
) -> None:
    turns = [*QUESTION, {"role": "assistant", "content": "", "tool_calls": calls}]
    assert error(http, "/api/chat", {"model": "tiny", "messages": turns}) == (400, message)


def test_the_official_client_calls_a_python_function_tool_and_reads_the_result_back(
    client: ollama.Client,
) -> None:
    def multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
          a: the first factor
          b: the second factor
        """
        return a * b

    question = [{"role": "user", "content": "Use multiply on 6 and 7."}]
    reply = client.chat(model="tiny", messages=question, tools=[multiply])
    (call,) = reply.message.tool_calls or []
    assert call.function.name == "multiply" and set(call.function.arguments) == {"a", "b"}
    assert all(isinstance(v, int) for v in call.function.arguments.values())
    result = multiply(**call.function.arguments)
    said = {"role": "tool", "content": str(result), "tool_name": "multiply"}
    turns: list[Any] = [*question, reply.message, said]
    answer = client.chat(model="tiny", messages=turns, tools=[multiply])
    assert answer.message.content and not answer.message.tool_calls
    streamed = [p for p in client.chat(model="tiny", messages=question, tools=[multiply],
                                       stream=True) if p.message.tool_calls]  # fmt: skip
    assert [p.message.tool_calls for p in streamed] == [reply.message.tool_calls]


# ----------------------------------------------------------------------- thinking


def test_think_streams_thinking_in_its_own_chunks_before_the_content(http: httpx.Client) -> None:
    body = {"model": "thinker", "messages": QUESTION, "think": True}
    *chunks, final = stream_lines(http, "/api/chat", body)
    kinds = ["thinking" if "thinking" in c["message"] else "content" for c in chunks]
    assert kinds == sorted(kinds, reverse=True) and {"thinking", "content"} == set(kinds)
    thoughts = [c["message"] for c in chunks if "thinking" in c["message"]]
    assert all(m["content"] == "" and m["thinking"] for m in thoughts)
    assert final["eval_count"] == len(chunks) and "thinking" not in final["message"]
    whole = chat(http, "thinker", QUESTION, think=True)["message"]
    assert whole["thinking"] == "".join(m["thinking"] for m in thoughts)
    assert whole["content"] == "".join(c["message"]["content"] for c in chunks)
    # The answer does not depend on the thinking: it is the one without it.
    assert chat(http, "thinker", QUESTION, think=False)["message"] == {
        "role": "assistant",
        "content": whole["content"],
    }


def test_a_thinking_model_thinks_by_default_as_ollama_does(http: httpx.Client) -> None:
    assert chat(http, "thinker", QUESTION)["message"]["thinking"]
    assert "thinking" not in chat(http, "tiny", QUESTION)["message"]


@pytest.mark.parametrize(("level", "tokens"), [("low", 16), (True, 48), ("high", 128)])
def test_the_think_level_bounds_how_long_the_model_thinks(
    http: httpx.Client, level: str | bool, tokens: int
) -> None:
    body = {
        "model": "endless",
        "messages": QUESTION,
        "think": level,
        "options": {"num_predict": 200},
    }
    chunks = stream_lines(http, "/api/chat", body)[:-1]
    assert sum("thinking" in c["message"] for c in chunks) == tokens
    assert len(chunks) == 200  # the content has what is left of num_predict


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_think_on_a_model_that_cannot_think_is_ollamas_400(http: httpx.Client, path: str) -> None:
    body = {"model": "tiny", "messages": QUESTION, "prompt": "hi", "think": "high"}
    assert error(http, path, body) == (400, '"tiny" does not support thinking')
    assert post(http, path, {**body, "think": False, "stream": False})["done"]


@pytest.mark.parametrize(
    ("think", "message"),
    [("deep", 'invalid think value: "deep"'), (3, "think must be a boolean or string")],
)
def test_an_invalid_think_value_is_a_400_that_names_the_allowed_ones(
    http: httpx.Client, think: Any, message: str
) -> None:
    status, text = error(http, "/api/chat", {"model": "thinker", "messages": QUESTION,
                                             "think": think})  # fmt: skip
    assert status == 400 and text.startswith(message) and '"low"' in text


def test_generate_carries_thinking_in_a_top_level_field(http: httpx.Client) -> None:
    body = {"model": "thinker", "prompt": "Why?", "think": "low"}
    *chunks, final = stream_lines(http, "/api/generate", body)
    thoughts = [c for c in chunks if "thinking" in c]
    assert thoughts and all(c["response"] == "" for c in thoughts)
    assert chunks[: len(thoughts)] == thoughts and "thinking" not in final


def test_a_thinking_model_thinks_before_it_calls_a_tool(http: httpx.Client) -> None:
    *chunks, _ = stream_lines(http, "/api/chat", {"model": "thinker", "messages": ask("add"),
                                                  "tools": [ADD]})  # fmt: skip
    assert all("thinking" in c["message"] for c in chunks[:-1])
    assert chunks[-1]["message"]["tool_calls"][0]["function"]["name"] == "add"


def test_a_prefilled_answer_is_continued_without_thinking_again(http: httpx.Client) -> None:
    body = {"model": "endless", "messages": QUESTION, "options": {"num_predict": 80}}
    chunks = stream_lines(http, "/api/chat", body)[:-1]
    tokens = [c["message"]["content"] for c in chunks if "thinking" not in c["message"]]
    assert len(tokens) == 80 - 48  # what medium thinking left of num_predict
    said = {"role": "assistant", "content": "".join(tokens[:10])}
    rest = {"num_predict": len(tokens) - 10}
    resumed = chat(http, "endless", [*QUESTION, said], options=rest)["message"]
    assert "thinking" not in resumed and resumed["content"] == "".join(tokens[10:])


def test_the_official_client_reads_thinking_from_chat_and_generate(client: ollama.Client) -> None:
    reply = client.chat(model="thinker", messages=QUESTION, think=True)
    assert reply.message.thinking and reply.message.content
    parts = list(client.generate(model="thinker", prompt="Why?", think="high", stream=True))
    assert "".join(p.thinking or "" for p in parts) and parts[-1].done
    with pytest.raises(ollama.ResponseError, match="does not support thinking") as refused:
        client.chat(model="tiny", messages=QUESTION, think=True)
    assert refused.value.status_code == 400


# ---------------------------------------------------------------- structured output


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_format_json_gives_a_json_object(http: httpx.Client, path: str) -> None:
    body = {"model": "tiny", "messages": QUESTION, "prompt": "hi", "format": "json"}
    reply = post(http, path, {**body, "stream": False})
    text = reply["message"]["content"] if path == "/api/chat" else reply["response"]
    assert isinstance(json.loads(text), dict) and reply["done_reason"] == "stop"
    streamed = stream_lines(http, path, body)[:-1]
    pieces = [c["message"]["content"] if "message" in c else c["response"] for c in streamed]
    assert "".join(pieces) == text and len(pieces) > 1


SCHEMAS = {
    "nested objects and arrays": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 3, "maxLength": 40},
            "score": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "count": {"type": "integer", "minimum": 10, "maximum": 12},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "level": {"enum": ["low", "mid", "high"]},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                "required": ["lat", "lon"],
                "additionalProperties": False,
            },
        },
        "required": ["title", "score", "count", "ok", "tags", "level", "where"],
        "additionalProperties": False,
    },
    "pydantic with $defs and an optional field": Owner.model_json_schema(),
    "a list at the top": {"type": "array", "items": {"type": "integer", "multipleOf": 5}},
    "dates, a const and allOf": {
        "type": "object",
        "allOf": [
            {"properties": {"when": {"type": "string", "format": "date"}}, "required": ["when"]},
            {"properties": {"kind": {"const": "event"}}, "required": ["kind"]},
        ],
    },
}


@pytest.mark.parametrize("schema", list(SCHEMAS.values()), ids=list(SCHEMAS))
def test_a_format_schema_gives_json_that_satisfies_it(
    http: httpx.Client, schema: dict[str, Any]
) -> None:
    reply = chat(http, "tiny", QUESTION, format=schema)
    value = json.loads(reply["message"]["content"])
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    assert chat(http, "tiny", QUESTION, format=schema)["message"] == reply["message"]
    other = chat(http, "tiny", ask("Something else entirely"), format=schema)
    jsonschema.validate(json.loads(other["message"]["content"]), schema)


def test_a_thinking_model_thinks_and_then_writes_the_json(http: httpx.Client) -> None:
    message = chat(http, "thinker", QUESTION, format=Owner.model_json_schema())["message"]
    assert message["thinking"] and Owner.model_validate_json(message["content"])


def test_a_prefilled_structured_answer_is_followed_by_a_whole_json_value(
    http: httpx.Client,
) -> None:
    schema = Owner.model_json_schema()
    content = chat(http, "tiny", QUESTION, format=schema)["message"]["content"]
    prefill = {"role": "assistant", "content": content[:10]}
    resumed = chat(http, "tiny", [*QUESTION, prefill], format=schema)["message"]["content"]
    Owner.model_validate_json(resumed)  # the grammar starts again: not resumable


@pytest.mark.parametrize("fmt", ["yaml", 3, ["json"]])
def test_an_invalid_format_is_ollamas_500_after_the_load(
    http: httpx.Client, server: SimulatedOllama, fmt: Any
) -> None:
    status, text = error(http, "/api/chat", {"model": "plain", "messages": QUESTION, "format": fmt})
    assert status == 500 and text.startswith("invalid format: ")
    assert text.endswith('; expected "json" or a valid JSON Schema object')
    assert server.stats().loaded == ("plain:latest",)


def test_the_official_client_gets_structured_output_that_pydantic_parses(
    client: ollama.Client,
) -> None:
    reply = client.chat(model="tiny", messages=QUESTION, format=Owner.model_json_schema())
    owner = Owner.model_validate_json(reply.message.content or "")
    assert owner.pets and all(isinstance(p.age, int) for p in owner.pets)
    generated = client.generate(model="tiny", prompt="Describe a pet", format="json")
    assert isinstance(json.loads(generated.response or ""), dict)


# ------------------------------------------------------------------------ images


def test_images_on_a_vision_model_are_taken_and_each_image_gets_its_own_answer(
    http: httpx.Client,
) -> None:
    def look(image: str) -> str:
        turn = {"role": "user", "content": "What is this?", "images": [image]}
        return str(chat(http, "eye", [turn])["message"]["content"])

    other = base64.b64encode(b"another picture").decode()
    assert look(IMAGE) and look(IMAGE) == look(IMAGE) != look(other)
    reply = post(http, "/api/generate", {"model": "eye", "prompt": "Describe", "images": [IMAGE],
                                         "stream": False})  # fmt: skip
    assert reply["response"]


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_images_on_a_model_without_vision_are_the_error_ollamas_runner_gives(
    http: httpx.Client, path: str
) -> None:
    body = {"model": "tiny", "prompt": "Describe", "images": [IMAGE],
            "messages": [{"role": "user", "content": "Describe", "images": [IMAGE]}]}  # fmt: skip
    assert error(http, path, body) == (
        500,
        "Failed to create new sequence: failed to process inputs: "
        "this model is missing data required for image input",
    )


def test_an_image_that_is_not_base64_is_go_s_400(http: httpx.Client) -> None:
    turn = {"role": "user", "content": "What is this?", "images": ["aGVs*bG8="]}
    assert error(http, "/api/chat", {"model": "eye", "messages": [turn]}) == (
        400,
        "illegal base64 data at input byte 4",
    )


def test_the_official_client_sends_image_bytes_to_a_vision_model(client: ollama.Client) -> None:
    turn = {"role": "user", "content": "What is this?", "images": [base64.b64decode(IMAGE)]}
    assert client.chat(model="eye", messages=[turn]).message.content
    with pytest.raises(ollama.ResponseError, match="missing data required for image input"):
        client.chat(model="tiny", messages=[turn])


# ------------------------------------------------------------- generate's fields


def test_a_generate_answer_carries_a_context_that_a_next_request_continues_from(
    http: httpx.Client,
) -> None:
    first = post(http, "/api/generate", {"model": "tiny", "prompt": "Hello", "stream": False})
    assert first["context"] and all(isinstance(i, int) for i in first["context"])
    fresh = post(http, "/api/generate", {"model": "tiny", "prompt": "And?", "stream": False})
    follow = post(http, "/api/generate", {"model": "tiny", "prompt": "And?", "stream": False,
                                          "context": first["context"]})  # fmt: skip
    assert follow["response"] != fresh["response"]
    assert follow["prompt_eval_count"] > fresh["prompt_eval_count"]
    raw = post(http, "/api/generate", {"model": "tiny", "prompt": "x", "raw": True,
                                       "stream": False})  # fmt: skip
    assert "context" not in raw


@pytest.mark.parametrize("extra", [{"system": "Be brief."}, {"template": "{{ .Prompt }}"},
                                   {"context": [1, 2]}])  # fmt: skip
def test_raw_with_a_template_system_or_context_is_ollamas_400(
    http: httpx.Client, extra: dict[str, Any]
) -> None:
    body = {"model": "tiny", "prompt": "x", "raw": True, **extra}
    assert error(http, "/api/generate", body) == (
        400,
        "raw mode does not support template, system, or context",
    )


def test_a_suffix_needs_the_insert_capability(http: httpx.Client) -> None:
    body = {"model": "tiny", "prompt": "def f(", "suffix": "    return x", "stream": False}
    assert error(http, "/api/generate", body) == (
        400,
        "registry.ollama.ai/library/tiny:latest does not support insert",
    )
    filled = post(http, "/api/generate", {**body, "model": "filler"})["response"]
    unfilled = post(http, "/api/generate", {**body, "model": "filler", "suffix": ""})["response"]
    assert filled != unfilled


# ----------------------------------------------------------------------- logprobs


def test_logprobs_come_with_each_token_and_top_logprobs_list_alternatives(
    http: httpx.Client,
) -> None:
    body = {"model": "tiny", "messages": QUESTION, "logprobs": True, "top_logprobs": 3}
    chunks = stream_lines(http, "/api/chat", body)[:-1]
    for chunk in chunks:
        (logprob,) = chunk["logprobs"]
        assert logprob["token"] == chunk["message"]["content"] and logprob["logprob"] <= 0
        assert logprob["bytes"] == list(logprob["token"].encode())
        assert (
            len(logprob["top_logprobs"]) == 3
            and logprob["top_logprobs"][0]["token"] == (logprob["token"])
        )
    whole = chat(http, "tiny", QUESTION, logprobs=True)
    assert len(whole["logprobs"]) == whole["eval_count"] == len(chunks)
    assert "top_logprobs" not in whole["logprobs"][0]
    assert "logprobs" not in chat(http, "tiny", QUESTION)
    status, text = error(http, "/api/chat", {**body, "top_logprobs": 21})
    assert (status, text) == (400, "top_logprobs must be between 0 and 20")
