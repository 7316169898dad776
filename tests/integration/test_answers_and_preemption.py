"""Answers with thinking and tool calls through the lane, and preemption that stays honest
with them (docs/architecture.md section 3, "Preempt"), on the fake GPU.

A resumed call gets the token budget that is left and the job's usage is summed over its
calls, across a restart too. Output a new call cannot continue exactly (thinking, tool
calls) starts over if nobody has seen it; once a streaming client has seen it the call is
not preempted, and a failure or a stop fails the job rather than show that client
repeated or contradictory output. A field the backend cannot carry is refused by name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from actors import BackendSettings, Config, GpuLane
from actors.testing import FakeBackend, FakeGpu, InjectedFault, ManualClock, quiesce
from actors.tree import backend_slots
from protocol import (
    ActiveHours,
    Answer,
    Chunk,
    JobFailedError,
    JobMetrics,
    JobSpec,
    JobState,
    Lane,
    Priority,
    RetryPolicy,
    SchedulingPolicy,
    StoreSettings,
    ToolCall,
    ValidationError,
)

ALWAYS_ACTIVE = SchedulingPolicy(active_hours=ActiveHours.parse("00:00-23:59"))
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}
PARIS = ToolCall("get_weather", {"city": "Paris"})
StartLane = Callable[..., GpuLane]


@pytest.fixture
def start_lane(start_lane: StartLane) -> StartLane:
    """The shared fixture, with preemption on at all hours unless a test says otherwise."""
    return lambda **given: start_lane(**{"scheduling": ALWAYS_ACTIVE, **given})


def external(text: str = "Weather in Paris?", **fields: object) -> JobSpec:
    return JobSpec.chat(
        model="qwen3", messages=[{"role": "user", "content": text}], lane=Lane.EXTERNAL, **fields
    )


def preempt(lane: GpuLane, fake_gpu: FakeGpu, answer: str = "bot answer") -> None:
    """Submit internal work, which preempts the external call, and let it run to its end."""
    bot = lane.submit(JobSpec.chat(model="qwen3", messages=[{"role": "user", "content": "bot"}],
                                   lane=Lane.INTERNAL))  # fmt: skip
    call = fake_gpu.next_call()
    assert call.request.messages[0].content == "bot"
    call.finish(answer)
    assert bot.result(timeout=5) == answer


# --- the answer ----------------------------------------------------------------------


def test_an_answer_carries_thinking_tool_calls_and_the_backends_done_reason(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    ticket = lane.submit(external(tools=[WEATHER], think=True))
    call = fake_gpu.next_call()
    assert call.request.tools[0].name == "get_weather" and call.request.think is True
    call.think("The user", " wants Paris.").call_tool("get_weather", {"city": "Paris"})
    call.finish(done_reason="stop")
    answer = ticket.result(timeout=5)
    assert isinstance(answer, Answer) and answer == ""
    assert answer.thinking == "The user wants Paris." and answer.tool_calls == (PARIS,)
    assert answer.done_reason == "stop"
    job = lane.get(ticket.job_id)
    assert job.output is not None and job.output.tool_calls == (PARIS,)
    assert job.answer == answer and job.answer.thinking == answer.thinking


def test_an_answer_is_still_its_text_for_a_caller_that_treats_it_as_a_str(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    ticket = lane.submit(external("hello"))
    fake_gpu.next_call().emit("Hello").finish(" there", done_reason="length")
    answer = ticket.result(timeout=5)
    assert answer == "Hello there" and answer.upper() == "HELLO THERE"
    assert answer.done_reason == "length" and answer.thinking == "" and answer.tool_calls == ()


def test_streamed_chunks_carry_thinking_and_tool_calls_in_order(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    ticket = lane.submit(external(tools=[WEATHER], stream=True))
    call = fake_gpu.next_call()
    call.think("hmm").emit("Checking.").call_tool("get_weather", {"city": "Paris"}).finish()
    chunks = list(ticket.chunks(timeout=5))
    assert all(isinstance(c, Chunk) for c in chunks)
    assert [(c.text, c.thinking, c.tool_calls) for c in chunks] == [
        ("", "hmm", ()), ("Checking.", "", ()), ("", "", (PARIS,)),
    ]  # fmt: skip


def test_an_asyncio_host_streams_chunks_with_their_thinking(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    async def host() -> tuple[list[Chunk], Answer]:
        ticket = lane.submit(external(think="high"))
        backend = asyncio.get_running_loop().run_in_executor(
            None, lambda: fake_gpu.next_call().think("a", "b").finish("c")
        )
        chunks = [chunk async for chunk in ticket.stream()]
        await backend
        return chunks, await ticket

    chunks, answer = asyncio.run(host())
    assert [c.thinking for c in chunks] == ["a", "b", ""] and "".join(chunks) == "c"
    assert answer == "c" and answer.thinking == "ab"


# --- the token budget and the usage across segments ------------------------------------


def test_a_resumed_call_gets_the_budget_that_is_left_and_the_usage_is_summed(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane()
    ticket = lane.submit(external("long answer", max_tokens=10, stream=True))
    first = fake_gpu.next_call()
    assert first.request.max_tokens == 10
    first.emit("one", " two", " three")
    streamed = ticket.chunks(timeout=5)
    assert [next(streamed) for _ in range(3)] == ["one", " two", " three"]
    preempt(lane, fake_gpu)
    resumed = fake_gpu.next_call()
    assert (resumed.request.resume_prefix, resumed.request.max_tokens) == ("one two three", 7)
    resumed.finish(" four", JobMetrics(eval_count=1, prompt_eval_count=20, eval_duration_ns=5))
    assert list(streamed) == [" four"], "each piece once"
    job = lane.get(ticket.job_id)
    assert job.result == "one two three four" and job.preemptions == 1
    (cut, last) = job.segments
    assert cut.eval_count == 3 and last.prompt_eval_count == 20
    assert job.metrics == JobMetrics.total(job.segments)
    assert job.metrics is not None and job.metrics.eval_count == 4


def test_a_num_predict_option_is_a_budget_too(start_lane: StartLane, fake_gpu: FakeGpu) -> None:
    lane = start_lane()
    ticket = lane.submit(external(options={"num_predict": 6}))
    fake_gpu.next_call().emit("a", "b")
    quiesce()
    preempt(lane, fake_gpu)
    resumed = fake_gpu.next_call()
    assert resumed.request.max_tokens == 4 and resumed.request.options["num_predict"] == 6
    resumed.finish("c")
    assert ticket.result(timeout=5) == "abc"


def test_a_job_that_spent_its_budget_before_it_was_preempted_ends_without_another_call(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane()
    ticket = lane.submit(external(max_tokens=2))
    fake_gpu.next_call().emit("all", " spent")
    quiesce()
    preempt(lane, fake_gpu)
    answer = ticket.result(timeout=5)
    assert answer == "all spent" and answer.done_reason == "length"
    assert fake_gpu.no_new_call()


def test_the_usage_of_earlier_calls_survives_a_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")))
    first = FakeGpu(clock)
    with GpuLane.start(config, gpu=first, clock=clock) as lane:
        job_id = lane.submit(external(max_tokens=10), detach=True).job_id
        first.next_call().emit("one", " two")
        quiesce()
    second = FakeGpu(clock)
    with GpuLane.start(config, gpu=second, clock=clock) as lane:
        call = second.next_call()
        assert (call.request.resume_prefix, call.request.max_tokens) == ("one two", 8)
        call.finish(" three", JobMetrics(eval_count=1))
        job = lane.wait(job_id, timeout=5)
    assert job.result == "one two three" and [s.eval_count for s in job.segments] == [2, 1]
    assert job.metrics is not None and job.metrics.eval_count == 3


def test_the_usage_of_earlier_calls_survives_a_crash_of_the_slot(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    ticket = lane.submit(external(max_tokens=10))
    cut = fake_gpu.next_call()
    cut.emit("one", " two")
    quiesce()
    lane.ref_for("gpu0").tell(InjectedFault())
    assert cut.wait_cancelled()
    again = fake_gpu.next_call()
    assert (again.request.resume_prefix, again.request.max_tokens) == ("one two", 8)
    again.finish(" three", JobMetrics(eval_count=1))
    assert ticket.result(timeout=5) == "one two three"
    assert [s.eval_count for s in lane.get(ticket.job_id).segments] == [2, 1]


# --- output that cannot be continued -----------------------------------------------------


def test_thinking_nobody_has_seen_starts_over_from_scratch_when_preempted(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane()
    ticket = lane.submit(external(think=True, max_tokens=50))
    cut = fake_gpu.next_call()
    cut.think("First", " try")
    quiesce()
    preempt(lane, fake_gpu)
    assert cut.token.cancelled
    again = fake_gpu.next_call()
    assert (again.request.resume_prefix, again.request.max_tokens) == ("", 50)
    late = ticket.chunks(timeout=5)  # a client that starts streaming only now
    again.think("Second try")
    assert next(late).thinking == "Second try", "the first try is forgotten"
    again.finish("Sunny.")
    assert [c.text for c in late] == ["Sunny."]
    answer = ticket.result(timeout=5)
    assert answer == "Sunny." and answer.thinking == "Second try"
    job = lane.get(ticket.job_id)
    assert job.preemptions == 1 and len(job.segments) == 1, "no segment of the first try"


def test_a_tool_call_nobody_has_seen_starts_over_when_preempted(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane()
    ticket = lane.submit(external(tools=[WEATHER]))
    fake_gpu.next_call().emit("Let me check.").call_tool("get_weather", {"city": "Pariss"})
    quiesce()
    preempt(lane, fake_gpu)
    again = fake_gpu.next_call()
    assert again.request.resume_prefix == ""
    again.call_tool("get_weather", {"city": "Paris"}).finish()
    answer = ticket.result(timeout=5)
    assert answer == "" and answer.tool_calls == (PARIS,)


def test_a_streaming_client_that_has_seen_thinking_is_not_preempted_and_sees_each_piece_once(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane()
    ticket = lane.submit(external(think=True, stream=True))
    call = fake_gpu.next_call()
    call.think("Paris")
    streamed = ticket.chunks(timeout=5)
    assert next(streamed).thinking == "Paris"
    bot = lane.submit(
        JobSpec.chat(model="qwen3", messages=[{"role": "user", "content": "bot"}],
                     lane=Lane.INTERNAL)
    )  # fmt: skip
    quiesce()
    assert not call.token.cancelled, "preempting it would show the client its thinking twice"
    call.think(", sunny").finish("Sunny.")
    assert [(c.text, c.thinking) for c in streamed] == [("", ", sunny"), ("Sunny.", "")]
    answer = ticket.result(timeout=5)
    assert answer == "Sunny." and answer.thinking == "Paris, sunny"
    assert lane.get(ticket.job_id).preemptions == 0
    fake_gpu.next_call().finish("bot answer")  # the internal job runs once the call ends
    assert bot.result(timeout=5) == "bot answer"


def test_a_streaming_client_that_has_seen_only_text_is_preempted_and_resumed(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane()
    ticket = lane.submit(external(think=True, stream=True))
    fake_gpu.next_call().emit("It is")
    streamed = ticket.chunks(timeout=5)
    assert next(streamed) == "It is"
    preempt(lane, fake_gpu)
    resumed = fake_gpu.next_call()
    assert resumed.request.resume_prefix == "It is"
    resumed.finish(" sunny.")
    assert list(streamed) == [" sunny."]
    assert ticket.result(timeout=5) == "It is sunny."


def test_a_failure_after_a_client_saw_thinking_fails_the_job_instead_of_repeating_it(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    ticket = lane.submit(external(think=True, stream=True))
    call = fake_gpu.next_call()
    call.think("Paris")
    streamed = ticket.chunks(timeout=5)
    assert next(streamed).thinking == "Paris"
    call.fail("connection reset", transient=True)
    with pytest.raises(JobFailedError, match="not retried: its client has seen thinking"):
        next(streamed)
    job = lane.get(ticket.job_id)
    assert job.state is JobState.FAILED and "connection reset" in (job.error or "")
    assert fake_gpu.no_new_call()


def test_a_failure_after_thinking_nobody_saw_is_retried_from_scratch(
    lane: GpuLane, fake_gpu: FakeGpu, manual_clock: ManualClock
) -> None:
    ticket = lane.submit(external(think=True))
    call = fake_gpu.next_call()
    call.think("Paris").emit("It is")
    quiesce()
    call.fail("connection reset", transient=True)
    assert fake_gpu.no_new_call()
    manual_clock.advance(RetryPolicy().max_delay_s)
    again = fake_gpu.next_call()
    assert again.request.resume_prefix == ""
    again.think("Paris again").finish("Sunny.")
    answer = ticket.result(timeout=5)
    assert answer == "Sunny." and answer.thinking == "Paris again"
    assert lane.get(ticket.job_id).attempts == 1


def test_a_stop_fails_a_job_whose_client_saw_thinking_and_requeues_one_nobody_saw(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    seen_store = Config(store=StoreSettings(path=str(tmp_path / "seen.sqlite3")))
    unseen_store = Config(store=StoreSettings(path=str(tmp_path / "unseen.sqlite3")))
    fake = FakeGpu(clock)
    with GpuLane.start(seen_store, gpu=fake, clock=clock) as lane:
        ticket = lane.submit(external(think=True, stream=True))
        fake.next_call().think("Paris")
        streamed = ticket.chunks(timeout=5)
        assert next(streamed).thinking == "Paris"
        seen_id = ticket.job_id
    with pytest.raises(JobFailedError, match="its slot stopped, and its client has seen"):
        next(streamed)
    fake = FakeGpu(clock)
    with GpuLane.start(unseen_store, gpu=fake, clock=clock) as lane:
        unseen_id = lane.submit(external(think=True), detach=True).job_id
        fake.next_call().think("Paris")
        quiesce()
    again = FakeGpu(clock)
    with GpuLane.start(unseen_store, gpu=again, clock=clock) as lane:
        call = again.next_call()
        assert call.request.resume_prefix == ""
        call.think("Paris, again").finish("Sunny.")
        job = lane.wait(unseen_id, timeout=5)
    assert job.answer == "Sunny." and job.answer.thinking == "Paris, again"
    with GpuLane.start(seen_store, gpu=FakeGpu(clock), clock=clock) as lane:
        assert lane.get(seen_id).state is JobState.FAILED


# --- fields a backend cannot carry ---------------------------------------------------------


class TextOnlyBackend(FakeBackend):
    """A fake backend that carries none of the optional request features."""

    name = "text-only"
    carries = frozenset()


def test_a_field_the_backend_cannot_carry_is_refused_at_submit_by_name(tmp_path: Path) -> None:
    clock = ManualClock()
    config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")))
    with GpuLane.start(config, backend=TextOnlyBackend(clock), clock=clock) as lane:
        with pytest.raises(ValidationError) as caught:
            lane.submit(external(tools=[WEATHER]))
        assert caught.value.field == "tools"
        assert "the text-only backend cannot carry it" in str(caught.value)
        with pytest.raises(ValidationError) as caught:
            lane.submit(
                JobSpec.chat(model="m", messages=[
                    {"role": "user", "content": "hi"},
                    {"role": "user", "content": "look", "images": ["aGk="]},
                ])
            )  # fmt: skip
        assert caught.value.field == "messages[1].images"
        assert lane.list() == (), "nothing refused was queued"


def test_a_slot_refuses_a_field_its_backend_cannot_carry_and_the_job_fails_naming_it(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")))
    narrow = TextOnlyBackend(clock)
    with GpuLane.start(config, gpu=backend_slots(narrow), clock=clock) as lane:
        ticket = lane.submit(external(think="low"))  # the facade does not know this backend
        with pytest.raises(JobFailedError, match="think: the text-only backend cannot carry"):
            ticket.result(timeout=5)
        assert lane.get(ticket.job_id).attempts == 1 and narrow.all_calls == []


def test_a_cloud_eligible_job_is_refused_a_field_the_cloud_backend_cannot_carry(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")))
    local, cloud = FakeBackend(clock), TextOnlyBackend(clock)
    with GpuLane.start(config, backend=local, cloud=cloud, clock=clock) as lane:
        with pytest.raises(ValidationError) as caught:
            lane.submit(external(format="json", allow_cloud=True))
        assert caught.value.field == "format" and "text-only" in str(caught.value)
        ticket = lane.submit(external(format="json"), detach=True)  # stays local: accepted
        assert ticket.job_id


def test_a_tool_round_trip_sends_the_call_and_its_result_back_as_docs_embedding_shows(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    asked: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris?"}]
    first = lane.submit(JobSpec.chat(model="qwen3", messages=asked, tools=[WEATHER], think=True))
    fake_gpu.next_call().think("Paris.").call_tool("get_weather", {"city": "Paris"}).finish()
    answer = first.result(timeout=5)
    for call in answer.tool_calls:
        asked += [
            {"role": "assistant", "content": answer.text, "thinking": answer.thinking,
             "tool_calls": [call.to_dict()]},
            {"role": "tool", "content": f"22 C in {call.arguments['city']}",
             "tool_name": call.name},
        ]  # fmt: skip
    second = lane.submit(JobSpec.chat(model="qwen3", messages=asked, tools=[WEATHER]))
    call = fake_gpu.next_call()
    sent = call.request.messages
    assert [m.role for m in sent] == ["user", "assistant", "tool"]
    assert sent[1].tool_calls == (PARIS,) and sent[1].thinking == "Paris."
    assert sent[2].tool_name == "get_weather" and sent[2].content == "22 C in Paris"
    call.finish("It is 22 C in Paris.")
    assert second.result(timeout=5) == "It is 22 C in Paris."


def test_a_slot_that_declines_a_preemption_is_passed_over_for_one_that_can_make_way(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(backend=BackendSettings(slots=2))
    seen = lane.submit(external(think=True, stream=True, priority=Priority.LOW))
    seen_call = fake_gpu.next_call()
    seen_call.think("Paris")
    streamed = seen.chunks(timeout=5)
    assert next(streamed).thinking == "Paris"
    plain = lane.submit(external("Tell me a story", stream=True))
    plain_call = fake_gpu.next_call()
    plain_call.emit("Once")
    # The low-priority call is the first choice of victim; its client has seen thinking.
    bot = lane.submit(
        JobSpec.chat(model="qwen3", messages=[{"role": "user", "content": "bot"}],
                     lane=Lane.INTERNAL)
    )  # fmt: skip
    assert plain_call.wait_cancelled(), "the other external call made way"
    bot_call = fake_gpu.next_call()
    assert bot_call.request.messages[0].content == "bot"
    quiesce()
    assert not seen_call.token.cancelled
    counters = lane.status()["counters"]
    assert (counters["preemptions"], counters["preemptions_declined"]) == (1, 1)
    bot_call.finish("bot answer")
    assert bot.result(timeout=5) == "bot answer"
    seen_call.finish("Sunny.")
    assert seen.result(timeout=5) == "Sunny."
    fake_gpu.next_call().finish(" upon a time")  # the preempted story resumes
    assert plain.result(timeout=5) == "Once upon a time"


def test_one_internal_job_preempts_one_external_call_not_every_busy_slot(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(backend=BackendSettings(slots=2))
    first = lane.submit(external("first story", stream=True))
    first_call = fake_gpu.next_call()
    second = lane.submit(external("second story", stream=True))
    second_call = fake_gpu.next_call()
    bot = lane.submit(
        JobSpec.chat(model="qwen3", messages=[{"role": "user", "content": "bot"}],
                     lane=Lane.INTERNAL)
    )  # fmt: skip
    bot_call = fake_gpu.next_call()
    assert bot_call.request.messages[0].content == "bot"
    quiesce()
    cancelled = [call.token.cancelled for call in (first_call, second_call)]
    assert sorted(cancelled) == [False, True], "exactly one external call made way"
    assert lane.status()["counters"]["preemptions"] == 1
    bot_call.finish("bot answer")
    assert bot.result(timeout=5) == "bot answer"
    running = second_call if cancelled[0] else first_call
    running.finish("kept running")
    fake_gpu.next_call().finish("resumed")
    assert {first.result(timeout=5), second.result(timeout=5)} == {"kept running", "resumed"}
