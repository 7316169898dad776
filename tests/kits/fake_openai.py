"""A fake OpenAI-compatible server (the vLLM / llama.cpp flavour) for the backend tests.

``/v1/chat/completions`` and ``/v1/completions`` (SSE streams ending with ``[DONE]``,
``stream_options.include_usage``, or one JSON answer), ``/v1/embeddings``, ``/v1/models``
and OpenAI-shaped errors. ``prefill=True`` continues a final assistant message (like
llama.cpp's server); ``prefill=False`` answers it as a finished turn (like
llama-cpp-python's server). Its fidelity is checked with the official ``openai`` client.

A chat answers as :class:`fake_http.Plan` says, in the shapes of openai-python's
``types/chat``: ``tools`` give ``tool_calls`` (ids, JSON-string arguments, streamed as
llama.cpp and vLLM stream them: a first delta with the id and name, then argument
pieces, by index) and finish reason ``tool_calls``; ``chat_template_kwargs.
enable_thinking`` or ``reasoning_effort`` give thinking first, in ``reasoning_key``
(``reasoning_content`` as llama.cpp names it, ``reasoning`` as vLLM does);
``response_format`` gives JSON, by the schema in either form llama.cpp's server takes
(``json_schema.schema``, or ``schema`` beside ``json_object``), and ``json_schema=False``
answers the first form as llama-cpp-python's server does (:func:`json_schema_refusal`);
``logprobs``/``top_logprobs`` give each token's (the
legacy map shape on ``/v1/completions``). Messages are checked as OpenAI checks them (a
400 naming the field): image parts need a data URL of a known image type, a tool call
its id and its arguments as a JSON string, a tool result the ``tool_call_id`` of an
earlier call.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fake_http import FakeHandler, FakeServer, Fault, Plan

from actors.backends.simulated import ASSISTANT_MARKER, embedding, render_chat
from actors.backends.simulated._text import VOCABULARY, stable_hash

_DATA_URL = re.compile(r"data:image/(png|jpeg|gif|webp);base64,(?P<data>[A-Za-z0-9+/=]+)")


class BadRequest(Exception):
    """A request OpenAI would answer with 400 and this message."""


class FakeOpenAI(FakeServer):
    """Serves ``models``; see the module docstring for ``prefill`` and ``reasoning_key``."""

    def __init__(
        self,
        models: tuple[str, ...] = ("tiny",),
        *,
        prefill: bool = True,
        reasoning_key: str = "reasoning_content",
        json_schema: bool = True,
        **kw: Any,
    ):
        super().__init__(_Handler, name="fake-openai", **kw)
        self.models = models
        self.prefill = prefill
        self.reasoning_key = reasoning_key
        self.json_schema = json_schema


def json_schema_refusal() -> dict[str, Any]:
    """What llama-cpp-python's server (0.3.36) answers, with a 500, to ``response_format``
    of type ``json_schema``: FastAPI's validation error of the request body, as its
    ``RouteErrorHandler`` wraps every exception (``llama_cpp/server/errors.py``), taken
    from the real server."""
    message = (
        "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
        "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
        "'ctx': {'expected': \"'text' or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\""
        ", line 376, in create_chat_completion\n    POST /v1/chat/completions"
    )
    error = {"message": message, "type": "internal_server_error", "param": None, "code": None}
    return {"error": error}


def turns(messages: object) -> list[dict[str, Any]]:
    """OpenAI's messages in the simulator's (Ollama's) shape, checked as OpenAI checks them;
    BadRequest names what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    called: set[str] = set()
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        content, images = _content(message.get("content"), field)
        turn: dict[str, Any] = {"role": message.get("role"), "content": content}
        if images:
            turn["images"] = images
        calls = message.get("tool_calls") or []
        if calls:
            turn["tool_calls"] = [
                _call(call, f"{field}.tool_calls[{i}]") for i, call in enumerate(calls)
            ]
            called.update(call["id"] for call in calls)
        if turn["role"] == "tool":
            if message.get("tool_call_id") not in called:
                raise BadRequest(
                    f"{field}.tool_call_id: messages with role 'tool' must be a response to a "
                    "preceding message with 'tool_calls'"
                )
            if message.get("name"):
                turn["tool_name"] = message["name"]
        out.append(turn)
    return out


def _content(content: object, field: str) -> tuple[str, list[str]]:
    """A message's text and its images (base64), from a string or content parts."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise BadRequest(f"{field}.content must be a string or a list of parts")
    texts, images = [], []
    for index, part in enumerate(content):
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            found = _DATA_URL.fullmatch(url)
            if found is None:
                raise BadRequest(f"{field}.content[{index}].image_url.url: not an image data URL")
            images.append(found["data"])
        else:
            raise BadRequest(f"{field}.content[{index}].type: unknown part {part.get('type')!r}")
    return "".join(texts), images


def _call(call: dict[str, Any], field: str) -> dict[str, Any]:
    """An assistant's tool call in Ollama's shape (arguments an object)."""
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if not isinstance(call.get("id"), str) or call.get("type") != "function":
        raise BadRequest(f"{field}: a tool call needs an id and type 'function'")
    if not isinstance(arguments, str):
        raise BadRequest(f"{field}.function.arguments: Input should be a valid string")
    return {"function": {"name": function.get("name"), "arguments": json.loads(arguments)}}


def logprob(token: str) -> float:
    """A token's deterministic log probability."""
    return -(stable_hash("logprob", token) % 3000) / 1000


def alternatives(token: str, count: int) -> list[tuple[str, float]]:
    """The ``count`` likeliest tokens at a place: the chosen one, then less likely words."""
    chosen = logprob(token)
    others = [(f" {word}", chosen - 1 - i) for i, word in enumerate(VOCABULARY[: count - 1])]
    return [(token, chosen), *others][:count]


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
        try:
            if self.path == "/v1/embeddings":
                self.embeddings(body)
            elif self.path == "/v1/chat/completions":
                self.chat(body, fault)
            elif self.path == "/v1/completions":
                prompt = str(body.get("prompt", ""))
                plan = self.fake.plan(model, [], prompt, body.get("max_tokens"))
                self.run_call(lambda: self.respond(body, "text_completion", plan, fault))
            else:
                self.error(404, f"no route {self.path}", "not_found_error")
        except BadRequest as exc:
            self.error(400, str(exc), "BadRequestError")

    def error(self, status: int, message: str, kind: str) -> None:
        self.send_json(status, {"error": {"message": message, "type": kind, "code": status}})

    def chat(self, body: dict[str, Any], fault: Fault | None) -> None:
        chat_turns = turns(body.get("messages"))
        if self.openai.prefill:
            context = render_chat(chat_turns)
        else:
            rendered = "".join(f"<|{t['role']}|>\n{t['content']}\n" for t in chat_turns)
            context = f"{rendered}{ASSISTANT_MARKER}\n"
        kwargs = body.get("chat_template_kwargs") or {}
        think = body.get("reasoning_effort") or (
            "medium" if kwargs.get("enable_thinking") else None
        )
        response_format = body.get("response_format") or {}
        schema = None
        if response_format.get("type") == "json_object":
            schema = response_format.get("schema") or "json"
        elif response_format.get("type") == "json_schema":
            if not self.openai.json_schema:
                self.send_json(500, json_schema_refusal())
                return
            schema = response_format["json_schema"]["schema"]
        plan = self.fake.plan(
            body["model"], chat_turns, context, body.get("max_tokens"),
            tools=body.get("tools") or (), think=think, schema=schema,
        )  # fmt: skip
        self.run_call(lambda: self.respond(body, "chat.completion", plan, fault))

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

    def logprobs(self, body: dict[str, Any], chat: bool, token: str) -> dict[str, Any] | None:
        """One token's ``logprobs`` as the request asked for them (None: it did not)."""
        if chat and body.get("logprobs"):
            tops = alternatives(token, int(body.get("top_logprobs") or 0))
            top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in tops]
            item = {"token": token, "logprob": logprob(token), "bytes": list(token.encode())}
            return {"content": [{**item, "top_logprobs": top}]}
        if not chat and body.get("logprobs") is not None:
            tops = dict(alternatives(token, int(body["logprobs"])))
            return {"tokens": [token], "token_logprobs": [logprob(token)], "top_logprobs": [tops]}
        return None

    def respond(self, body: dict[str, Any], kind: str, plan: Plan, fault: Fault | None) -> None:
        """Answer the call as ``plan`` says, streamed or whole."""
        if body.get("stream"):
            self.stream(body, kind, plan, fault)
        else:
            self.whole(body, kind, plan)

    def whole(self, body: dict[str, Any], kind: str, plan: Plan) -> None:
        chat = kind == "chat.completion"
        thought = self.drain(plan.thinking)
        text = self.drain(plan.text)
        count = len(thought) + len(text)
        finish = plan.text.done_reason if plan.text is not None else "tool_calls"
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
            if thought:
                message[self.openai.reasoning_key] = "".join(thought)
            if plan.calls:
                message["tool_calls"] = [self.tool_call(call) for call in plan.calls]
                count += sum(len(self.drain(plan.arguments(call))) for call in plan.calls)
            choice["message"] = message
        else:
            choice["text"] = "".join(text)
        logprobs = [self.logprobs(body, chat, token) for token in text]
        if logprobs and logprobs[0] is not None:
            choice["logprobs"] = _joined([entry or {} for entry in logprobs])
        usage = {"prompt_tokens": plan.prompt_tokens, "completion_tokens": count}
        usage["total_tokens"] = plan.prompt_tokens + count
        created = int(self.fake.clock.now())
        head = {"id": "cmpl-1", "object": kind, "created": created, "model": body["model"]}
        self.send_json(200, {**head, "choices": [choice], "usage": usage})

    def drain(self, source: Any) -> list[str]:
        """Every token ``source`` (an Answer or Scripted, or None) decodes, paced."""
        tokens: list[str] = []
        while source is not None and (token := self.next_token(source)) is not None:
            tokens.append(token)
        return tokens

    def tool_call(self, call: dict[str, Any]) -> dict[str, Any]:
        function = call["function"]
        arguments = json.dumps(function["arguments"])
        return {
            "id": call["id"], "type": "function",
            "function": {"name": function["name"], "arguments": arguments},
        }  # fmt: skip

    def stream(self, body: dict[str, Any], kind: str, plan: Plan, fault: Fault | None) -> None:
        chat = kind == "chat.completion"
        head = {
            "id": "cmpl-1",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(self.fake.clock.now()),
            "model": body["model"],
        }

        def send(delta: dict[str, Any] | None, reason: str | None = None, **more: Any) -> None:
            choice: dict[str, Any] = {"index": 0, "finish_reason": reason, **more}
            if chat:
                choice["delta"] = delta or {}
            else:
                choice["text"] = (delta or {}).get("content", "")
            self.write_event(json.dumps({**head, "choices": [choice]}))

        def text(token: str) -> None:
            lp = self.logprobs(body, chat, token)
            send({"content": token}, **({"logprobs": lp} if lp else {}))

        def error_event(fault: Fault) -> None:
            error = {"message": fault.message, "type": fault.error_type, "code": fault.status}
            self.write_event(json.dumps({"error": error}))
            self.end_stream()

        self.start_sse()
        if chat:
            send({"role": "assistant"})
        count = 0
        if plan.thinking is not None:
            count += self.stream_tokens(
                plan.thinking, lambda t: send({self.openai.reasoning_key: t}), None, error_event
            )
        for index, call in enumerate(plan.calls):
            function = {"name": call["function"]["name"], "arguments": ""}
            opening = {"index": index, "id": call["id"], "type": "function", "function": function}
            send({"tool_calls": [opening]})
            pieces = plan.arguments(call)
            while (piece := self.next_token(pieces)) is not None:
                send({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                count += 1
        if plan.text is not None:
            count += self.stream_tokens(plan.text, text, fault, error_event)
        send(None, plan.text.done_reason if plan.text is not None else "tool_calls")
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = plan.prompt_tokens
            usage = {"prompt_tokens": prompt, "completion_tokens": count}
            usage["total_tokens"] = prompt + count
            self.write_event(json.dumps({**head, "choices": [], "usage": usage}))
        self.write_event("[DONE]")
        self.end_stream()


def _joined(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-token ``logprobs`` objects joined into one answer's."""
    if "content" in entries[0]:
        return {"content": [item for entry in entries for item in entry["content"]]}
    return {key: [v for entry in entries for v in entry[key]] for key in entries[0]}
