"""An outage of the model server fails nothing (docs/architecture.md section 13).

The lane runs real GpuSlots on a FakeBackend that the test takes down and brings back:
while it is down its calls and its ``/api/ps`` poll fail the way a refused connection
does (``BackendError(outage=True)``). Time is a ManualClock, so ten minutes of outage
take no wall-clock time and the probes' back-off is checked to the second. A call cut
mid-stream by the backend's outage goes back uncharged with its text (issue #17); one cut
by an error of its own request is charged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import BackendSettings, Config, GpuLane
from actors.testing import FakeCall, FakeGpu, quiesce
from protocol import (
    BackendError,
    JobFailedError,
    JobSpec,
    JobState,
    Lane,
    LoadedModel,
    ResidencySettings,
    RetryPolicy,
    SchedulingPolicy,
    StoreSettings,
)

REFUSED = "cannot connect to Ollama at http://127.0.0.1:11434: [Errno 111] Connection refused"
CUT = "Ollama at http://127.0.0.1:11434 cut the response: peer closed connection"


class Outage:
    """A FakeBackend the test switches between down (every call and poll refused) and up."""

    def __init__(self, gpu: FakeGpu) -> None:
        self.down = False
        self.probes: list[float] = []  # when each poll reached the backend while it was down
        self.answered: list[str] = []  # job ids whose calls were answered, in order
        self._gpu = gpu
        gpu.backend.loaded_models = self._loaded_models  # type: ignore[method-assign]

    def run(self, call: FakeCall) -> None:
        """The script of every call: refused while down, else answered at once."""
        if self.down:
            call.fail(REFUSED, outage=True)
        else:
            self.answered.append(call.request.messages[0].content)
            call.finish("ok")

    def _loaded_models(self) -> tuple[LoadedModel, ...]:
        if self.down:
            self.probes.append(self._gpu.clock.now())
            raise BackendError(REFUSED, transient=True, outage=True)
        return ()


@pytest.fixture
def outage_lane(tmp_path: Path) -> Iterator[tuple[GpuLane, FakeGpu, Outage]]:
    holder: list[Outage] = []
    gpu = FakeGpu(script=lambda call: holder[0].run(call))
    outage = Outage(gpu)
    holder.append(outage)
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        residency=ResidencySettings(
            poll_interval_s=10.0, probe_initial_s=1.0, probe_max_s=60.0, probe_jitter=0.0
        ),
        retry=RetryPolicy(base_delay_s=1.0, max_delay_s=4.0, jitter=0.0),
    )
    lane = GpuLane.start(config, gpu=gpu, backend=gpu.backend, clock=gpu.clock)
    try:
        yield lane, gpu, outage
    finally:
        lane.stop()


def job(number: int) -> JobSpec:
    return JobSpec.chat(
        model="llama3.2", messages=[{"role": "user", "content": f"job {number:04d}"}],
        lane=Lane.INTERNAL,
    )  # fmt: skip


def advance(gpu: FakeGpu, seconds: float, step: float = 1.0) -> None:
    """Move the lane's clock on in steps, letting every actor settle after each."""
    clock: Any = gpu.clock
    moved = 0.0
    while moved < seconds:
        clock.advance(step)
        moved += step
        quiesce()


def test_ten_minutes_of_outage_with_a_deep_queue_fail_no_job_and_charge_no_attempt(
    outage_lane: tuple[GpuLane, FakeGpu, Outage],
) -> None:
    lane, gpu, outage = outage_lane
    outage.down = True
    tickets = [lane.submit(job(n)) for n in range(200)]
    quiesce()
    health = lane.status()["health"]["local"]
    assert health["state"] == "down" and REFUSED in health["last_error"]
    went_down = health["since"]
    arrivals = 200
    for _ in range(60):  # ten simulated minutes, a job arriving every ten seconds
        advance(gpu, 10.0)
        tickets.append(lane.submit(job(arrivals)))
        arrivals += 1
    quiesce()
    assert all(not ticket.done() for ticket in tickets), "a job ended during the outage"
    assert {lane.get(t.job_id).attempts for t in tickets} == {0}
    assert lane.status()["health"]["local"]["state"] == "down"
    # Probes back off as configured: 1 s after the outage began, then doubling up to 60 s.
    gaps = [b - a for a, b in zip([went_down, *outage.probes], outage.probes, strict=False)]
    assert gaps[:7] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0] and set(gaps[7:]) == {60.0}
    outage.down = False
    advance(gpu, 60.0)
    for ticket in tickets:
        assert ticket.result(timeout=10) == "ok"
    jobs = [lane.get(t.job_id) for t in tickets]
    assert {j.state for j in jobs} == {JobState.SUCCEEDED} and {j.attempts for j in jobs} == {0}
    # Every job ran once the backend was back, in the order it was queued.
    assert outage.answered == [f"job {n:04d}" for n in range(arrivals)]
    health = lane.status()["health"]["local"]
    assert health["state"] == "up" and health["changes"] == 2
    assert health["down_s_total"] == pytest.approx(outage.probes[-1] + 60.0 - went_down, abs=61)


def test_a_failure_of_the_jobs_own_request_is_retried_with_back_off_and_fails_after_max_attempts(
    start_lane: Any, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(retry=RetryPolicy(base_delay_s=2.0, max_delay_s=8.0, jitter=0.0))
    ticket = lane.submit(job(1).replace(max_attempts=3))
    fake_gpu.next_call().fail("model runner crashed for this prompt", status=500)
    quiesce()
    assert lane.get(ticket.job_id).attempts == 1
    assert fake_gpu.no_new_call(), "the retry waits for its back-off"
    fake_gpu.clock.advance(2.0)  # type: ignore[attr-defined]
    fake_gpu.next_call().fail("model runner crashed for this prompt", status=500)
    quiesce()
    assert fake_gpu.no_new_call(), "the second back-off is twice the first"
    fake_gpu.clock.advance(2.0)  # type: ignore[attr-defined]
    assert fake_gpu.no_new_call()
    fake_gpu.clock.advance(2.0)  # type: ignore[attr-defined]
    fake_gpu.next_call().fail("model runner crashed for this prompt", status=500)
    with pytest.raises(Exception, match="after 3 attempt"):
        ticket.result(timeout=5)
    assert lane.get(ticket.job_id).state is JobState.FAILED
    assert lane.status()["health"]["local"]["state"] == "up", "the job's failure is not an outage"


def test_a_stream_cut_mid_answer_by_a_dropped_connection_goes_back_uncharged_after_its_text(
    start_lane: Any, fake_gpu: FakeGpu
) -> None:
    # Issue #17: losing the host is not the job's failure, whenever it happens; the job
    # keeps its text, as a preempted one does, and resumes after it once a host is up.
    lane = start_lane(residency=ResidencySettings(probe_initial_s=5.0, probe_jitter=0.0))
    first, second = lane.submit(job(1)), lane.submit(job(2))
    call = fake_gpu.next_call()
    call.emit("Once", " upon")
    quiesce()
    assert lane.status()["slots"]["gpu0"]["next_job_id"] == second.job_id
    call.fail(CUT, outage=True)
    quiesce()
    stored = lane.get(first.job_id)
    assert stored.state is JobState.QUEUED and (stored.attempts, stored.preemptions) == (0, 0)
    assert stored.partial_output == "Once upon" and stored.error == CUT
    assert [segment.eval_count for segment in stored.segments] == [2]
    status = lane.status()
    health = status["health"]["local"]
    assert health["state"] == "down" and CUT in health["last_error"]
    assert status["queued"] == 2 and status["slots"]["gpu0"]["next_job_id"] is None
    assert fake_gpu.no_new_call(), "nothing is dispatched while the backend is down"
    fake_gpu.clock.advance(5.0)  # type: ignore[attr-defined]
    resumed = fake_gpu.next_call()
    assert resumed.request.resume_prefix == "Once upon"
    resumed.finish(" a time")
    assert first.result(timeout=5) == "Once upon a time"
    fake_gpu.next_call().finish("two")
    assert second.result(timeout=5) == "two"
    done = lane.get(first.job_id)
    assert (done.attempts, done.preemptions) == (0, 0)
    assert [segment.eval_count for segment in done.segments] == [2, 1]


def test_a_stream_cut_mid_answer_by_an_error_of_its_own_is_charged_and_resumed_after_its_text(
    start_lane: Any, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(retry=RetryPolicy(base_delay_s=1.0, max_delay_s=1.0, jitter=0.0))
    ticket = lane.submit(job(1))
    call = fake_gpu.next_call()
    call.emit("Once upon")
    call.fail("llama runner process has terminated", status=500)  # a 500: this request's
    quiesce()
    stored = lane.get(ticket.job_id)
    assert stored.state is JobState.QUEUED and stored.attempts == 1
    assert stored.partial_output == "Once upon"  # resumed after, as a preemption is
    assert lane.status()["health"]["local"]["state"] == "up"
    fake_gpu.clock.advance(1.0)  # type: ignore[attr-defined]
    resumed = fake_gpu.next_call()
    assert resumed.request.resume_prefix == "Once upon"
    resumed.finish(" a time")
    assert ticket.result(timeout=5) == "Once upon a time"
    assert lane.get(ticket.job_id).attempts == 1


def test_a_host_lost_after_a_streaming_client_saw_thinking_fails_the_job_as_any_cut_does(
    start_lane: Any, fake_gpu: FakeGpu
) -> None:
    # The rule of SlotCall.carry_over: thinking cannot be continued exactly, and a client
    # that has seen it must not see it again, different; so the job fails (as after a
    # retry or a slot's stop), though the outage is still the backend's.
    lane = start_lane()
    ticket = lane.submit(job(1).replace(think=True, stream=True))
    call = fake_gpu.next_call()
    call.think("Paris")
    streamed = ticket.chunks(timeout=5)
    assert next(streamed).thinking == "Paris"
    call.fail(CUT, outage=True)
    with pytest.raises(JobFailedError, match="its backend went away, and its client has seen"):
        next(streamed)
    assert lane.get(ticket.job_id).state is JobState.FAILED
    assert lane.status()["health"]["local"]["state"] == "down"


def test_a_host_lost_after_thinking_nobody_saw_starts_the_job_over_uncharged(
    start_lane: Any, fake_gpu: FakeGpu
) -> None:
    # carry_over's other rule: output that is more than text and unseen starts over.
    lane = start_lane(residency=ResidencySettings(probe_initial_s=1.0, probe_jitter=0.0))
    ticket = lane.submit(job(1).replace(think=True))
    call = fake_gpu.next_call()
    call.think("Paris").emit("It is")
    quiesce()
    call.fail(CUT, outage=True)
    quiesce()
    stored = lane.get(ticket.job_id)
    assert (stored.state, stored.attempts, stored.partial_output) == (JobState.QUEUED, 0, "")
    fake_gpu.clock.advance(1.0)  # type: ignore[attr-defined]
    again = fake_gpu.next_call()
    assert again.request.resume_prefix == ""
    again.think("Paris again").finish("Sunny.")
    answer = ticket.result(timeout=5)
    assert answer == "Sunny." and answer.thinking == "Paris again"
    assert lane.get(ticket.job_id).attempts == 0


def test_an_outage_gives_back_the_prefetched_next_job_and_stops_dispatch_until_a_probe_answers(
    start_lane: Any, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(residency=ResidencySettings(probe_initial_s=5.0, probe_jitter=0.0))
    first, second = lane.submit(job(1)), lane.submit(job(2))
    running = fake_gpu.next_call()
    quiesce()
    assert lane.status()["slots"]["gpu0"]["next_job_id"] == second.job_id
    running.fail(REFUSED, outage=True)
    quiesce()
    assert fake_gpu.no_new_call(), "nothing is dispatched while the backend is down"
    status = lane.status()
    assert status["queued"] == 2 and status["slots"]["gpu0"]["next_job_id"] is None
    assert lane.get(first.job_id).attempts == 0 and lane.get(first.job_id).error == REFUSED
    fake_gpu.clock.advance(5.0)  # type: ignore[attr-defined]
    quiesce()  # with no backend for the tracker to ask, the probe is blind: up after 5 s
    fake_gpu.next_call().finish("one")
    fake_gpu.next_call().finish("two")
    assert first.result(timeout=5) == "one" and second.result(timeout=5) == "two"


@pytest.mark.parametrize("output", ["", "So far"], ids=["before-output", "mid-stream"])
def test_a_call_that_began_before_the_backend_came_back_does_not_take_it_down_again(
    start_lane: Any, fake_gpu: FakeGpu, output: str
) -> None:
    lane = start_lane(
        backend=BackendSettings(slots=2),
        residency=ResidencySettings(probe_initial_s=1.0, probe_jitter=0.0),
        scheduling=SchedulingPolicy(prefetch=False),
    )
    old, doomed = lane.submit(job(1)), lane.submit(job(2))
    # The two slots start their calls at once, in either order: tell them apart by job.
    calls = {c.request.messages[0].content: c for c in (fake_gpu.next_call(), fake_gpu.next_call())}
    began_early, fails_first = calls["job 0001"], calls["job 0002"]
    fails_first.fail(REFUSED, outage=True)
    quiesce()
    assert lane.status()["health"]["local"]["state"] == "down"
    fake_gpu.clock.advance(1.0)  # type: ignore[attr-defined]
    quiesce()  # the (blind) probe: up again
    fake_gpu.next_call().finish("retried")  # the requeued job runs on the free slot
    assert doomed.result(timeout=5) == "retried"
    if output:
        began_early.emit(output)
    began_early.fail(REFUSED if not output else CUT, outage=True)  # it met the old outage
    quiesce()
    health = lane.status()["health"]["local"]
    assert health["state"] == "up" and health["changes"] == 2
    again = fake_gpu.next_call()  # requeued without a charge, and run at once
    assert again.request.resume_prefix == output
    again.finish(" after all")
    assert old.result(timeout=5) == f"{output} after all" and lane.get(old.job_id).attempts == 0


def test_a_job_whose_calls_keep_taking_the_server_down_is_charged_after_max_attempts_firsts(
    start_lane: Any, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(
        residency=ResidencySettings(probe_initial_s=1.0, probe_jitter=0.0),
        retry=RetryPolicy(base_delay_s=30.0, max_delay_s=30.0, jitter=0.0),
        scheduling=SchedulingPolicy(prefetch=False),  # one call at a time, in a known order
    )
    poison, other = lane.submit(job(1).replace(max_attempts=2)), lane.submit(job(2))
    crash = "Ollama at http://127.0.0.1:11434 cut the response: Server disconnected"

    def next_call_for(number: int) -> FakeCall:
        call = fake_gpu.next_call()
        assert call.request.messages[0].content == f"job {number:04d}"
        return call

    for _ in range(2):  # the server dies under it, comes back, and it runs first again
        next_call_for(1).fail(crash, outage=True)
        quiesce()
        assert lane.get(poison.job_id).attempts == 0
        fake_gpu.clock.advance(1.0)  # type: ignore[attr-defined]
        quiesce()
    third = next_call_for(1)
    third.emit("Once")  # mid-stream this time: charged all the same, its text carried
    third.fail(crash, outage=True)  # the third time it counts against the job
    quiesce()
    charged = lane.get(poison.job_id)
    assert (charged.attempts, charged.partial_output) == (1, "Once")
    assert lane.status()["health"]["local"]["state"] == "down", "the server still went down"
    fake_gpu.clock.advance(1.0)  # type: ignore[attr-defined]
    next_call_for(2).finish("the rest of the queue runs meanwhile")
    assert other.result(timeout=5) == "the rest of the queue runs meanwhile"
    fake_gpu.clock.advance(29.0)  # type: ignore[attr-defined]
    last = next_call_for(1)
    assert last.request.resume_prefix == "Once"
    last.fail(crash, outage=True)
    with pytest.raises(Exception, match="after 2 attempt"):
        poison.result(timeout=5)


def test_a_failed_job_keeps_the_usage_of_every_call_the_last_one_too(
    start_lane: Any, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(retry=RetryPolicy(base_delay_s=1.0, max_delay_s=1.0, jitter=0.0))
    ticket = lane.submit(job(1).replace(max_attempts=2))
    first = fake_gpu.next_call()
    first.emit("One")
    first.emit(" two")
    first.fail("the model runner crashed", status=500)
    quiesce()
    fake_gpu.clock.advance(1.0)  # type: ignore[attr-defined]
    last = fake_gpu.next_call()
    last.emit(" three")
    last.fail("the model runner crashed", status=500)
    with pytest.raises(Exception, match="after 2 attempt"):
        ticket.result(timeout=5)
    failed = lane.get(ticket.job_id)
    assert failed.partial_output == "One two three"
    assert [segment.eval_count for segment in failed.segments] == [2, 1]
    assert failed.metrics is not None and failed.metrics.eval_count == 3


def test_a_job_whose_host_is_lost_mid_stream_resumes_after_its_text_on_another_host(
    start_lane: Any, fake_gpu: FakeGpu
) -> None:
    # Issue #17: the queue is not partitioned by host; a job cut off by its host's loss
    # goes back uncharged and the next up host that can run it carries on from its text.
    lane = start_lane(
        backends=tuple(BackendSettings(name=n, models=("llama3.2",)) for n in ("a100", "rtx")),
        residency=ResidencySettings(probe_initial_s=60.0, probe_max_s=60.0, probe_jitter=0.0),
    )
    ticket = lane.submit(job(1))
    call = fake_gpu.next_call()
    call.emit("Once", " upon")
    quiesce()
    (lost,) = [s for s in lane.status()["slots"].values() if s["job_id"] == ticket.job_id]
    lost_host = lost["backend"]
    assert lost["slot_id"] == f"{lost_host}.gpu0"
    call.fail(CUT, outage=True)
    resumed = fake_gpu.next_call()  # at once, on the other host: no probe came yet
    assert resumed.request.resume_prefix == "Once upon"
    resumed.finish(" a time")
    assert ticket.result(timeout=5) == "Once upon a time"
    done = lane.get(ticket.job_id)
    other = ({"a100", "rtx"} - {lost_host}).pop()
    assert (done.attempts, done.preemptions) == (0, 0)
    assert (done.backend, done.slot) == (other, f"{other}.gpu0")
    health = lane.status()["health"]
    assert (health[lost_host]["state"], health[other]["state"]) == ("down", "up")
