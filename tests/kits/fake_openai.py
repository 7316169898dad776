"""A fake OpenAI-compatible server (the vLLM / llama.cpp flavour) for the backend tests.

``/v1/chat/completions`` and ``/v1/completions`` (SSE streams ending with ``[DONE]``,
``stream_options.include_usage``, or one JSON answer), ``/v1/embeddings``, ``/v1/models``
and OpenAI-shaped errors. ``prefill=True`` continues a final assistant message (like
llama.cpp's server); ``prefill=False`` answers it as a finished turn (like
llama-cpp-python's server). Its fidelity is checked with the official ``openai`` client.
"""

from __future__ import annotations

import json
from typing import Any

from fake_http import FakeHandler, FakeServer, Fault

from actors.backends.simulated import ASSISTANT_MARKER, Answer, embedding, render_chat


class FakeOpenAI(FakeServer):
    """Serves ``models``; see the module docstring for ``prefill``."""

    def __init__(self, models: tuple[str, ...] = ("tiny",), *, prefill: bool = True, **kw: Any):
        super().__init__(_Handler, name="fake-openai", **kw)
        self.models = models
        self.prefill = prefill


class _Handler(FakeHandler):
    @property
    def openai(self) -> FakeOpenAI:
        fake = self.fake
        assert isinstance(fake, FakeOpenAI)
        return fake

    def do_GET(self) -> None:
        if self.path != "/v1/models":
            self.error(404, f"no route {self.path}", "not_found_error")
            return
        self.fake.bump("requests")
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake", "max_model_len": 4096}
            for m in self.openai.models
        ]
        self.send_json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:
        body = self.read_json()
        fault = self.fake.take_fault(self.path)
        if fault is not None and fault.kind == "status":
            self.error(fault.status, fault.message, fault.error_type)
            return
        model = body.get("model")
        if model not in self.openai.models:
            self.error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return
        if self.path == "/v1/embeddings":
            self.embeddings(body)
        elif self.path == "/v1/chat/completions":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                self.error(400, "messages must be a non-empty list", "BadRequestError")
                return
            self.complete(body, fault, "chat.completion", self.chat_context(messages))
        elif self.path == "/v1/completions":
            self.complete(body, fault, "text_completion", str(body.get("prompt", "")))
        else:
            self.error(404, f"no route {self.path}", "not_found_error")

    def error(self, status: int, message: str, kind: str) -> None:
        self.send_json(status, {"error": {"message": message, "type": kind, "code": status}})

    def chat_context(self, messages: list[dict[str, str]]) -> str:
        if self.openai.prefill:
            return render_chat(messages)
        turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return f"{turns}{ASSISTANT_MARKER}\n"

    def embeddings(self, body: dict[str, Any]) -> None:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = int(body.get("dimensions") or 16)
        data = [
            {"object": "embedding", "index": i, "embedding": embedding(body["model"], text, dims)}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(text.split()) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self.send_json(
            200, {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    def complete(self, body: dict[str, Any], fault: Fault | None, kind: str, context: str) -> None:
        answer = self.fake.answer(body["model"], context, body.get("max_tokens"))
        if not body.get("stream"):
            self.run_call(lambda: self.whole(body, kind, answer))
            return
        self.run_call(lambda: self.stream(body, kind, answer, fault))

    def whole(self, body: dict[str, Any], kind: str, answer: Answer) -> None:
        while self.next_token(answer) is not None:
            pass
        choice: dict[str, Any] = {"index": 0, "finish_reason": answer.done_reason}
        if kind == "chat.completion":
            choice["message"] = {"role": "assistant", "content": answer.text}
        else:
            choice["text"] = answer.text
        prompt, count = answer.prompt_tokens, len(answer.tokens)
        usage = {"prompt_tokens": prompt, "completion_tokens": count}
        usage["total_tokens"] = prompt + count
        created = int(self.fake.clock.now())
        head = {"id": "cmpl-1", "object": kind, "created": created, "model": body["model"]}
        self.send_json(200, {**head, "choices": [choice], "usage": usage})

    def stream(self, body: dict[str, Any], kind: str, answer: Answer, fault: Fault | None) -> None:
        chat = kind == "chat.completion"
        head = {
            "id": "cmpl-1",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(self.fake.clock.now()),
            "model": body["model"],
        }

        def chunk(text: str | None, reason: str | None = None) -> None:
            choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
            if chat:
                choice["delta"] = {} if text is None else {"content": text}
            else:
                choice["text"] = text or ""
            self.write_event(json.dumps({**head, "choices": [choice]}))

        def error_event(fault: Fault) -> None:
            error = {"message": fault.message, "type": fault.error_type, "code": fault.status}
            self.write_event(json.dumps({"error": error}))
            self.end_stream()

        self.start_sse()
        if chat:
            self.write_event(
                json.dumps({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            )
        count = self.stream_tokens(answer, chunk, fault, error_event)
        chunk(None, answer.done_reason)
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": count}
            usage["total_tokens"] = answer.prompt_tokens + count
            self.write_event(json.dumps({**head, "choices": [], "usage": usage}))
        self.write_event("[DONE]")
        self.end_stream()
