"""The core loop end to end on the fake GPU: order, preemption with resume, cancel, retry."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from pathlib import Path

import pytest

from actors import Config, GpuLane, Ticket
from actors.testing import FakeGpu, InjectedFault, ManualClock, quiesce, wait_until
from protocol import (
    ActiveHours,
    JobCancelledError,
    JobFailedError,
    JobSpec,
    JobState,
    Lane,
    Priority,
    RetryPolicy,
    SchedulingPolicy,
    StoreSettings,
    ValidationError,
)

StartLane = Callable[..., GpuLane]


def chat(text: str = "hi", **fields: object) -> JobSpec:
    return JobSpec.chat(
        model=str(fields.pop("model", "llama3.2")),
        messages=[{"role": "user", "content": text}],
        **fields,
    )


ALWAYS_ACTIVE = SchedulingPolicy(active_hours=ActiveHours.parse("00:00-23:59"))
NEVER_ACTIVE = SchedulingPolicy(active_hours=None)


def occupy(lane: GpuLane, fake_gpu: FakeGpu, **fields: object):  # type: ignore[no-untyped-def]
    """Submit a job and return its ticket and backend call, so the slot is busy."""
    ticket = lane.submit(chat("blocker", **fields))
    return ticket, fake_gpu.next_call()


def served_order(fake_gpu: FakeGpu, count: int) -> list[str]:
    """Finish the next ``count`` calls one by one; return their first message texts."""
    order = []
    for _ in range(count):
        call = fake_gpu.next_call()
        order.append(call.request.messages[0].content)
        call.finish("ok")
    return order


def test_a_submitted_job_runs_and_its_answer_comes_back(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    ticket = lane.submit(chat("hello"))
    call = fake_gpu.next_call()
    assert call.request.messages[0].content == "hello"
    call.emit("Hel", "lo")
    call.finish("!")
    assert ticket.result(timeout=5) == "Hello!"
    job = lane.get(ticket.job_id)
    assert job.state is JobState.SUCCEEDED and job.result == "Hello!" and job.started_at is not None


def test_internal_work_goes_before_external_work(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    _, call = occupy(lane, fake_gpu)
    waiting = [
        lane.submit(chat("external", lane=Lane.EXTERNAL)),
        lane.submit(chat("internal", lane=Lane.INTERNAL)),
    ]
    quiesce()  # the recalls of jobs handed over too early are done
    call.finish("done")
    assert served_order(fake_gpu, 2) == ["internal", "external"]
    assert [t.result(timeout=5) for t in waiting] == ["ok", "ok"]


def test_priorities_are_served_urgent_high_normal_low(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    _, call = occupy(lane, fake_gpu)
    waiting = [
        lane.submit(chat(prio, priority=prio)) for prio in ("low", "normal", "urgent", "high")
    ]
    quiesce()  # the recalls of jobs handed over too early are done
    call.finish()
    assert served_order(fake_gpu, 4) == ["urgent", "high", "normal", "low"]
    assert all(t.result(timeout=5) == "ok" for t in waiting)


def test_jobs_of_the_same_class_run_first_in_first_out(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    _, call = occupy(lane, fake_gpu)
    waiting = [lane.submit(chat(f"job{i}")) for i in range(5)]
    quiesce()  # the recalls of jobs handed over too early are done
    call.finish()
    assert served_order(fake_gpu, 5) == [f"job{i}" for i in range(5)]
    assert [t.result(timeout=5) for t in waiting] == ["ok"] * 5


def test_the_next_step_of_a_running_chain_goes_before_older_jobs(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    _, call = occupy(lane, fake_gpu, chain_id="task-7")
    waiting = [lane.submit(chat("older")), lane.submit(chat("step2", chain_id="task-7"))]
    quiesce()  # the recalls of jobs handed over too early are done
    call.finish()
    assert served_order(fake_gpu, 2) == ["step2", "older"]
    assert [t.result(timeout=5) for t in waiting] == ["ok", "ok"]


def test_internal_work_preempts_an_external_call_during_active_hours_and_it_resumes(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(scheduling=ALWAYS_ACTIVE)
    external = lane.submit(chat("long answer", lane=Lane.EXTERNAL))
    ext_call = fake_gpu.next_call()
    ext_call.emit("one", " two")
    streamed = external.chunks(timeout=5)
    assert [next(streamed), next(streamed)] == ["one", " two"]

    internal = lane.submit(chat("bot", lane=Lane.INTERNAL))
    assert ext_call.wait_cancelled(), "the external call was not cancelled"
    int_call = fake_gpu.next_call()
    assert int_call.request.messages[0].content == "bot"
    int_call.finish("bot answer")
    assert internal.result(timeout=5) == "bot answer"

    resumed = fake_gpu.next_call()
    assert resumed.request.resume_prefix == "one two"
    resumed.emit(" three")
    resumed.finish(" four")
    assert list(streamed) == [" three", " four"]
    assert external.result(timeout=5) == "one two three four"
    job = lane.get(external.job_id)
    assert (job.preemptions, job.attempts) == (1, 0)


def test_outside_active_hours_internal_work_waits_for_the_running_call(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(scheduling=NEVER_ACTIVE)
    external = lane.submit(chat("ext", lane=Lane.EXTERNAL))
    ext_call = fake_gpu.next_call()
    bot = lane.submit(chat("bot", lane=Lane.INTERNAL, priority=Priority.HIGH))
    quiesce()
    assert not ext_call.token.cancelled
    ext_call.finish("ext done")
    assert external.result(timeout=5) == "ext done"
    assert fake_gpu.next_call().request.messages[0].content == "bot"
    assert not bot.done()


def test_urgent_internal_work_preempts_even_outside_active_hours(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(scheduling=NEVER_ACTIVE)
    external = lane.submit(chat("ext", lane=Lane.EXTERNAL))
    ext_call = fake_gpu.next_call()
    urgent = lane.submit(chat("bot", lane=Lane.INTERNAL, priority=Priority.URGENT))
    assert ext_call.wait_cancelled()
    fake_gpu.next_call().finish("urgent done")
    assert urgent.result(timeout=5) == "urgent done"
    assert not external.done()


def test_a_job_preempted_max_preemptions_times_is_not_preempted_again(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(
        scheduling=SchedulingPolicy(
            active_hours=ActiveHours.parse("00:00-23:59"), max_preemptions=1
        )
    )
    external = lane.submit(chat("ext", lane=Lane.EXTERNAL))
    first = fake_gpu.next_call()
    bot1 = lane.submit(chat("bot1", lane=Lane.INTERNAL))
    assert first.wait_cancelled()
    fake_gpu.next_call().finish("b1")
    second = fake_gpu.next_call()
    assert second.request.messages[0].content == "ext"
    bot2 = lane.submit(chat("bot2", lane=Lane.INTERNAL))
    quiesce()
    assert not second.token.cancelled
    second.finish("done")
    assert external.result(timeout=5) == "done"
    assert bot1.result(timeout=5) == "b1"
    fake_gpu.next_call().finish("b2")
    assert bot2.result(timeout=5) == "b2"


def test_a_queued_job_can_be_cancelled(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    _, call = occupy(lane, fake_gpu)
    queued = lane.submit(chat("never"))
    assert lane.cancel(queued.job_id) == "queued"
    with pytest.raises(JobCancelledError):
        queued.result(timeout=5)
    call.finish()
    assert fake_gpu.no_new_call()


def test_cancelling_an_unknown_job_says_it_does_not_exist(lane: GpuLane) -> None:
    with pytest.raises(KeyError):
        lane.cancel("01NOSUCHJOB")


def cancel_by_id(lane: GpuLane, held: list[Ticket]) -> None:
    """The user cancels the running job by its id."""
    ticket = held[0]
    assert lane.cancel(ticket.job_id) == "running"
    with pytest.raises(JobCancelledError):
        ticket.result(timeout=5)


def drop_the_ticket(lane: GpuLane, held: list[Ticket]) -> None:
    """The caller lets go of its ticket (garbage-collected)."""
    held.clear()
    gc.collect()


def close_the_stream_early(lane: GpuLane, held: list[Ticket]) -> None:
    """The caller stops reading the stream after the first piece."""
    chunks = held[0].chunks(timeout=5)
    assert next(chunks) == "partial"
    chunks.close()


@pytest.mark.parametrize("leave", [cancel_by_id, drop_the_ticket, close_the_stream_early])
def test_a_running_job_whose_caller_leaves_is_cancelled_and_its_call_stops(
    lane: GpuLane, fake_gpu: FakeGpu, leave: Callable[[GpuLane, list[Ticket]], None]
) -> None:
    held = [lane.submit(chat("partial answer"))]
    job_id = held[0].job_id
    call = fake_gpu.next_call()
    call.emit("partial")
    leave(lane, held)
    assert call.wait_cancelled()
    assert lane.wait(job_id, timeout=5).state is JobState.CANCELLED


def test_a_detached_ticket_keeps_its_job_when_dropped(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    job_id = lane.submit(chat("fire and forget"), detach=True).job_id
    gc.collect()
    call = fake_gpu.next_call()
    quiesce()
    assert not call.token.cancelled
    call.finish("kept")
    assert lane.wait(job_id, timeout=5).result == "kept"


def test_a_transient_failure_is_retried_after_back_off_then_succeeds(
    lane: GpuLane, fake_gpu: FakeGpu, manual_clock: ManualClock
) -> None:
    ticket = lane.submit(chat("flaky"))
    fake_gpu.next_call().fail("connection reset", transient=True)
    assert fake_gpu.no_new_call(), "retried before the back-off passed"
    job = lane.get(ticket.job_id)
    assert job.state is JobState.QUEUED and job.attempts == 1 and job.not_before is not None
    manual_clock.advance(RetryPolicy().max_delay_s)
    fake_gpu.next_call().finish("fine")
    assert ticket.result(timeout=5) == "fine"
    assert lane.get(ticket.job_id).attempts == 1


def test_a_job_fails_with_the_last_error_once_max_attempts_are_spent(
    lane: GpuLane, fake_gpu: FakeGpu, manual_clock: ManualClock
) -> None:
    ticket = lane.submit(chat("doomed", max_attempts=2))
    fake_gpu.next_call().fail("503 busy", transient=True)
    wait_until(lambda: lane.get(ticket.job_id).attempts == 1)
    manual_clock.advance(120)
    fake_gpu.next_call().fail("500 boom", transient=True)
    with pytest.raises(JobFailedError, match="500 boom"):
        ticket.result(timeout=5)
    job = lane.get(ticket.job_id)
    assert job.state is JobState.FAILED and job.attempts == 2


def test_a_permanent_failure_fails_the_job_at_once(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    ticket = lane.submit(chat("unknown model"))
    fake_gpu.next_call().fail('model "x" not found', transient=False, status=404)
    with pytest.raises(JobFailedError, match="not found"):
        ticket.result(timeout=5)
    assert lane.get(ticket.job_id).attempts == 1


def test_a_call_that_runs_past_the_execution_time_out_is_stopped_and_retried(
    start_lane: StartLane, fake_gpu: FakeGpu, manual_clock: ManualClock
) -> None:
    lane = start_lane(scheduling=SchedulingPolicy(exec_timeout_s=60))
    manual_clock.advance(500)  # time spent queued does not count: the time-out starts at dispatch
    ticket = lane.submit(chat("slow", max_attempts=1))
    call = fake_gpu.next_call()
    manual_clock.advance(59)
    quiesce()
    assert not call.token.cancelled
    manual_clock.advance(2)
    assert call.wait_cancelled()
    with pytest.raises(JobFailedError, match="time-out"):
        ticket.result(timeout=5)


def test_a_failed_job_can_be_retried_as_a_new_job(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    first = lane.submit(chat("again"))
    fake_gpu.next_call().fail("bad request", transient=False, status=400)
    with pytest.raises(JobFailedError):
        first.result(timeout=5)
    second = lane.retry(first.job_id)
    assert second.job_id != first.job_id
    fake_gpu.next_call().finish("second time")
    assert second.result(timeout=5) == "second time"


def test_retrying_a_job_that_has_not_failed_is_refused(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    ticket = lane.submit(chat("running"))
    fake_gpu.next_call()
    with pytest.raises(ValidationError, match="job_id"):
        lane.retry(ticket.job_id)


def test_pause_stops_dispatch_and_resume_starts_it_again(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    lane.pause()
    ticket = lane.submit(chat("wait"))
    assert fake_gpu.no_new_call()
    assert lane.status()["paused"] is True
    lane.resume()
    fake_gpu.next_call().finish("go")
    assert ticket.result(timeout=5) == "go"


def test_reloading_the_config_keeps_the_queue_and_the_counters(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    _, call = occupy(lane, fake_gpu)
    waiting = [lane.submit(chat(f"q{i}")) for i in range(3)]
    before = lane.status()
    lane.reload_config(lane.config.replace(scheduling=SchedulingPolicy(max_preemptions=7)))
    after = lane.status()
    assert after["queued"] == before["queued"] == 3
    assert after["counters"]["submitted"] == before["counters"]["submitted"] == 4
    quiesce()  # the recalls of jobs handed over too early are done
    call.finish()
    assert served_order(fake_gpu, 3) == ["q0", "q1", "q2"]
    assert [t.result(timeout=5) for t in waiting] == ["ok"] * 3


def test_reloading_a_different_store_is_refused(lane: GpuLane) -> None:
    with pytest.raises(ValidationError, match="store"):
        lane.reload_config(lane.config.replace(store=StoreSettings(path="elsewhere.sqlite3")))


def test_status_shows_depths_the_running_job_and_the_resident_model(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    ticket, _ = occupy(lane, fake_gpu)
    waiting = lane.submit(chat("waiting", lane=Lane.INTERNAL, priority=Priority.HIGH))
    status = lane.status()
    assert status["depth"]["internal.high"] == 1
    assert status["slots"]["gpu0"]["job_id"] == ticket.job_id
    assert status["resident_models"] == ("llama3.2",)
    assert status["jobs"]["queued"] == 1
    assert not waiting.done()


def next_job_id(lane: GpuLane) -> str | None:
    """The job the slot holds as its next call (prefetch), by the slot's own account."""
    return lane.status()["slots"]["gpu0"]["next_job_id"]  # type: ignore[no-any-return]


def test_a_busy_slot_is_handed_the_next_job_and_starts_it_when_the_call_ends(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    _, call = occupy(lane, fake_gpu)
    waiting = lane.submit(chat("next"))
    wait_until(lambda: next_job_id(lane) == waiting.job_id)
    status = lane.status()
    assert status["queued"] == 1 and status["depth"]["external.normal"] == 1, "still waiting"
    assert lane.get(waiting.job_id).state is JobState.QUEUED
    call.finish()
    assert served_order(fake_gpu, 1) == ["next"]
    assert waiting.result(timeout=5) == "ok"


def test_a_job_that_should_run_first_takes_the_place_of_the_one_handed_over(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    _, call = occupy(lane, fake_gpu)
    normal = lane.submit(chat("normal"))
    wait_until(lambda: next_job_id(lane) == normal.job_id)
    high = lane.submit(chat("high", priority=Priority.HIGH))
    quiesce()
    assert next_job_id(lane) == high.job_id
    assert lane.status()["queued"] == 2
    assert lane.status()["counters"]["recalls"] == 1
    call.finish()
    assert served_order(fake_gpu, 2) == ["high", "normal"]


def test_pausing_takes_back_the_job_handed_to_a_busy_slot(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    _, call = occupy(lane, fake_gpu)
    waiting = lane.submit(chat("after the pause"))
    wait_until(lambda: next_job_id(lane) == waiting.job_id)
    lane.pause()
    quiesce()
    assert next_job_id(lane) is None
    call.finish()
    assert fake_gpu.no_new_call()
    lane.resume()
    assert served_order(fake_gpu, 1) == ["after the pause"]


def test_cancelling_the_job_handed_to_a_busy_slot_ends_it_without_running_it(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    _, call = occupy(lane, fake_gpu)
    waiting = lane.submit(chat("never"))
    wait_until(lambda: next_job_id(lane) == waiting.job_id)
    assert lane.cancel(waiting.job_id) == "queued"
    with pytest.raises(JobCancelledError):
        waiting.result(timeout=5)
    call.finish()
    assert fake_gpu.no_new_call()


def test_with_prefetch_off_a_busy_slot_is_handed_nothing(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(scheduling=SchedulingPolicy(prefetch=False))
    _, call = occupy(lane, fake_gpu)
    waiting = lane.submit(chat("later"))
    quiesce()
    assert next_job_id(lane) is None
    call.finish()
    assert served_order(fake_gpu, 1) == ["later"]
    assert waiting.result(timeout=5) == "ok"


def test_the_job_after_a_swap_is_chosen_for_the_model_just_loaded_not_the_one_it_replaced(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    _, call = occupy(lane, fake_gpu, model="a")
    swap = lane.submit(chat("b1", model="b"))
    wait_until(lambda: next_job_id(lane) == swap.job_id)
    waiting = [lane.submit(chat("a2", model="a")), lane.submit(chat("b2", model="b"))]
    quiesce()
    call.finish()  # b1 starts at once, pushing model a out of the GPU's memory
    assert served_order(fake_gpu, 3) == ["b1", "b2", "a2"]
    assert [ticket.result(timeout=5) for ticket in waiting] == ["ok", "ok"]
    assert lane.status()["counters"]["swaps"] == 3  # nothing -> a -> b -> a


def test_a_slot_that_crashes_holding_a_next_job_loses_neither_job(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    running, call = occupy(lane, fake_gpu)
    waiting = lane.submit(chat("next"))
    wait_until(lambda: next_job_id(lane) == waiting.job_id)
    lane.ref_for("gpu0").tell(InjectedFault())
    assert call.wait_cancelled()
    assert sorted(served_order(fake_gpu, 2)) == ["blocker", "next"]
    assert running.result(timeout=5) == "ok" and waiting.result(timeout=5) == "ok"
    assert fake_gpu.no_new_call(), "each job ran to the end once"


def test_stopping_puts_the_running_job_back_in_the_queue(tmp_path: Path) -> None:
    clock = ManualClock()
    config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")))
    fake = FakeGpu(clock)
    with GpuLane.start(config, gpu=fake, clock=clock) as lane:
        ticket = lane.submit(chat("interrupted"), detach=True)
        fake.next_call().emit("half")
        stream = ticket.chunks(timeout=5)
        assert next(stream) == "half"  # the chunk reached the caller before the stop
        stream.close()
        job_id = ticket.job_id
    fake2 = FakeGpu(clock)
    with GpuLane.start(config, gpu=fake2, clock=clock) as lane:
        call = fake2.next_call()
        assert call.request.resume_prefix == "half"
        call.finish(" and the rest")
        assert lane.wait(job_id, timeout=5).result == "half and the rest"


def test_an_asyncio_host_can_submit_await_and_stream(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    def backend_side() -> None:
        first = fake_gpu.next_call()
        first.emit("x", "y")
        first.finish("z")
        fake_gpu.next_call().finish("awaited")

    async def host() -> tuple[list[str], str]:
        streamed = lane.submit(chat("stream"))
        awaited = lane.submit(chat("await"))
        helper = asyncio.get_running_loop().run_in_executor(None, backend_side)
        chunks = [chunk async for chunk in streamed.stream()]
        answer = await awaited
        await helper
        return chunks, answer

    chunks, answer = asyncio.run(host())
    assert chunks == ["x", "y", "z"] and answer == "awaited"
