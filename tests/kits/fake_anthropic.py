"""A fake of the Anthropic Messages API on loopback, speaking SSE like the real one.

``POST /v1/messages`` checks ``x-api-key`` and ``anthropic-version``, refuses a prefill
ending in whitespace (as the API does), continues a final assistant message, and streams
``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``,
``content_block_stop``, ``message_delta`` and ``message_stop`` events; errors are
``{"type": "error", "error": {"type", "message"}}`` bodies or ``error`` events.

A call answers as :class:`fake_http.Plan` says, in the shapes of anthropic-sdk-python's
``types``: ``thinking`` gives a ``thinking`` block first (``thinking_delta`` pieces, then
a ``signature_delta``; :func:`signature` signs it), ``tools`` give ``tool_use`` blocks
(``input_json_delta`` pieces) and stop reason ``tool_use``, ``output_config.format``
gives JSON text. Requests are checked as the API checks them (a 400 naming the place):
image sources need a known ``media_type``; a ``tool_result`` answers a ``tool_use`` of
the message before; a ``thinking`` block needs the signature the fake gave it; with
thinking on, the assistant turn whose tool use is being answered must start with its
thinking block, a budget is at least 1024 and less than ``max_tokens``, and there is no
prefill.
"""

from __future__ import annotations

import json
from typing import Any

from fake_http import FakeHandler, FakeServer, Fault, Plan

from actors.backends.simulated import render_chat
from actors.backends.simulated._text import stable_hash

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_STOP = {"length": "max_tokens", "stop": "end_turn"}


class BadRequest(Exception):
    """A request the API would answer with 400 (invalid_request_error) and this message."""


def signature(thinking: str) -> str:
    """The signature the fake gives a thinking block (and requires back with it)."""
    return f"sig-{stable_hash('signature', thinking):016x}"


class FakeAnthropic(FakeServer):
    """Accepts ``api_key`` and serves ``models``."""

    def __init__(
        self, api_key: str = "sk-ant-test", models: tuple[str, ...] = ("claude-test",), **kw: Any
    ) -> None:
        super().__init__(_Handler, name="fake-anthropic", **kw)
        self.api_key = api_key
        self.models = models


def turns(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages in the simulator's (Ollama's) shape, checked as the API checks them;
    BadRequest names what is wrong."""
    messages = body["messages"]
    thinks = (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
    out: list[dict[str, Any]] = []
    uses: set[str] = set()  # the tool_use ids of the assistant message before
    for index, message in enumerate(messages):
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        turn: dict[str, Any] = {"role": message["role"], "content": "", "images": []}
        results: list[dict[str, Any]] = []
        for b_index, block in enumerate(blocks):
            where = f"messages.{index}.content.{b_index}"
            kind = block.get("type")
            if kind == "text":
                turn["content"] += block["text"]
            elif kind == "image":
                turn["images"].append(_image(block, where))
            elif kind == "thinking" and block.get("signature") != signature(block["thinking"]):
                raise BadRequest(f"{where}: Invalid `signature` in `thinking` block")
            elif kind == "tool_use":
                turn.setdefault("tool_calls", []).append(
                    {"function": {"name": block["name"], "arguments": block["input"]}}
                )
            elif kind == "tool_result":
                if block.get("tool_use_id") not in uses:
                    raise BadRequest(
                        f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}. Each `tool_result` block must have a "
                        "corresponding `tool_use` block in the previous message."
                    )
                results.append(_result(block, where))
        if message["role"] == "assistant":
            uses = {b["id"] for b in blocks if b.get("type") == "tool_use"}
            if thinks and uses and index == len(messages) - 2 and blocks[0]["type"] == "tool_use":
                raise BadRequest(
                    f"messages.{index}.content.0.type: Expected `thinking` or "
                    "`redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a "
                    "final `assistant` message must start with a thinking block."
                )
        out.extend(results)
        if turn["content"] or turn["images"] or turn.get("tool_calls") or not results:
            out.append(turn)
    return out


def _image(block: dict[str, Any], where: str) -> str:
    source = block.get("source") or {}
    if source.get("type") != "base64" or source.get("media_type") not in MEDIA_TYPES:
        raise BadRequest(
            f"{where}.image.source.base64.media_type: Input should be "
            + ", ".join(repr(t) for t in MEDIA_TYPES)
        )
    return str(source["data"])


def _result(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A tool result as the simulator's ``tool`` turn."""
    content = block.get("content") or ""
    if isinstance(content, list):
        text = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        images = [_image(part, where) for part in content if part.get("type") == "image"]
        return {"role": "tool", "content": text, "images": images}
    return {"role": "tool", "content": str(content)}


def check_thinking(body: dict[str, Any]) -> str | None:
    """The thinking level the request asks for (None: no thinking); BadRequest if the
    API would refuse its thinking settings."""
    thinking = body.get("thinking") or {}
    kind = thinking.get("type")
    if kind not in ("enabled", "adaptive"):
        return None
    last = body["messages"][-1]
    if last["role"] == "assistant":
        raise BadRequest("Thinking may not be enabled when the final message is a prefill")
    if kind == "adaptive":
        return str((body.get("output_config") or {}).get("effort") or "high")
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or not 1024 <= budget < body["max_tokens"]:
        raise BadRequest(
            "thinking.enabled.budget_tokens: must be at least 1024 and less than max_tokens"
        )
    return "low" if budget < 4096 else "medium" if budget < 16384 else "high"


def _stop_reason(plan: Plan) -> str:
    """Why an answer (decoded to its end) stopped."""
    return _STOP[plan.text.done_reason] if plan.text is not None else "tool_use"


class _Handler(FakeHandler):
    @property
    def anthropic(self) -> FakeAnthropic:
        fake = self.fake
        assert isinstance(fake, FakeAnthropic)
        return fake

    def error(self, status: int, message: str) -> None:
        error = {"type": ERROR_TYPES.get(status, "api_error"), "message": message}
        self.send_json(status, {"type": "error", "error": error})

    def authorised(self) -> bool:
        if self.headers.get("x-api-key") != self.anthropic.api_key:
            self.error(401, "invalid x-api-key")
            return False
        if not self.headers.get("anthropic-version"):
            self.error(400, "anthropic-version: header is required")
            return False
        return True

    def do_GET(self) -> None:
        if self.authorised():
            data = [{"type": "model", "id": m, "display_name": m} for m in self.anthropic.models]
            self.send_json(200, {"data": data, "has_more": False})

    def do_POST(self) -> None:
        body = self.read_json()
        if not self.authorised():
            return
        fault = self.fake.take_fault(self.path)
        if fault is not None and fault.kind == "status":
            self.error(fault.status, fault.message)
            return
        if body.get("model") not in self.anthropic.models:
            self.error(404, f"model: {body.get('model')}")
            return
        messages = body.get("messages") or []
        if not isinstance(body.get("max_tokens"), int) or not messages:
            self.error(400, "max_tokens and messages are required")
            return
        last = messages[-1]
        prefill = last["content"] if last["role"] == "assistant" else ""
        if isinstance(prefill, str) and prefill != prefill.rstrip():
            self.error(400, "final assistant content cannot end with trailing whitespace")
            return
        try:
            think = check_thinking(body)
            chat = turns(body)
        except BadRequest as exc:
            self.error(400, str(exc))
            return
        system = [{"role": "system", "content": body["system"]}] if body.get("system") else []
        tools = [
            {"type": "function", "function": {"name": t["name"], "parameters": t["input_schema"]}}
            for t in body.get("tools") or ()
        ]
        schema = ((body.get("output_config") or {}).get("format") or {}).get("schema")
        plan = self.fake.plan(
            body["model"], chat, render_chat(system + chat), body["max_tokens"],
            tools=tools, think=think, schema=schema,
        )  # fmt: skip
        self.run_call(lambda: self.answer(body, plan, fault))

    def answer(self, body: dict[str, Any], plan: Plan, fault: Fault | None) -> None:
        if not body.get("stream"):
            self.whole(body, plan)
        else:
            self.stream(body, plan, fault)

    def whole(self, body: dict[str, Any], plan: Plan) -> None:
        content: list[dict[str, Any]] = []
        count = 0
        if plan.thinking is not None:
            thought = "".join(self.drain(plan.thinking))
            count += len(plan.thinking.tokens)
            content.append(
                {"type": "thinking", "thinking": thought, "signature": signature(thought)}
            )
        for call in plan.calls:
            count += len(self.drain(plan.arguments(call)))
            content.append(self.tool_use(call) | {"input": call["function"]["arguments"]})
        if plan.text is not None:
            text = self.drain(plan.text)
            count += len(text)
            content.append({"type": "text", "text": "".join(text)})
        message = self.message(body, content, _stop_reason(plan), plan.prompt_tokens, count)
        self.send_json(200, message)

    def drain(self, source: Any) -> list[str]:
        tokens: list[str] = []
        while (token := self.next_token(source)) is not None:
            tokens.append(token)
        return tokens

    def tool_use(self, call: dict[str, Any]) -> dict[str, Any]:
        call_id = "toolu_" + call["id"].removeprefix("call_")
        return {"type": "tool_use", "id": call_id, "name": call["function"]["name"], "input": {}}

    def stream(self, body: dict[str, Any], plan: Plan, fault: Fault | None) -> None:
        def event(kind: str, **fields: Any) -> None:
            self.write_event(json.dumps({"type": kind, **fields}), event=kind)

        def error_event(fault: Fault) -> None:
            error = {"type": fault.error_type, "message": fault.message}
            event("error", error=error)
            self.end_stream()

        index = 0
        count = 0

        def block(start: dict[str, Any], source: Any, delta: Any, chunk_fault: Fault | None) -> int:
            event("content_block_start", index=index, content_block=start)
            return self.stream_tokens(
                source, lambda piece: event("content_block_delta", index=index, delta=delta(piece)),
                chunk_fault, error_event,
            )  # fmt: skip

        self.start_sse()
        message = self.message(body, [], None, plan.prompt_tokens, 1)
        event("message_start", message=message)
        if plan.thinking is not None:
            count += block(
                {"type": "thinking", "thinking": ""}, plan.thinking,
                lambda piece: {"type": "thinking_delta", "thinking": piece}, None,
            )  # fmt: skip
            sealed = {"type": "signature_delta", "signature": signature(plan.thinking.text)}
            event("content_block_delta", index=index, delta=sealed)
            event("content_block_stop", index=index)
            index += 1
        for call in plan.calls:
            count += block(
                self.tool_use(call), plan.arguments(call),
                lambda piece: {"type": "input_json_delta", "partial_json": piece}, None,
            )  # fmt: skip
            event("content_block_stop", index=index)
            index += 1
        if plan.text is not None:
            event("ping")
            count += block(
                {"type": "text", "text": ""}, plan.text,
                lambda piece: {"type": "text_delta", "text": piece}, fault,
            )  # fmt: skip
            event("content_block_stop", index=index)
        delta = {"stop_reason": _stop_reason(plan), "stop_sequence": None}
        event("message_delta", delta=delta, usage={"output_tokens": count})
        event("message_stop")
        self.end_stream()

    def message(
        self, body: dict[str, Any], content: list[Any], stop: str | None, prompt: int, output: int
    ) -> dict[str, Any]:
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": output},
        }
