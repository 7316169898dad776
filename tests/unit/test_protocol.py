"""The protocol package: pure vocabulary (no I/O, no pykka), immutable messages, validation."""

from __future__ import annotations

import ast
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
    ChatMessage,
    JobSpec,
    JobState,
    Lane,
    Priority,
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
