"""gpulane's supervision tree end to end: actors crash mid-run, restart, and keep serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors import Config, GpuLane
from actors.runtime import ExitKind, ExitReason
from actors.testing import FakeGpu, InjectedFault, wait_until
from actors.tree import DEFAULT_FACTORIES, LaneWiring, SupervisionSettings
from protocol import JobSpec, JobState, StoreSettings, SystemStoppedError, ValidationError

StartLane = Callable[..., GpuLane]


def chat(text: str) -> JobSpec:
    return JobSpec.chat(model="llama3.2", messages=[{"role": "user", "content": text}])


def child(lane: GpuLane, child_id: str) -> tuple[str, int]:
    """A child's state and restart count, as ``status()`` shows them."""
    entry = lane.status()["supervision"]["children"][child_id]
    return entry["state"], entry["restarts"]


def crash(lane: GpuLane, child_id: str) -> None:
    """Make ``child_id`` crash and wait until it (and what restarts with it) runs again."""
    before = child(lane, child_id)[1]
    lane.ref_for(child_id).tell(InjectedFault())
    wait_until(lambda: child(lane, child_id) == ("running", before + 1))
    wait_until(
        lambda: all(
            c["state"] == "running" for c in lane.status()["supervision"]["children"].values()
        )
    )


@pytest.mark.parametrize("child_id", ["store", "arbiter"])
def test_a_crashed_store_or_arbiter_is_restarted_and_the_running_job_is_served_again(
    start_lane: StartLane, fake_gpu: FakeGpu, child_id: str
) -> None:
    lane = start_lane()
    ticket = lane.submit(chat("survive"))
    first = fake_gpu.next_call()
    crash(lane, child_id)
    assert first.wait_cancelled(), "rest_for_one should have restarted the slot too"
    again = fake_gpu.next_call()
    assert again.request.messages[0].content == "survive"
    again.finish("served")
    assert ticket.result(timeout=5) == "served"
    job = lane.get(ticket.job_id)
    assert (job.state, job.attempts) == (JobState.SUCCEEDED, 0)
    later = lane.submit(chat("after"))
    fake_gpu.next_call().finish("still serving")
    assert later.result(timeout=5) == "still serving"


def test_a_slot_crash_returns_its_job_to_the_queue_and_the_caller_still_gets_the_answer(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane()
    ticket = lane.submit(chat("long"))
    first = fake_gpu.next_call()
    first.emit("half")
    streamed = ticket.chunks(timeout=5)
    assert next(streamed) == "half"
    crash(lane, "gpu0")
    assert first.wait_cancelled()
    resumed = fake_gpu.next_call()
    assert resumed.request.resume_prefix == "half"
    resumed.finish(" and the rest")
    assert list(streamed) == [" and the rest"], "the stream goes on without repeating text"
    assert ticket.result(timeout=5) == "half and the rest"
    job = lane.get(ticket.job_id)
    assert (job.attempts, job.preemptions) == (0, 0), "a crash is not the job's fault"
    assert child(lane, "gpu0") == ("running", 1)
    assert child(lane, "store") == ("running", 0) and child(lane, "arbiter") == ("running", 0)


def test_jobs_queued_behind_a_crash_are_served_in_order_afterwards(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane()
    running = lane.submit(chat("first"))
    call = fake_gpu.next_call()
    waiting = [lane.submit(chat(f"q{i}")) for i in range(3)]
    crash(lane, "arbiter")
    assert call.wait_cancelled()
    order = []
    for _ in range(4):
        next_call = fake_gpu.next_call()
        order.append(next_call.request.messages[0].content)
        next_call.finish("ok")
    assert order == ["first", "q0", "q1", "q2"]
    assert [t.result(timeout=5) for t in [running, *waiting]] == ["ok"] * 4


def test_a_pause_survives_a_restart_of_the_arbiter(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane()
    lane.pause()
    crash(lane, "arbiter")
    ticket = lane.submit(chat("later"))
    assert fake_gpu.no_new_call()
    assert lane.status()["paused"] is True
    lane.resume()
    fake_gpu.next_call().finish("resumed")
    assert ticket.result(timeout=5) == "resumed"


def test_a_job_cancelled_while_its_slot_restarts_ends_cancelled_not_requeued(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane()
    ticket = lane.submit(chat("doomed"), detach=True)
    call = fake_gpu.next_call()
    lane.ref_for("gpu0").tell(InjectedFault())
    assert lane.cancel(ticket.job_id) in ("running", "queued")
    assert call.wait_cancelled()
    assert lane.wait(ticket.job_id, timeout=5).state is JobState.CANCELLED
    assert fake_gpu.no_new_call()


def test_status_shows_each_child_state_and_restart_count(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane()
    crash(lane, "gpu0")
    tree = lane.status()["supervision"]
    assert tree["state"] == "running"
    assert set(tree["children"]) == {
        "store", "limiter", "residency", "arbiter", "gpus", "gpu0", "alerter", "webhooks",
    }  # fmt: skip
    assert tree["children"]["gpu0"]["restarts"] == 1
    assert tree["children"]["gpu0"]["last_exit"].startswith("crashed: TypeError")
    assert tree["children"]["store"] == {
        "state": "running",
        "restarts": 0,
        "exits": 0,
        "last_exit": None,
    }


def test_a_test_can_swap_a_child_factory_and_it_is_used_on_every_restart(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    starts: list[str] = []

    def counting_arbiter(wiring: LaneWiring) -> pykka.ActorRef[Any]:
        starts.append("arbiter")
        return DEFAULT_FACTORIES["arbiter"](wiring)

    lane = start_lane(factories={"arbiter": counting_arbiter})
    crash(lane, "arbiter")
    assert starts == ["arbiter", "arbiter"]
    ticket = lane.submit(chat("works"))
    fake_gpu.next_call().finish("yes")
    assert ticket.result(timeout=5) == "yes"


def test_an_unknown_child_factory_is_refused(start_lane: StartLane) -> None:
    with pytest.raises(ValidationError, match="factories"):
        start_lane(factories={"cache": DEFAULT_FACTORIES["store"]})


def test_too_many_restarts_stop_the_lane_tell_the_host_and_fail_waiting_callers(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    reported: list[ExitReason] = []
    told = threading.Event()

    def on_failure(reason: ExitReason) -> None:
        reported.append(reason)
        told.set()

    lane = start_lane(supervision=SupervisionSettings(intensity=1), on_failure=on_failure)
    waiting = lane.submit(chat("never answered"))
    fake_gpu.next_call()
    crash(lane, "store")
    lane.ref_for("store").tell(InjectedFault())
    assert told.wait(5), "the host was not told"
    assert [r.kind for r in reported] == [ExitKind.ESCALATED]
    assert "more than 1 restarts" in reported[0].detail
    with pytest.raises(SystemStoppedError, match="escalated"):
        waiting.result(timeout=5)
    with pytest.raises(SystemStoppedError, match="more than 1 restarts"):
        lane.submit(chat("too late"))
    with pytest.raises(SystemStoppedError):
        lane.status()
    assert lane.failure is not None and lane.failure.kind is ExitKind.ESCALATED
    # Real time is the point: a stop that waited on the dead tree would sit out its
    # shutdown time-out (40 s here), so any bound far below that tells the two apart.
    started = time.monotonic()
    lane.stop()
    assert time.monotonic() - started < 1.0, "stop after a failure must not wait on a dead tree"


def test_a_store_that_cannot_start_fails_the_start_instead_of_hanging(tmp_path: Path) -> None:
    config = Config(store=StoreSettings(path=str(tmp_path / "missing-dir" / "jobs.sqlite3")))
    with pytest.raises(SystemStoppedError, match="failed to start"):
        GpuLane.start(config, gpu=FakeGpu(), supervision=SupervisionSettings(intensity=1))
