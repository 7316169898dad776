"""A slot's call, thread-free: what its job keeps when the call is cut off, and when a
preemption must be declined (docs/architecture.md section 3, "Preempt")."""

from __future__ import annotations

from typing import Any

import pytest

from actors.sinks import SinkEvent, SinkRegistry
from actors.slot_call import SEEN, Carry, SlotCall
from protocol import (
    BackendRequest,
    BackendResult,
    Chunk,
    Job,
    JobMetrics,
    JobSpec,
    JobState,
    Output,
    ToolCall,
)

SPEC = JobSpec.chat(model="qwen3", messages=[{"role": "user", "content": "hi"}], max_tokens=50)
EARLIER = JobMetrics(eval_count=5, prompt_eval_count=7, total_duration_ns=10)
CALL = ToolCall("get_weather", {"city": "Paris"})


def running(partial: str = "", segments: tuple[JobMetrics, ...] = ()) -> SlotCall:
    """A call for a running job that has ``partial`` and ``segments`` from earlier calls."""
    job = Job(
        id="job-1", seq=1, spec=SPEC, state=JobState.RUNNING, created_at=0.0, updated_at=0.0,
        partial_output=partial, segments=segments,
    )  # fmt: skip
    return SlotCall(job, 1, BackendRequest.for_job(job), started_at=100.0)


def streamed_by_a_client(sinks: SinkRegistry) -> list[SinkEvent]:
    """A client streaming job-1: what it has seen."""
    seen: list[SinkEvent] = []
    sinks.register("job-1").subscribe(seen.append)
    return seen


def test_a_call_of_plain_text_carries_over_its_text_and_its_usage_so_far() -> None:
    sinks = SinkRegistry()
    call = running("Once", (EARLIER,))
    for piece in (" upon", " a", " time"):
        assert call.deliver(Chunk(piece), sinks)
    assert not call.deliver(Chunk(""), sinks), "an empty piece is no token"
    carry = call.carry_over(sinks, now=100.5)
    assert carry == Carry(
        "Once upon a time", (EARLIER, JobMetrics(eval_count=3, total_duration_ns=500_000_000))
    )


def test_after_a_preemption_is_decided_only_the_text_of_a_piece_goes_on() -> None:
    sinks = SinkRegistry()
    seen = streamed_by_a_client(sinks)
    call = running()
    call.deliver(Chunk("Let me check."), sinks)
    assert call.seal_for_preemption(sinks), "plain text so far: it can be resumed"
    assert not call.restart
    call.deliver(Chunk(" Calling", tool_calls=(CALL,)), sinks)  # raced the cancel
    assert not call.deliver(Chunk(thinking="hmm"), sinks)
    assert [(v.text, v.tool_calls) for _, v in seen] == [("Let me check.", ()), (" Calling", ())]  # type: ignore[attr-defined]
    assert call.carry_over(sinks, 100.0) == Carry(
        "Let me check. Calling", (JobMetrics(eval_count=2),)
    )


def test_thinking_nobody_has_seen_starts_over_and_its_sink_forgets_it() -> None:
    sinks = SinkRegistry()
    waiting = sinks.register("job-1")  # a caller waiting for the answer, not streaming
    call = running("", (EARLIER,))
    call.deliver(Chunk(thinking="First, the"), sinks)
    assert call.seal_for_preemption(sinks) and call.restart
    call.deliver(Chunk(thinking=" weather"), sinks)  # the cut-off call's last piece
    late = streamed_by_a_client(sinks)  # subscribes while the job is being preempted
    assert call.carry_over(sinks, 101.0) == Carry("", ()), "no segment of it is in the answer"
    assert late == []
    sinks.chunk("job-1", Chunk(thinking="Start again"))
    assert [v.thinking for _, v in late] == ["Start again"]  # type: ignore[attr-defined]
    assert waiting.watched


def test_a_call_whose_client_has_seen_a_tool_call_is_not_preempted() -> None:
    sinks = SinkRegistry()
    seen = streamed_by_a_client(sinks)
    call = running()
    call.deliver(Chunk(tool_calls=(CALL,)), sinks)
    assert not call.seal_for_preemption(sinks)
    assert not call.sealed and not call.restart
    call.deliver(Chunk(thinking="more"), sinks)  # it runs on as before
    assert [v.tool_calls for _, v in seen] == [(CALL,), ()]  # type: ignore[attr-defined]
    assert call.carry_over(sinks, 100.0) is None, "after a failure it cannot go on either"
    failed = call.failed(f"backend failed; not retried: {SEEN}", sinks, 100.0)
    assert failed.target is JobState.FAILED and failed.error is not None
    assert "could not continue exactly" in failed.error
    assert failed.segments is not None and failed.segments[-1].eval_count == call.tokens


def test_an_answer_sums_the_usage_of_every_call_that_produced_it() -> None:
    sinks = SinkRegistry()
    call = running("Once upon", (EARLIER, JobMetrics(eval_count=2, total_duration_ns=3)))
    last = JobMetrics(eval_count=4, prompt_eval_count=20, load_duration_ns=8)
    result = BackendResult(
        " a time.", last, done_reason="length", thinking="t", tool_calls=(CALL,), context=(1, 2)
    )
    move = call.succeeded(result, sinks)
    assert move.result == "Once upon a time." and move.partial_output == ""
    assert move.segments == (EARLIER, JobMetrics(eval_count=2, total_duration_ns=3), last)
    assert move.metrics == JobMetrics(
        eval_count=11, prompt_eval_count=27, load_duration_ns=8, total_duration_ns=13
    )
    assert move.output == Output(
        thinking="t", tool_calls=(CALL,), done_reason="length", context=(1, 2)
    )


def test_a_held_call_that_got_its_answer_after_all_lets_late_listeners_hear_it() -> None:
    sinks = SinkRegistry()
    sinks.register("job-1")
    call = running()
    call.deliver(Chunk(thinking="quick"), sinks)
    assert call.seal_for_preemption(sinks)
    late = streamed_by_a_client(sinks)
    call.succeeded(BackendResult("", thinking="quick"), sinks)
    assert [v.thinking for _, v in late] == ["quick"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("why", "counts", "attempts", "preemptions"),
    [
        ("its host went away (an outage, mid-stream too)", {}, 0, 0),
        ("preempted", {"count_preemption": True}, 0, 1),
        ("its own request failed", {"charge_attempt": True, "not_before": 105.0}, 1, 0),
    ],
)
def test_a_cut_off_call_goes_back_with_its_text_and_counts_only_what_cut_it_off(
    why: str, counts: dict[str, Any], attempts: int, preemptions: int
) -> None:
    sinks = SinkRegistry()
    call = running("Once", (EARLIER,))
    call.deliver(Chunk(" upon"), sinks)
    carry = call.carry_over(sinks, now=101.0)
    assert carry is not None, why
    move, queued = carry.requeue(call.job, error=why, **counts)
    assert move.target is JobState.QUEUED and move.stale_ok
    assert (move.charge_attempt, move.count_preemption) == (attempts == 1, preemptions == 1)
    assert move.partial_output == queued.partial_output == "Once upon"
    this_call = JobMetrics(eval_count=1, total_duration_ns=10**9)  # a piece, one second
    assert move.segments == queued.segments == (EARLIER, this_call)
    assert (queued.state, queued.attempts, queued.preemptions) == (
        JobState.QUEUED, attempts, preemptions
    )  # fmt: skip
    assert queued.error == move.error == why
