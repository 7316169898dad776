"""A fake of the Anthropic Messages API on loopback, speaking SSE like the real one.

``POST /v1/messages`` checks ``x-api-key`` and ``anthropic-version``, refuses a prefill
ending in whitespace (as the API does), continues a final assistant message, and streams
``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``,
``content_block_stop``, ``message_delta`` and ``message_stop`` events; errors are
``{"type": "error", "error": {"type", "message"}}`` bodies or ``error`` events.
"""

from __future__ import annotations

import json
from typing import Any

from fake_http import FakeHandler, FakeServer, Fault

from actors.backends.simulated import Answer, render_chat

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class FakeAnthropic(FakeServer):
    """Accepts ``api_key`` and serves ``models``."""

    def __init__(
        self, api_key: str = "sk-ant-test", models: tuple[str, ...] = ("claude-test",), **kw: Any
    ) -> None:
        super().__init__(_Handler, name="fake-anthropic", **kw)
        self.api_key = api_key
        self.models = models


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
        if last["role"] == "assistant" and last["content"] != last["content"].rstrip():
            self.error(400, "final assistant content cannot end with trailing whitespace")
            return
        system = [{"role": "system", "content": body["system"]}] if body.get("system") else []
        answer = self.fake.answer(body["model"], render_chat(system + messages), body["max_tokens"])
        self.run_call(lambda: self.stream(body, answer, fault))

    def stream(self, body: dict[str, Any], answer: Answer, fault: Fault | None) -> None:
        prompt = answer.prompt_tokens
        stop = {"length": "max_tokens", "stop": "end_turn"}
        if not body.get("stream"):
            while self.next_token(answer) is not None:
                pass
            reason = stop[answer.done_reason]
            self.send_json(200, self.message(body, answer.text, reason, prompt, len(answer.tokens)))
            return

        def event(kind: str, **fields: Any) -> None:
            self.write_event(json.dumps({"type": kind, **fields}), event=kind)

        def delta(text: str) -> None:
            event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})

        def error_event(fault: Fault) -> None:
            error = {"type": fault.error_type, "message": fault.message}
            event("error", error=error)
            self.end_stream()

        self.start_sse()
        event("message_start", message=self.message(body, "", None, prompt, 1, content=[]))
        event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        event("ping")
        count = self.stream_tokens(answer, delta, fault, error_event)
        event("content_block_stop", index=0)
        event(
            "message_delta",
            delta={"stop_reason": stop[answer.done_reason], "stop_sequence": None},
            usage={"output_tokens": count},
        )
        event("message_stop")
        self.end_stream()

    def message(
        self,
        body: dict[str, Any],
        text: str,
        stop: str | None,
        prompt: int,
        output: int,
        content: list[Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": text}] if content is None else content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": output},
        }
