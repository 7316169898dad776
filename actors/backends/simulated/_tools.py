"""Tool calls in the simulated Ollama: which tools a chat request with ``tools`` calls, and
with what arguments (a documented, deterministic rule standing in for a model's choice).

The rule (docs/backends.md, "The simulated Ollama server"):

- the answer is text when the last message is a ``tool`` result (the model answers with
  what the tool said) or an ``assistant`` prefill (the model continues its text);
- otherwise the model calls every tool whose function name appears, as a whole word, in
  the last user message (in the order of ``tools``), or the first tool if none does;
- a call's arguments are JSON that satisfies the function's ``parameters`` schema
  (``_schema.instance``), seeded by the model, the context and the function's name.

The answer is Ollama's: ``message.tool_calls`` as ``[{"id", "function": {"index", "name",
"arguments": {...}}}]`` with empty content and done_reason ``stop`` (server/routes.go
ChatHandler, api/types.go ToolCall).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from actors.backends.simulated._schema import instance
from actors.backends.simulated._text import stable_hash
from actors.backends.simulated._wire import HTTPError

__all__ = ["call_text", "chosen_calls", "parse_tool_calls", "parse_tools"]

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def parse_tools(value: object) -> list[dict[str, Any]]:
    """The request's ``tools``: a list of ``{"type": "function", "function": {"name", ...}}``;
    a 400 naming what is wrong otherwise."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise HTTPError(400, "tools must be a list of tool objects")
    for index, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            raise HTTPError(400, f'tools[{index}] needs a "function" object')
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise HTTPError(400, f"tools[{index}].function.name must be a non-empty string")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise HTTPError(400, f"tools[{index}].function.parameters must be an object")
    return value


def parse_tool_calls(value: object, where: str) -> None:
    """Check a message's ``tool_calls`` as Go's api.ToolCall reads them: a list of
    ``{"function": {"name", "arguments": {...}}}``, the arguments an object (not the JSON
    string OpenAI's API uses); a 400 naming what is wrong."""
    if value is None:
        return
    if not isinstance(value, list):
        raise HTTPError(400, f"{where} must be a list")
    for index, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise HTTPError(400, f'{where}[{index}] needs a "function" with a "name"')
        if not isinstance(function.get("arguments", {}), dict):
            raise HTTPError(400, f"{where}[{index}].function.arguments must be an object")


def chosen_calls(
    tools: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    model: str,
    context: str,
) -> list[dict[str, Any]]:
    """The tool calls the model makes (empty: it answers in text), by the module's rule."""
    if not tools or not messages or messages[-1].get("role") in ("tool", "assistant"):
        return []
    users = [m for m in messages if m.get("role") == "user"]
    said = str(users[-1].get("content") or "") if users else ""
    functions = [tool["function"] for tool in tools]
    named = [f for f in functions if _names(said, f["name"])] or functions[:1]
    calls = []
    for index, function in enumerate(named):
        name = function["name"]
        arguments = instance(function.get("parameters") or {"type": "object"}, model, context, name)
        if not isinstance(arguments, dict):
            arguments = {}
        digest = stable_hash("call", model, context, name, str(index))
        call_id = "".join(_ID_ALPHABET[(digest >> (6 * i)) % 36] for i in range(8))
        calls.append(
            {
                "id": f"call_{call_id}",
                "function": {"index": index, "name": name, "arguments": arguments},
            }
        )
    return calls


def call_text(call: Mapping[str, Any]) -> str:
    """The text a model decodes for a call, which Ollama's parser turns into ``tool_calls``
    (its tokens are the call's eval cost)."""
    function = call["function"]
    return json.dumps({"name": function["name"], "arguments": function["arguments"]})


def _names(text: str, name: str) -> bool:
    """True if ``name`` appears in ``text`` as a whole word (any case)."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE) is not None
