"""The OpenAI-compatible backend: its wire format on httpx.MockTransport, and a fake
vLLM/llama.cpp server over real HTTP where a socket (or a server that generates) is the
point.

Request bodies, SSE and JSON parsing, usage, the failure classes and a regenerated
resume's budget and usage go through ``httpx.MockTransport`` (docs/architecture.md
section 12). Refused and cut connections,
time-outs, cancellation that drops the connection and stops the server, each resume mode
and GpuLane driving a configured server run on the fake, which the official ``openai``
client checks first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from backend_kit import (
    Sent,
    Wire,
    cancel_after,
    cancel_while,
    failure,
    json_answer,
    on_wire,
    run,
    sse_answer,
)
from fake_http import Fault
from fake_openai import FakeOpenAI, json_schema_refusal

from actors import BackendSettings, Config, GpuLane, SystemClock
from actors.backends.base import Backend, CallCancelledError, CancelToken
from actors.backends.openai_compat import OpenAICompatBackend, ResumeMode
from actors.backends.simulated import embedding
from actors.runtime import ManualClock
from protocol import (
    BackendError,
    BackendRequest,
    ChatMessage,
    Job,
    JobKind,
    JobMetrics,
    JobSpec,
    JobState,
    StoreSettings,
    ValidationError,
)

QUESTION = (ChatMessage("user", "How does the arbiter pick the next job?"),)

# ------------------------------------------------------------------- the wire

URL = "http://vllm.test"
SERVED = ("tiny", "embedder")
CHAT_ANSWER = ("The", " arbiter", " serves", " internal", " work", " first,", " then", " the",
               " rest.")  # fmt: skip
COMPLETION = (" a", " job", " is", " done", " when", " its", " stream", " ends.")
PROMPT_TOKENS = 11
CREATED = 1_767_614_400


def openai_at(transport: httpx.BaseTransport) -> OpenAICompatBackend:
    return OpenAICompatBackend(URL, transport=transport)


def openai_error(status: int, message: str, kind: str) -> httpx.Response:
    """An error answer in OpenAI's shape."""
    return json_answer({"error": {"message": message, "type": kind, "code": status}}, status)


def vllm(sent: Sent) -> httpx.Response:
    """What vLLM answers: ``/v1/models`` lists SERVED; an unknown model is a 404; a chat or
    completion is a canned answer, streamed one token per SSE chunk (with a usage chunk
    when asked, and ``[DONE]``) or one JSON object, cut at ``max_tokens`` with
    finish_reason "length"; embeddings are the simulator's unit vectors."""
    body = sent.body
    if sent.path == "/v1/models":
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "vllm", "max_model_len": 4096}
            for m in SERVED
        ]
        return json_answer({"object": "list", "data": data})
    if body["model"] not in SERVED:
        return openai_error(404, f"The model `{body['model']}` does not exist.", "NotFoundError")
    if sent.path == "/v1/embeddings":
        dimensions = body.get("dimensions") or 16
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": embedding(body["model"], t, dimensions),
            }
            for i, t in enumerate(body["input"])
        ]
        prompt = sum(len(text.split()) for text in body["input"])
        usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        return json_answer({"object": "list", "data": data, "model": body["model"], "usage": usage})
    chat = sent.path == "/v1/chat/completions"
    words = CHAT_ANSWER if chat else COMPLETION
    limit = body.get("max_tokens")
    tokens = words[:limit] if limit else words
    reason = "length" if limit is not None and limit <= len(words) else "stop"
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(tokens)}
    usage["total_tokens"] = PROMPT_TOKENS + len(tokens)
    if not body.get("stream"):
        text = "".join(tokens)
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
        choice.update(
            {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        )
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": "cmpl-1", "object": kind, "created": CREATED, "model": body["model"]}
        return json_answer({**head, "choices": [choice], "usage": usage})
    chunks = [chunk(body, chat, t, None) for t in tokens] + [chunk(body, chat, None, reason)]
    if chat:  # a chat stream opens with the assistant's role
        role = {"index": 0, "delta": {"role": "assistant"}}
        chunks.insert(0, {**chunk(body, chat, None, None), "choices": [role]})
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**chunk(body, chat, None, None), "choices": [], "usage": usage})
    return sse_answer([*((None, c) for c in chunks), (None, "[DONE]")])


def chunk(body: dict[str, Any], chat: bool, text: str | None, reason: str | None) -> dict[str, Any]:
    """One streamed chunk carrying ``text`` (None: no text) and a finish reason."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
    if chat:
        choice["delta"] = {} if text is None else {"content": text}
    else:
        choice["text"] = text or ""
    kind = "chat.completion.chunk" if chat else "text_completion"
    head = {"id": "cmpl-1", "object": kind, "created": CREATED, "model": body["model"]}
    return {**head, "choices": [choice]}


@pytest.fixture
def wire() -> Iterator[tuple[OpenAICompatBackend, Wire]]:
    with on_wire(openai_at, vllm) as wired:
        yield wired


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(("tiny", "embedder")) as fake:
        yield fake


@pytest.fixture
def backend(server: FakeOpenAI) -> Iterator[OpenAICompatBackend]:
    client = OpenAICompatBackend(server.url, timeout=5.0)
    yield client
    client.close()


def chat(model: str = "tiny", **fields: Any) -> BackendRequest:
    return BackendRequest(kind=JobKind.CHAT, model=model, messages=QUESTION, **fields)


def generate(prompt: str = "The GPU slot said", **fields: Any) -> BackendRequest:
    return BackendRequest(kind=JobKind.GENERATE, model="tiny", prompt=prompt, **fields)


# ---------------------------------------------------------------- the fake itself


def test_the_official_openai_client_reads_the_fake_server(server: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    whole = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}]
    )
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        if c.choices
    ]
    assert whole.choices[0].message.content == "".join(pieces) != ""
    assert whole.usage is not None and whole.usage.completion_tokens == len(
        [p for p in pieces if p]
    )
    text = client.completions.create(model="tiny", prompt="The GPU")
    assert text.choices[0].text and text.choices[0].finish_reason == "stop"
    vectors = client.embeddings.create(model="embedder", input=["a", "b"])
    assert [d.index for d in vectors.data] == [0, 1] and len(vectors.data[0].embedding) == 16
    assert [m.id for m in client.models.list()] == ["tiny", "embedder"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}])
    client.close()


# ----------------------------------------------------------------------- calls


def test_the_openai_backend_is_a_backend(backend: OpenAICompatBackend) -> None:
    assert isinstance(backend, Backend) and backend.name == "openai"


def test_a_chat_streams_each_token_over_sse_and_returns_the_whole_text(
    wire: tuple[OpenAICompatBackend, Wire],
) -> None:
    backend, sent = wire
    text, chunks = run(backend, chat())
    assert chunks == list(CHAT_ANSWER) and "".join(chunks) == text
    path, body = sent.last.path, sent.last.body
    assert path == "/v1/chat/completions" and body["stream_options"] == {"include_usage": True}
    assert run(backend, chat()) == (text, chunks)


def test_a_generate_goes_to_the_completions_endpoint_with_the_raw_prompt(
    wire: tuple[OpenAICompatBackend, Wire],
) -> None:
    backend, sent = wire
    text, chunks = run(backend, generate(system="Be brief."))
    assert chunks == list(COMPLETION) and "".join(chunks) == text
    path, body = sent.last.path, sent.last.body
    assert path == "/v1/completions" and body["prompt"] == "Be brief.\n\nThe GPU slot said"


def test_a_call_without_streaming_delivers_the_text_in_one_piece(
    wire: tuple[OpenAICompatBackend, Wire],
) -> None:
    backend, sent = wire
    streamed, _ = run(backend, chat())
    assert run(backend, chat(stream=False)) == (streamed, [streamed])
    assert sent.last.body["stream"] is False and "stream_options" not in sent.last.body
    streamed, _ = run(backend, generate())
    assert run(backend, generate(stream=False)) == (streamed, [streamed])


def test_usage_becomes_the_job_metrics_and_the_finish_reason_the_done_reason(
    wire: tuple[OpenAICompatBackend, Wire],
) -> None:
    backend, sent = wire
    result = backend.complete(chat(), lambda _: None, CancelToken())
    assert result.done_reason == "stop"
    assert result.metrics.eval_count == len(result.text.split()) == len(CHAT_ANSWER)
    assert result.metrics.prompt_eval_count == PROMPT_TOKENS
    assert result.metrics.total_duration_ns > 0
    capped = backend.complete(chat(max_tokens=3), lambda _: None, CancelToken())
    assert sent.last.body["max_tokens"] == 3
    assert capped.done_reason == "length" and capped.metrics.eval_count == 3


def test_options_format_and_api_key_map_onto_openai_fields() -> None:
    def keyed_at(transport: httpx.BaseTransport) -> OpenAICompatBackend:
        return OpenAICompatBackend(URL + "/v1", api_key="sk-local", transport=transport)

    request = chat(
        system="Be brief.",
        options={"temperature": 0.0, "seed": 7, "num_ctx": 8192, "stop": ["\n"]},
        format={"type": "object"},
        max_tokens=50,
    )
    with on_wire(keyed_at, vllm) as (keyed, sent):
        keyed.complete(request, lambda _: None, CancelToken())
    body, headers = sent.last.body, sent.last.headers
    assert sent.last.path == "/v1/chat/completions"  # the /v1 of the URL is not doubled
    assert headers["Authorization"] == "Bearer sk-local"
    assert (body["temperature"], body["seed"], body["stop"], body["max_tokens"]) == (
        0.0,
        7,
        ["\n"],
        50,
    )
    assert "num_ctx" not in body
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


# -------------------------------------------------------------------- failures


def test_an_unknown_model_is_a_permanent_error_with_the_server_message(
    wire: tuple[OpenAICompatBackend, Wire],
) -> None:
    backend, _ = wire
    error, _ = failure(backend, chat("ghost"))
    assert (error.transient, error.status) == (False, 404)
    assert error.message == "The model `ghost` does not exist."


@pytest.mark.parametrize(
    ("status", "transient"), [(400, False), (401, False), (429, True), (500, True), (503, True)]
)
def test_error_statuses_are_classified(status: int, transient: bool) -> None:
    refusal = openai_error(status, f"status {status} from the server", "api_error")
    with on_wire(openai_at, lambda _: refusal) as (backend, _):
        error, chunks = failure(backend, chat())
    assert (error.transient, error.status, chunks) == (transient, status, [])
    assert error.message == f"status {status} from the server"


@pytest.mark.parametrize(
    ("answer", "transient", "status"),
    [
        (json_schema_refusal(), False, 400),
        # pydantic's error about the server's own answer (no ('body', ...) location): a fault
        (
            {"error": {"message": "1 validation error for CreateChatCompletionResponse\n"
                       "choices.0.message\n  Field required", "type": "internal_server_error"}},
            True,
            500,
        ),
    ],
    ids=["the-request-body-is-invalid", "the-server-broke"],
)  # fmt: skip
def test_a_server_error_that_reports_the_request_body_invalid_is_a_permanent_400(
    answer: dict[str, Any], transient: bool, status: int
) -> None:
    """llama-cpp-python's server answers its request validation errors with a 500
    (``llama_cpp/server/errors.py``); retrying the same body would fail the same way."""
    with on_wire(openai_at, lambda _: json_answer(answer, 500)) as (backend, _):
        error, _ = failure(backend, chat(format={"type": "object"}))
    assert (error.transient, error.status) == (transient, status)
    assert error.message == answer["error"]["message"]


def test_a_refused_connection_is_transient() -> None:
    with FakeOpenAI() as fake:
        url = fake.url
    backend = OpenAICompatBackend(url)
    error, _ = failure(backend, chat())
    backend.close()
    assert error.transient and "cannot connect" in error.message


def test_a_stream_cut_mid_way_is_transient(
    backend: OpenAICompatBackend, server: FakeOpenAI
) -> None:
    server.inject(Fault("cut", after_chunks=3))
    error, chunks = failure(backend, chat())
    assert error.transient and len(chunks) == 3 and "cut the response" in error.message


def test_an_error_event_after_output_began_is_transient_with_its_message() -> None:
    def two_chunks_then_an_error(sent: Sent) -> httpx.Response:
        chunks = [chunk(sent.body, True, token, None) for token in CHAT_ANSWER[:2]]
        error = {"message": "CUDA out of memory", "type": "api_error", "code": 500}
        return sse_answer([*((None, c) for c in chunks), (None, {"error": error})])

    with on_wire(openai_at, two_chunks_then_an_error) as (backend, _):
        error, chunks = failure(backend, chat())
    assert error.transient and error.message == "CUDA out of memory" and len(chunks) == 2


def test_a_stream_ended_without_a_finish_reason_is_transient_not_a_short_answer() -> None:
    """llama-cpp-python's server, by default, ends a stream with ``[DONE]`` and no finish
    reason when another request arrives (``server/app.py``, ``interrupt_requests``)."""

    def interrupted(sent: Sent) -> httpx.Response:
        chunks = [chunk(sent.body, True, token, None) for token in CHAT_ANSWER[:3]]
        return sse_answer([*((None, c) for c in chunks), (None, "[DONE]")])

    with on_wire(openai_at, interrupted) as (backend, _):
        error, chunks = failure(backend, chat())
    assert error.transient and "without a finish reason after 3 chunk(s)" in error.message
    assert "--interrupt_requests false" in error.message and len(chunks) == 3


def test_a_slow_read_times_out_as_a_transient_error(manual_clock: ManualClock) -> None:
    # The fake's clock never moves, so the stall never ends: only the read time-out (real
    # time, as httpx measures it) can end the call.
    with FakeOpenAI(token_seconds=0.0, clock=manual_clock) as paused:
        paused.inject(Fault("stall", after_chunks=2, delay=5.0))
        impatient = OpenAICompatBackend(paused.url, timeout=0.2)
        error, chunks = failure(impatient, chat())
        impatient.close()
    assert error.transient and "timed out" in error.message and len(chunks) == 2


# ---------------------------------------------------------------- cancellation


def test_cancelling_mid_stream_closes_the_connection_and_the_server_stops(
    server: FakeOpenAI,
) -> None:
    server.mean_answer_tokens = 10**6
    server.token_seconds = 0.005
    backend = OpenAICompatBackend(server.url)
    token, seen, sink = cancel_after(4)
    with pytest.raises(CallCancelledError):
        backend.complete(chat(), sink, token)
    assert len(seen) == 4
    # Once no call is active the generation has ended, so its token count is final.
    stats = server.wait_for(lambda s: s["calls_disconnected"] == 1 and s["active"] == 0)
    assert server.stats()["tokens"] == stats["tokens"] <= 6
    assert stats["calls_finished"] == 0
    backend.close()


def test_cancelling_from_another_thread_before_any_output_ends_the_call(
    manual_clock: ManualClock,
) -> None:
    # The stall never ends on the fake's clock, and the backend's time-out outlasts
    # cancel_while's hang guard: only the cancel can end the call.
    with FakeOpenAI(clock=manual_clock) as paused:
        paused.inject(Fault("stall", delay=5.0))
        backend = OpenAICompatBackend(paused.url, timeout=120.0)
        cancel_while(backend, chat(), lambda: paused.wait_for(lambda s: s["requests"] == 1))
        backend.close()
        paused.wait_for(lambda s: s["calls_disconnected"] == 1)


# ---------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("mode", "prefill", "make"),
    [
        ("prefill", True, chat),
        ("continue_final_message", True, chat),
        ("regenerate", False, chat),
        ("prefill", True, generate),
    ],
    ids=["chat-prefill", "chat-vllm", "chat-regenerate", "generate"],
)
def test_an_interrupted_then_resumed_call_equals_the_uninterrupted_one(
    mode: ResumeMode, prefill: bool, make: Callable[..., BackendRequest]
) -> None:
    with FakeOpenAI(prefill=prefill) as fake:
        backend = OpenAICompatBackend(fake.url, resume=mode)
        full_text, full_chunks = run(backend, make())
        for k in (1, len(full_chunks) - 1):
            token, first, sink = cancel_after(k)
            with pytest.raises(CallCancelledError):
                backend.complete(make(), sink, token)
            prefix = "".join(first)
            rest_text, rest = run(backend, make(resume_prefix=prefix))
            assert prefix + rest_text == full_text and "".join(first + rest) == full_text
        _, body, _ = fake.requests[-1]
        backend.close()
    if make is chat and mode != "regenerate":
        assert body["messages"][-1]["role"] == "assistant"
    assert body.get("continue_final_message", False) == (mode == "continue_final_message")


def without_usage(sent: Sent) -> httpx.Response:
    """vLLM's answer as llama-cpp-python's server streams it: with no usage chunk (it
    ignores ``stream_options``), so the backend counts a token per chunk."""
    body = {key: value for key, value in sent.body.items() if key != "stream_options"}
    return vllm(dataclasses.replace(sent, body=body))


def resumed_job(spec: JobSpec, prefix: str, tokens: int) -> Job:
    """``spec``'s job after a call cut off once it had streamed ``prefix`` in ``tokens``
    tokens (what the slot keeps: the text and that call's usage)."""
    return Job(
        id="j", seq=1, spec=spec, state=JobState.RUNNING, created_at=0.0, updated_at=0.0,
        partial_output=prefix, segments=(JobMetrics(eval_count=tokens),),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "stream"),
    [(vllm, True), (without_usage, True), (vllm, False)],
    ids=["stream-with-usage", "stream-without-usage", "whole"],
)
def test_a_regenerated_resume_asks_for_the_whole_budget_and_counts_the_prefix_once(
    answer: Callable[[Sent], httpx.Response], stream: bool
) -> None:
    spec = JobSpec.chat(model="tiny", messages=[QUESTION[0]], max_tokens=6)
    job = resumed_job(spec, "".join(CHAT_ANSWER[:2]), 2)
    request = dataclasses.replace(BackendRequest.for_job(job), stream=stream)
    assert (request.max_tokens, request.prefix_tokens) == (4, 2)

    def regenerating(transport: httpx.BaseTransport) -> OpenAICompatBackend:
        return OpenAICompatBackend(URL, resume="regenerate", transport=transport)

    with on_wire(regenerating, answer) as (backend, sent):
        result = backend.complete(request, lambda _: None, CancelToken())
    # The server decodes the 2 tokens of the prefix again, then the 4 the budget has left.
    assert sent.last.body["max_tokens"] == 6 and "assistant" not in str(sent.last.body["messages"])
    assert job.partial_output + result.text == "".join(CHAT_ANSWER[:6])
    assert result.done_reason == "length" and result.metrics.eval_count == 4
    assert JobMetrics.total((*job.segments, result.metrics)).eval_count == 6


def test_a_continued_resume_asks_for_the_budget_left_and_keeps_the_servers_count(
    wire: tuple[OpenAICompatBackend, Wire],
) -> None:
    backend, sent = wire  # resume="prefill": the server continues after the prefix
    spec = JobSpec.chat(model="tiny", messages=[QUESTION[0]], max_tokens=6)
    request = BackendRequest.for_job(resumed_job(spec, "".join(CHAT_ANSWER[:2]), 2))
    result = backend.complete(request, lambda _: None, CancelToken())
    assert sent.last.body["max_tokens"] == 4 and result.metrics.eval_count == 4


def test_a_regenerated_resume_on_the_fake_ends_where_the_uninterrupted_answer_ends() -> None:
    spec = JobSpec.chat(model="tiny", messages=[QUESTION[0]], max_tokens=8)
    with FakeOpenAI(prefill=False) as fake:
        backend = OpenAICompatBackend(fake.url, resume="regenerate")
        whole = backend.complete(BackendRequest.for_spec(spec), lambda _: None, CancelToken())
        token, first, sink = cancel_after(3)
        with pytest.raises(CallCancelledError):
            backend.complete(BackendRequest.for_spec(spec), sink, token)
        job = resumed_job(spec, "".join(first), len(first))
        rest = backend.complete(BackendRequest.for_job(job), lambda _: None, CancelToken())
        backend.close()
    assert whole.done_reason == rest.done_reason == "length"
    assert job.partial_output + rest.text == whole.text
    usage = JobMetrics.total((*job.segments, rest.metrics))
    assert usage.eval_count == whole.metrics.eval_count == 8


def test_without_prefill_support_a_prefilled_chat_would_start_a_new_answer() -> None:
    """Why ``regenerate`` exists: such a server answers the prefill as a finished turn."""
    with FakeOpenAI(prefill=False) as fake:
        backend = OpenAICompatBackend(fake.url, resume="prefill")
        full_text, _ = run(backend, chat())
        prefix = full_text.split(" ")[0]
        rest_text, _ = run(backend, chat(resume_prefix=prefix))
        backend.close()
    assert prefix + rest_text != full_text


# ------------------------------------------------------------- embed, models


def test_embed_returns_one_vector_per_input_in_order(
    wire: tuple[OpenAICompatBackend, Wire],
) -> None:
    backend, sent = wire
    result = backend.embed("embedder", ("first", "second"), {"dimensions": 8}, CancelToken())
    assert (sent.last.path, sent.last.body) == (
        "/v1/embeddings",
        {"model": "embedder", "input": ["first", "second"], "dimensions": 8},
    )
    assert result.model == "embedder" and len(result.embeddings) == 2
    assert all(len(v) == 8 for v in result.embeddings)
    (second,) = backend.embed("embedder", ("second",), {"dimensions": 8}, CancelToken()).embeddings
    assert result.embeddings[1] == second and result.metrics.prompt_eval_count == 2


def test_loaded_models_lists_the_served_models_and_load_checks_one(
    wire: tuple[OpenAICompatBackend, Wire],
) -> None:
    backend, sent = wire
    models = backend.loaded_models()
    assert (sent.last.method, sent.last.path) == ("GET", "/v1/models")
    assert [(m.name, m.context_length) for m in models] == [("tiny", 4096), ("embedder", 4096)]
    backend.load("tiny")
    backend.unload("tiny")
    with pytest.raises(BackendError) as missing:
        backend.load("ghost")
    assert (missing.value.status, missing.value.transient) == (404, False)


def test_gpulane_drives_an_openai_server_named_in_its_config(
    server: FakeOpenAI, tmp_path: Path
) -> None:
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        backend=BackendSettings(kind="openai", url=server.url + "/v1", resume="regenerate"),
    )
    with GpuLane.start(config, clock=SystemClock()) as lane:
        answer = lane.submit(JobSpec.chat(model="tiny", messages=[QUESTION[0]])).result(5)
        vectors = lane.embed("embedder", ["a", "b"], caller="test").embeddings
    assert answer == run_direct(server) and len(vectors) == 2


def test_an_unknown_schema_form_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValidationError) as caught:
        BackendSettings(kind="openai", schema_form="json")
    assert caught.value.field == "backend.schema_form"
    assert "json_schema" in str(caught.value) and "json_object" in str(caught.value)
    with pytest.raises(ValueError, match="schema_form"):
        OpenAICompatBackend(URL, schema_form="json")  # type: ignore[arg-type]


def run_direct(server: FakeOpenAI) -> str:
    backend = OpenAICompatBackend(server.url)
    text, _ = run(backend, chat())
    backend.close()
    return text
