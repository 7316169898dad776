"""An outage of the model server fails nothing (docs/architecture.md section 13).

The lane runs real GpuSlots on a FakeBackend that the test takes down and brings back:
while it is down its calls and its ``/api/ps`` poll fail the way a refused connection
does (``BackendError(outage=True)``). Time is a ManualClock, so ten minutes of outage
take no wall-clock time and the probes' back-off is checked to the second.
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


def test_a_stream_cut_mid_answer_is_the_jobs_failure_even_when_the_connection_dropped(
    start_lane: Any, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(retry=RetryPolicy(base_delay_s=1.0, max_delay_s=1.0, jitter=0.0))
    ticket = lane.submit(job(1))
    call = fake_gpu.next_call()
    call.emit("Once upon")
    call.fail("Ollama cut the response: peer closed connection", outage=True)
    quiesce()
    stored = lane.get(ticket.job_id)
    assert stored.state is JobState.QUEUED and stored.attempts == 1
    assert stored.partial_output == "Once upon"  # resumed after, as a preemption is
    assert lane.status()["health"]["local"]["state"] == "up"


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


def test_a_call_that_began_before_the_backend_came_back_does_not_take_it_down_again(
    start_lane: Any, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(
        backend=BackendSettings(slots=2),
        residency=ResidencySettings(probe_initial_s=1.0, probe_jitter=0.0),
        scheduling=SchedulingPolicy(prefetch=False),
    )
    old, doomed = lane.submit(job(1)), lane.submit(job(2))
    began_early, fails_first = fake_gpu.next_call(), fake_gpu.next_call()
    fails_first.fail(REFUSED, outage=True)
    quiesce()
    assert lane.status()["health"]["local"]["state"] == "down"
    fake_gpu.clock.advance(1.0)  # type: ignore[attr-defined]
    quiesce()  # the (blind) probe: up again
    fake_gpu.next_call().finish("retried")  # the requeued job runs on the free slot
    assert doomed.result(timeout=5) == "retried"
    began_early.fail(REFUSED, outage=True)  # this call met the old outage
    quiesce()
    health = lane.status()["health"]["local"]
    assert health["state"] == "up" and health["changes"] == 2
    fake_gpu.next_call().finish("after all")  # requeued without a charge, and run at once
    assert old.result(timeout=5) == "after all" and lane.get(old.job_id).attempts == 0


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
    next_call_for(1).fail(crash, outage=True)  # the third time it counts against the job
    quiesce()
    assert lane.get(poison.job_id).attempts == 1
    assert lane.status()["health"]["local"]["state"] == "down", "the server still went down"
    fake_gpu.clock.advance(1.0)  # type: ignore[attr-defined]
    next_call_for(2).finish("the rest of the queue runs meanwhile")
    assert other.result(timeout=5) == "the rest of the queue runs meanwhile"
    fake_gpu.clock.advance(29.0)  # type: ignore[attr-defined]
    next_call_for(1).fail(crash, outage=True)
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
