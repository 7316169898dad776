"""The protocol package: pure vocabulary (no I/O, no pykka), immutable messages, validation."""

from __future__ import annotations

import ast
import copy
import dataclasses
import datetime
import enum
import importlib
import pkgutil
import types
import typing
from collections.abc import Mapping
from pathlib import Path

import pytest

import protocol
from protocol import (
    LEGAL_TRANSITIONS,
    REQUEST_FEATURES,
    Answer,
    BackendRequest,
    ChatMessage,
    Chunk,
    Job,
    JobMetrics,
    JobSpec,
    JobState,
    Lane,
    Logprob,
    Output,
    Priority,
    TokenLogprob,
    Tool,
    ToolCall,
    ValidationError,
    freeze,
    is_deeply_immutable,
)

PROTOCOL_DIR = Path(protocol.__file__).parent
FORBIDDEN_IMPORTS = {
    "pykka", "threading", "asyncio", "socket", "sqlite3", "httpx", "subprocess", "io",
    "os", "pathlib", "shutil", "tempfile", "urllib", "http", "multiprocessing", "concurrent",
    "actors", "structlog", "logging", "time", "random",
}  # fmt: skip


def protocol_modules() -> list[types.ModuleType]:
    return [
        importlib.import_module(f"protocol.{info.name}")
        for info in pkgutil.iter_modules([str(PROTOCOL_DIR)])
    ]


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(PROTOCOL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_protocol_modules_import_nothing_that_does_io_or_threads(path: Path) -> None:
    assert imported_roots(path) & FORBIDDEN_IMPORTS == set()


def test_protocol_calls_no_builtin_that_does_io() -> None:
    for path in PROTOCOL_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"open", "print", "input", "exec", "eval"}, path.name


IMMUTABLE_LEAVES = (
    str,
    int,
    float,
    bool,
    bytes,
    type(None),
    enum.Enum,
    datetime.time,
    datetime.date,
)


def annotation_is_immutable(tp: object, seen: set[type]) -> bool:
    """True when every value of type ``tp`` is deeply immutable."""
    if tp is typing.Any:
        return False
    if isinstance(tp, type) and issubclass(tp, IMMUTABLE_LEAVES):
        return True
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if tp in seen:
            return True
        seen.add(tp)
        if not tp.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            return False
        hints = typing.get_type_hints(tp)
        return all(annotation_is_immutable(hints[f.name], seen) for f in dataclasses.fields(tp))
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return all(annotation_is_immutable(a, seen) for a in args)
    if origin in (tuple, frozenset):
        return all(a is Ellipsis or annotation_is_immutable(a, seen) for a in args)
    if origin is Mapping:
        # Read-only mappings (freeze() makes MappingProxyType over a private copy); JSON values.
        return args[0] is str
    return False


def message_classes() -> list[type]:
    found = []
    for module in protocol_modules():
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.__name__
            ):
                found.append(value)
    return found


def test_the_protocol_package_defines_its_messages_and_values() -> None:
    names = {cls.__name__ for cls in message_classes()}
    assert {"InsertJob", "Transition", "Dispatch", "CancelCall", "JobSpec", "Job"} <= names


@pytest.mark.parametrize("cls", message_classes(), ids=lambda c: c.__name__)
def test_every_protocol_dataclass_is_frozen_and_holds_only_immutable_values(cls: type) -> None:
    assert annotation_is_immutable(cls, set()), f"{cls.__name__} can hold a mutable value"


def test_a_spec_freezes_the_dicts_and_lists_it_is_given() -> None:
    options = {"temperature": 0.2, "stop": ["\n"]}
    messages = [{"role": "user", "content": "hi"}]
    spec = JobSpec.chat(model="m", messages=messages, options=options)
    options["temperature"] = 9.9
    messages.append({"role": "user", "content": "more"})
    assert spec.options["temperature"] == 0.2 and spec.options["stop"] == ("\n",)
    assert spec.messages == (ChatMessage("user", "hi"),)
    assert is_deeply_immutable(spec)
    with pytest.raises(TypeError):
        spec.options["temperature"] = 1.0  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.model = "other"  # type: ignore[misc]


def test_freeze_refuses_values_it_cannot_make_immutable() -> None:
    with pytest.raises(TypeError, match="set"):
        freeze({"a": {1, 2}})


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"model": ""}, "model", "non-empty"),
        ({"model": "x" * 201}, "model", "limit is 200"),
        ({"lane": "sideways"}, "lane", "unknown lane"),
        ({"priority": "asap"}, "priority", "unknown priority"),
        ({"max_attempts": 0}, "max_attempts", "from 1 to 100"),
        ({"max_tokens": -5}, "max_tokens", "from 1 to 1000000"),
        ({"caller": "  "}, "caller", "non-empty"),
        ({"format": "yaml"}, "format", "unsupported format"),
        ({"stream": "yes"}, "stream", "true or false"),
        ({"options": {"x": object()}}, "options", "cannot freeze"),
        ({"messages": []}, "messages", "at least one message"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "unknown role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "string"),
        # options and format must be plain JSON data
        ({"options": {"seed": b"42"}}, "options.seed", "bytes value, not JSON data"),
        ({"options": {"seed": 2**64}}, "options.seed", "beyond 64 bits"),
        ({"options": {"temperature": float("nan")}}, "options.temperature", "not a finite"),
        ({"options": {"stop": ["a", float("inf")]}}, "options.stop[1]", "not a finite"),
        ({"format": {"type": "object", "x": {1, 2}}}, "format", "cannot freeze"),
        ({"format": {"properties": {"n": {"maximum": -(2**70)}}}}, "format.properties.n.maximum",
         "beyond 64 bits"),
        # text must be valid Unicode
        ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content",
         "lone surrogate"),
        ({"options": {"stop": ["\udfff"]}}, "options.stop[0]", "lone surrogate"),
        ({"options": {"\ud800": 1}}, "options (a key)", "lone surrogate"),
        ({"caller": "bot\udc80"}, "caller", "lone surrogate"),
        ({"keep_alive": "5m\ud800"}, "keep_alive", "lone surrogate"),
        # keep_alive strings are Go durations (Ollama's api.Duration: time.ParseDuration)
        ({"keep_alive": ""}, "keep_alive", "not a duration Ollama takes"),
        ({"keep_alive": "soon"}, "keep_alive", "not a duration Ollama takes"),
        ({"keep_alive": "5"}, "keep_alive", "not a duration Ollama takes"),
        ({"keep_alive": "1d"}, "keep_alive", "not a duration Ollama takes"),
        ({"keep_alive": "9999999999h"}, "keep_alive", "not a duration Ollama takes"),
    ],
)  # fmt: skip
def test_a_bad_field_is_named_with_the_problem(
    fields: dict[str, object], field: str, problem: str
) -> None:
    base: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    base.update(fields)
    with pytest.raises(ValidationError) as caught:
        JobSpec.chat(**base)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert problem in str(caught.value)


def test_a_value_that_is_not_json_data_says_what_is() -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.chat(model="m", messages=[{"role": "user", "content": "hi"}], options={"x": b""})
    assert caught.value.allowed is not None and "finite numbers" in caught.value.allowed


def test_a_chat_message_built_directly_is_validated_like_a_mapping() -> None:
    good = ChatMessage(role="user", content="hi")
    assert JobSpec.chat(model="m", messages=[good]).messages == (good,)
    for bad, field in (
        (ChatMessage(role="robot", content="hi"), "messages[0].role"),
        (ChatMessage(role="user", content="a\ud800"), "messages[0].content"),
    ):
        with pytest.raises(ValidationError) as caught:
            JobSpec.chat(model="m", messages=[bad])
        assert caught.value.field == field


def test_a_generate_prompt_that_is_not_valid_unicode_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.generate(model="m", prompt="ok", system="\ud83d")
    assert caught.value.field == "system"
    assert JobSpec.generate(model="m", prompt="emoji \U0001f600 are fine").prompt.endswith("fine")


def test_json_data_at_the_edges_of_its_ranges_is_accepted() -> None:
    options = {"big": 2**64 - 1, "small": -(2**63), "ratio": 1e300, "nested": [{"a": None}]}
    spec = JobSpec.chat(model="m", messages=[{"role": "user", "content": "hi"}], options=options)
    assert spec.to_dict()["options"] == options


def test_a_validation_error_lists_what_is_allowed() -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.generate(model="m", prompt="p", priority="asap")
    assert caught.value.allowed == ("low", "normal", "high", "urgent")
    assert "allowed: low, normal, high, urgent" in str(caught.value)


def test_a_generate_spec_refuses_messages() -> None:
    with pytest.raises(ValidationError, match="messages"):
        JobSpec(
            kind="generate", model="m", prompt="p", messages=({"role": "user", "content": "x"},)
        )  # type: ignore[arg-type]


def test_priorities_parse_from_names_in_any_case_and_from_numbers() -> None:
    assert Priority.parse("Urgent") is Priority.URGENT
    assert Priority.parse(0) is Priority.LOW
    assert Priority.URGENT > Priority.HIGH > Priority.NORMAL > Priority.LOW
    assert Lane.parse("INTERNAL") is Lane.INTERNAL


def test_a_spec_survives_its_dict_form_unchanged() -> None:
    spec = JobSpec.chat(
        model="llama3.2", messages=[{"role": "user", "content": "hi", "images": ["aGk="]}],
        options={"num_ctx": 8192}, format={"type": "object"}, lane="internal",
        priority="high", caller="bot", chain_id="c1", max_tokens=64, keep_alive="5m",
    )  # fmt: skip
    assert JobSpec.from_dict(spec.to_dict()) == spec


def test_an_unknown_field_in_a_spec_dict_is_named() -> None:
    data = JobSpec.generate(model="m", prompt="p").to_dict() | {"temprature": 1}
    with pytest.raises(ValidationError, match="temprature"):
        JobSpec.from_dict(data)


def test_the_residency_key_includes_only_options_that_force_a_reload() -> None:
    plain = JobSpec.generate(model="m", prompt="p", options={"temperature": 0.1})
    bigger = JobSpec.generate(model="m", prompt="p", options={"num_ctx": 8192})
    assert plain.model_key == "m"
    assert bigger.model_key == "m|num_ctx=8192"


def test_terminal_states_have_no_way_out_and_every_state_is_reachable() -> None:
    for state in JobState:
        if state.is_terminal:
            assert LEGAL_TRANSITIONS[state] == frozenset()
    reachable = {JobState.QUEUED}
    frontier = [JobState.QUEUED]
    while frontier:
        for target in LEGAL_TRANSITIONS[frontier.pop()]:
            if target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(JobState)


# --- the whole request (#14): tools, thinking, generate's own fields -------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASKED = {"role": "user", "content": "Weather in Paris?"}
CALLED = {
    "role": "assistant", "content": "", "thinking": "They want Paris.",
    "tool_calls": [{"function": {"index": 0, "name": "get_weather",
                                 "arguments": {"city": "Paris"}}}],
}  # fmt: skip
ANSWERED = {"role": "tool", "content": "22 C, sunny", "tool_name": "get_weather"}


def tool_round_trip(**fields: object) -> JobSpec:
    """A chat spec in the shape an agent sends after its first tool call."""
    return JobSpec.chat(
        model="qwen3", messages=[ASKED, CALLED, ANSWERED], tools=[WEATHER], **fields
    )


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"tools": [{"type": "function", "function": {"name": ""}}]},
         "tools[0].function.name", "non-empty"),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]},
         "tools[0].type", "unknown tool type"),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "is missing"),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
         "tools[0].function.strict", "unknown field"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
         "tools[0].function.parameters", "JSON schema object"),
        ({"tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"properties": {"n": {"maximum": float("inf")}}}}}]},
         "tools[0].function.parameters.properties.n.maximum", "not a finite number"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "already the name of tools[0]"),
        ({"tools": "get_weather"}, "tools", "must be a list"),
        ({"think": "extreme"}, "think", "unknown thinking level"),
        ({"top_logprobs": 21}, "top_logprobs", "from 0 to 20"),
        ({"logprobs": "yes"}, "logprobs", "true or false"),
        ({"images": ["aGk="]}, "images", "on its messages"),
        ({"raw": True}, "raw", "only on generate jobs"),
        ({"suffix": "end"}, "suffix", "only on generate jobs"),
        ({"template": "{{ .Prompt }}"}, "template", "only on generate jobs"),
        ({"context": [1, 2]}, "context", "only on generate jobs"),
    ],
)  # fmt: skip
def test_a_bad_tool_thinking_or_generate_field_on_a_chat_job_is_named(
    fields: dict[str, object], field: str, problem: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.chat(model="m", messages=[ASKED], **fields)
    assert caught.value.field == field
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("message", "field", "problem"),
    [
        ({**CALLED, "tool_calls": [{"function": {"name": "f", "arguments": '{"city": "P"}'}}]},
         "messages[1].tool_calls[0].function.arguments", "must be a JSON object, got str"),
        ({**CALLED, "tool_calls": [{"function": {"arguments": {}}}]},
         "messages[1].tool_calls[0].function.name", "non-empty"),
        ({**CALLED, "tool_calls": [{"type": "code", "function": {"name": "f"}}]},
         "messages[1].tool_calls[0].type", "unknown tool call type"),
        ({**CALLED, "tool_calls": [{"function": {"name": "f", "index": -1}}]},
         "messages[1].tool_calls[0].function.index", "0 or more"),
        ({**CALLED, "tool_calls": [{"function": {"name": "f", "arguments": {"x": b"1"}}}]},
         "messages[1].tool_calls[0].function.arguments.x", "not JSON data"),
        ({**CALLED, "tool_calls": [{"id": "", "function": {"name": "f"}, "extra": 1}]},
         "messages[1].tool_calls[0].extra", "unknown field"),
        ({**ASKED, "tool_calls": CALLED["tool_calls"]},
         "messages[1].tool_calls", "a user message cannot carry tool calls"),
        ({**ASKED, "tool_name": "get_weather"},
         "messages[1].tool_name", "does not answer a tool call"),
        ({**ANSWERED, "tool_call_id": 7}, "messages[1].tool_call_id", "non-empty string"),
        ({**CALLED, "thinking": "\ud800"}, "messages[1].thinking", "lone surrogate"),
        ({**ASKED, "name": "bob"}, "messages[1].name", "unknown field"),
    ],
)  # fmt: skip
def test_a_bad_part_of_a_message_is_named_with_its_path(
    message: dict[str, object], field: str, problem: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.chat(model="m", messages=[ASKED, message])
    assert caught.value.field == field
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"tools": [WEATHER]}, "tools", "a generate job takes no tools"),
        ({"images": "aGk="}, "images", "list of base64 strings"),
        ({"context": [1, "2"]}, "context[1]", "64-bit integer"),
        ({"context": [2**63]}, "context[0]", "64-bit integer"),
        # Ollama refuses these with raw (server/routes.go GenerateHandler).
        ({"raw": True, "system": "be brief"}, "system", "raw mode"),
        ({"raw": True, "template": "{{ .Prompt }}"}, "template", "raw mode"),
        ({"raw": True, "context": [1]}, "context", "raw mode"),
        ({"suffix": 3}, "suffix", "must be a string"),
    ],
)  # fmt: skip
def test_a_bad_generate_field_is_named(fields: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.generate(model="m", prompt="def add(a, b):", **fields)
    assert caught.value.field == field
    assert problem in str(caught.value)


def test_think_takes_true_false_or_a_level_as_ollama_does() -> None:
    # Ollama's ThinkValue.IsValid (api/types.go) takes a bool or "low", "medium", "high", "max".
    for think in (True, False, "low", "medium", "high", "max"):
        assert JobSpec.chat(model="m", messages=[ASKED], think=think).think == think


def test_a_tool_round_trip_spec_survives_its_dict_form_unchanged_and_is_immutable() -> None:
    spec = tool_round_trip(think="high", logprobs=True, top_logprobs=3, format={"type": "object"})
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert is_deeply_immutable(spec)
    (tool,) = spec.tools
    assert (tool.name, tool.description) == ("get_weather", "The weather in a city")
    assert tool.parameters["required"] == ("city",)
    (call,) = spec.messages[1].tool_calls
    assert (call.name, call.index, dict(call.arguments)) == ("get_weather", 0, {"city": "Paris"})
    assert spec.messages[1].thinking == "They want Paris."
    assert spec.messages[2].tool_name == "get_weather"
    assert spec.to_dict()["tools"] == [WEATHER]
    assert spec.to_dict()["messages"][1] == CALLED
    with pytest.raises(TypeError):
        tool.parameters["type"] = "array"  # type: ignore[index]


def test_an_openai_tool_call_id_and_its_answer_survive_the_dict_form() -> None:
    messages: list[dict[str, typing.Any]] = [
        ASKED,
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "-3 C", "tool_call_id": "call_1"},
    ]  # fmt: skip
    spec = JobSpec.chat(model="m", messages=messages, tools=[WEATHER])
    assert spec.messages[1].content == "" and spec.messages[1].tool_calls[0].id == "call_1"
    assert spec.messages[2].tool_call_id == "call_1"
    assert JobSpec.from_dict(spec.to_dict()) == spec


def test_a_generate_spec_with_all_its_own_fields_survives_its_dict_form() -> None:
    spec = JobSpec.generate(
        model="codellama", prompt="def add(a, b):", suffix="    return total", images=["aGk="],
        template="<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>", context=[1, 2, -3],
        think=False, logprobs=True, top_logprobs=20,
    )  # fmt: skip
    assert JobSpec.from_dict(spec.to_dict()) == spec
    raw = JobSpec.generate(model="m", prompt="[INST] hi [/INST]", raw=True)
    assert JobSpec.from_dict(raw.to_dict()) == raw and raw.to_dict()["raw"] is True


def test_a_spec_without_the_new_fields_keeps_its_old_dict_form() -> None:
    old_keys = {
        "kind", "model", "messages", "prompt", "system", "options", "format", "max_tokens",
        "lane", "priority", "caller", "task_type", "task_id", "chain_id", "allow_cloud",
        "stream", "max_attempts", "keep_alive",
    }  # fmt: skip
    assert set(JobSpec.chat(model="m", messages=[ASKED]).to_dict()) == old_keys
    assert JobSpec.chat(model="m", messages=[ASKED], suffix=None, template="").suffix is None


def test_a_tool_built_directly_is_checked_and_frozen() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    tool = Tool("search", parameters=schema)
    schema["type"] = "array"
    assert tool.parameters["type"] == "object" and is_deeply_immutable(tool)
    with pytest.raises(ValidationError, match="name"):
        Tool("  ")
    with pytest.raises(ValidationError, match="arguments"):
        ToolCall("search", arguments=["q"])  # type: ignore[arg-type]


# --- answers and chunks ----------------------------------------------------------------


def test_an_answer_is_its_text_and_carries_the_rest() -> None:
    call = ToolCall("get_weather", {"city": "Paris"}, id="call_1")
    answer = Answer("Hello there", Output(thinking="hmm", tool_calls=(call,), done_reason="length"))
    assert answer == "Hello there" and isinstance(answer, str)
    assert answer.upper() == "HELLO THERE" and f"{answer}!" == "Hello there!"
    assert (answer.text, answer.thinking, answer.done_reason) == ("Hello there", "hmm", "length")
    assert answer.tool_calls == (call,) and answer.logprobs == () and answer.context == ()
    assert type(answer.text) is str
    with pytest.raises(AttributeError):
        answer.output = Output()
    assert copy.copy(answer).tool_calls == (call,) and copy.copy(answer) == answer
    assert repr(Answer("plain")) == "'plain'"
    assert "thinking='hmm'" in repr(answer)


def test_a_chunk_is_its_text_and_says_whether_a_next_call_could_continue_it() -> None:
    text, thought = Chunk("Hel"), Chunk(thinking="Let me see")
    assert text == "Hel" and thought == "" and "".join([text, Chunk("lo")]) == "Hello"
    assert text.is_text_only and not thought.is_text_only and not thought.is_empty
    assert Chunk().is_empty
    called = Chunk(tool_calls=(ToolCall("f"),))
    assert not called.is_text_only
    assert called.with_parts(text="x", tool_calls=()) == "x"
    assert copy.copy(thought).thinking == "Let me see"
    with pytest.raises(AttributeError):
        text.thinking = "no"


def test_an_output_survives_its_dict_form_unchanged() -> None:
    output = Output(
        thinking="t", tool_calls=(ToolCall("f", {"a": [1, {"b": None}]}, id="c1", index=0),),
        logprobs=(Logprob("Hi", -0.25, (72, 105), (TokenLogprob("Hey", -1.5),)),),
        done_reason="stop", context=(5, 6),
    )  # fmt: skip
    assert Output.from_dict(output.to_dict()) == output
    assert Output.from_dict(Output().to_dict()) == Output() and Output().to_dict() == {}


# --- what a backend is asked ---------------------------------------------------------


def test_a_backend_request_names_each_feature_it_uses_by_the_first_field_using_it() -> None:
    spec = tool_round_trip(think=False, format="json")
    assert dict(BackendRequest.for_spec(spec).features()) == {
        "format": "format", "tools": "tools", "think": "think",
        "messages.thinking": "messages[1].thinking",
        "messages.tool_calls": "messages[1].tool_calls",
        "messages.tool_name": "messages[2].tool_name",
    }  # fmt: skip
    plain = JobSpec.generate(model="m", prompt="p")
    assert BackendRequest.for_spec(plain).features() == ()
    assert set(dict(BackendRequest.for_spec(spec).features())) <= REQUEST_FEATURES


def segment(tokens: int) -> JobMetrics:
    return JobMetrics(eval_count=tokens, total_duration_ns=1000)


@pytest.mark.parametrize(
    ("fields", "segments", "max_tokens"),
    [
        ({"max_tokens": 100}, (), 100),
        ({"max_tokens": 100}, (segment(30), segment(25)), 45),
        ({"max_tokens": 10}, (segment(12),), 0),
        ({"options": {"num_predict": 50}}, (segment(20),), 30),
        ({"options": {"num_predict": 50}}, (), None),  # a fresh call: the options say it
        ({"options": {"num_predict": -1}}, (segment(20),), None),  # -1: no limit in Ollama
        ({"max_tokens": 40, "options": {"num_predict": 5}}, (segment(20),), 20),
        ({}, (segment(20),), None),
    ],
)
def test_a_resumed_call_gets_the_token_budget_that_is_left(
    fields: dict[str, object], segments: tuple[JobMetrics, ...], max_tokens: int | None
) -> None:
    spec = JobSpec.chat(model="m", messages=[ASKED], **fields)
    job = Job(
        id="j", seq=1, spec=spec, state=JobState.QUEUED, created_at=0.0, updated_at=0.0,
        partial_output="so far", segments=segments,
    )  # fmt: skip
    request = BackendRequest.for_job(job)
    assert (request.max_tokens, request.resume_prefix) == (max_tokens, "so far")
    assert request.budget_spent is (max_tokens == 0)


def test_a_jobs_metrics_are_the_sum_of_its_segments() -> None:
    total = JobMetrics.total(
        [JobMetrics(1, 2, 3, 4, 5, 6), JobMetrics(10, 20, 30, 40, 50, 60), JobMetrics()]
    )
    assert total == JobMetrics(11, 22, 33, 44, 55, 66)
    assert JobMetrics.total([]) == JobMetrics()


def test_keep_alive_takes_what_ollamas_duration_parser_takes() -> None:
    for keep_alive in ("5m", "1h30m", "-1s", "0", "30ms", "1.5h", ".5s", 300, -1, 0.5):
        spec = JobSpec.chat(model="m", messages=[ASKED], keep_alive=keep_alive)
        assert spec.keep_alive == keep_alive
