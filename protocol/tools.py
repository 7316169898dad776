"""Tool calling: the functions a chat job offers the model, and the calls the model makes.

The shapes are Ollama's (``api/types.go``: ``Tool``, ``ToolCall``): a tool is
``{"type": "function", "function": {"name", "description", "parameters"}}`` with a JSON
schema for the parameters; a call is ``{"id"?, "function": {"index"?, "name",
"arguments"}}`` with the arguments as a JSON object (OpenAI's JSON-string arguments are
decoded by whoever translates them). Both are deeply immutable and validated with errors
that name the field's path, such as ``tools[0].function.name``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

from protocol.errors import ValidationError
from protocol.frozen import EMPTY_MAPPING, thaw
from protocol.jsondata import check_text, frozen_json, is_int

__all__ = ["MAX_TOOL_NAME", "Tool", "ToolCall", "parse_tool_calls", "parse_tools"]

MAX_TOOL_NAME = 256
_TOOL_KEYS = ("type", "function")
_FUNCTION_KEYS = ("name", "description", "parameters")
_CALL_KEYS = ("id", "type", "function")
_CALL_FUNCTION_KEYS = ("index", "name", "arguments")


@dataclasses.dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: its name, what it does, and a JSON schema of its
    parameters (an object, kept as given)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = dataclasses.field(default_factory=lambda: EMPTY_MAPPING)

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        if not isinstance(self.description, str):
            raise ValidationError("description", "must be a string")
        check_text("description", self.description)
        if not isinstance(self.parameters, Mapping):
            raise ValidationError("parameters", "must be a JSON schema object")
        object.__setattr__(self, "parameters", frozen_json("parameters", self.parameters))

    @classmethod
    def parse(cls, value: Tool | Mapping[str, Any], field: str) -> Tool:
        """Build from Ollama's (and OpenAI's) tool object; errors name the path under ``field``."""
        if isinstance(value, Tool):
            return value
        tool = _object(field, value, _TOOL_KEYS)
        kind = tool.get("type", "function")
        if kind != "function":
            raise ValidationError(f"{field}.type", f"unknown tool type {kind!r}", ("function",))
        path = f"{field}.function"
        if "function" not in tool:
            raise ValidationError(path, "is missing; a tool is a function definition")
        function = _object(path, tool["function"], _FUNCTION_KEYS)
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise ValidationError(f"{path}.description", "must be a string")
        parameters = function.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            raise ValidationError(f"{path}.parameters", "must be a JSON schema object")
        return cls(
            name=_name(f"{path}.name", function.get("name")),
            description=_text(f"{path}.description", description),
            parameters=frozen_json(f"{path}.parameters", parameters),
        )

    def to_dict(self) -> dict[str, Any]:
        """Ollama's JSON form of this tool."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = thaw(self.parameters)
        return {"type": "function", "function": function}


@dataclasses.dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: the function's name and its arguments (a JSON object), with
    the call's id (OpenAI's, which a tool message answers) and Ollama's index when given."""

    name: str
    arguments: Mapping[str, Any] = dataclasses.field(default_factory=lambda: EMPTY_MAPPING)
    id: str | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        if not isinstance(self.arguments, Mapping):
            raise ValidationError("arguments", "must be a JSON object")
        object.__setattr__(self, "arguments", frozen_json("arguments", self.arguments))
        if self.id is not None:
            _check_name("id", self.id)
        if self.index is not None and (not is_int(self.index) or self.index < 0):
            raise ValidationError("index", f"must be an integer of 0 or more, got {self.index!r}")

    @classmethod
    def parse(cls, value: ToolCall | Mapping[str, Any], field: str) -> ToolCall:
        """Build from Ollama's (or OpenAI's, once its arguments are decoded) tool call."""
        if isinstance(value, ToolCall):
            return value
        call = _object(field, value, _CALL_KEYS)
        kind = call.get("type", "function")
        if kind != "function":
            raise ValidationError(
                f"{field}.type", f"unknown tool call type {kind!r}", ("function",)
            )
        path = f"{field}.function"
        if "function" not in call:
            raise ValidationError(path, "is missing; a tool call names a function")
        function = _object(path, call["function"], _CALL_FUNCTION_KEYS)
        arguments = function.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            raise ValidationError(
                f"{path}.arguments",
                f"must be a JSON object, got {type(arguments).__name__}",
                allowed="an object of argument names to values",
            )
        index = function.get("index")
        if index is not None and (not is_int(index) or index < 0):
            raise ValidationError(
                f"{path}.index", f"must be an integer of 0 or more, got {index!r}"
            )
        call_id = call.get("id")
        return cls(
            name=_name(f"{path}.name", function.get("name")),
            arguments=frozen_json(f"{path}.arguments", arguments),
            id=None if call_id is None or call_id == "" else _name(f"{field}.id", call_id),
            index=index,
        )

    def to_dict(self) -> dict[str, Any]:
        """Ollama's JSON form of this call."""
        function: dict[str, Any] = {}
        if self.index is not None:
            function["index"] = self.index
        function["name"] = self.name
        function["arguments"] = thaw(self.arguments)
        out: dict[str, Any] = {"function": function}
        if self.id is not None:
            out = {"id": self.id, **out}
        return out


def parse_tools(value: object, field: str = "tools") -> tuple[Tool, ...]:
    """A list of tool definitions; two tools with one name are refused (the model could not
    tell them apart)."""
    items = _list(field, value)
    tools = tuple(Tool.parse(item, f"{field}[{i}]") for i, item in enumerate(items))
    seen: dict[str, int] = {}
    for index, tool in enumerate(tools):
        if tool.name in seen:
            raise ValidationError(
                f"{field}[{index}].function.name",
                f"{tool.name!r} is already the name of {field}[{seen[tool.name]}]",
                allowed="a name per tool",
            )
        seen[tool.name] = index
    return tools


def parse_tool_calls(value: object, field: str) -> tuple[ToolCall, ...]:
    """A list of tool calls."""
    return tuple(
        ToolCall.parse(item, f"{field}[{i}]") for i, item in enumerate(_list(field, value))
    )


def _list(field: str, value: object) -> tuple[Any, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValidationError(field, f"must be a list, got {type(value).__name__}")
    return tuple(value)


def _object(field: str, value: object, known: Collection[str]) -> Mapping[str, Any]:
    """``value`` as a mapping whose keys are all ``known``."""
    if not isinstance(value, Mapping):
        raise ValidationError(field, f"must be an object, got {type(value).__name__}")
    unknown = sorted(str(key) for key in value if key not in known)
    if unknown:
        raise ValidationError(f"{field}.{unknown[0]}", "unknown field", allowed=tuple(known))
    return value


def _name(field: str, value: object) -> str:
    _check_name(field, value)
    assert isinstance(value, str)
    return value


def _check_name(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, "must be a non-empty string")
    check_text(field, value)
    if len(value) > MAX_TOOL_NAME:
        raise ValidationError(
            field, f"is {len(value)} characters long; the limit is {MAX_TOOL_NAME}"
        )


def _text(field: str, value: str) -> str:
    check_text(field, value)
    return value
