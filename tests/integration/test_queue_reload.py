"""A restart reloads a deep queue a chunk at a time: dispatch starts before the load ends,
every job runs once and in serving order, a cancel of a job still to come holds, and the
rate limiter counts every job not ended (docs/architecture.md section 7, "Recovery").

The chunk is made small here (``actors.arbiter.RELOAD_CHUNK``) so a few dozen jobs span
several chunks; a store whose answers to ``LoadQueue`` the test holds at a gate shows
what happens while a chunk is still in the store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from conftest import StartLane
from job_store_helpers import make_spec

from actors import Config, GpuLane, arbiter
from actors.job_store import JobStore
from actors.runtime import Clock, ManualClock
from actors.stores import JobDB
from actors.testing import FakeCall, FakeGpu, InjectedFault, quiesce
from actors.tree import LaneWiring
from protocol import (
    CancelReason,
    JobSpec,
    JobState,
    Lane,
    Limits,
    Priority,
    QueueFullError,
    StoreSettings,
)
from protocol.messages import CancelQueued, InsertJob, LoadQueue, Transition

CHUNK = 4


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arbiter, "RELOAD_CHUNK", CHUNK)


def question(call: FakeCall) -> str:
    """Which job a call runs: its message (``make_spec(n)`` asks "question n")."""
    return call.request.messages[-1].content


def fill(path: Path, specs: list[JobSpec], clock: Clock) -> list[str]:
    """Queue ``specs`` in the file, as a gpulane that stopped would have left them."""
    db = JobDB.open(str(path), clock)
    try:
        it = iter([InsertJob(spec) for spec in specs])
        return [job.id for job in db.write_batch(lambda: next(it, None))]  # type: ignore[union-attr]
    finally:
        db.close()


class GatedStore(JobStore):
    """A JobStore that holds its answer to the n-th LoadQueue after the first until the
    test opens ``gates[n]``: the arbiter then waits in that turn, the load half done."""

    def __init__(self, gates: dict[int, threading.Event], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gates, self._seen = gates, 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, LoadQueue) and not message.first:
            self._seen += 1
            gate = self._gates.get(self._seen)
            if gate is not None:
                assert gate.wait(10), "the test never opened the gate"
        return super().on_receive(message)


@pytest.fixture
def gates() -> Iterator[dict[int, threading.Event]]:
    """Gates for the first two continuations of the load; all opened after the test."""
    made = {n: threading.Event() for n in (1, 2)}
    yield made
    for gate in made.values():
        gate.set()  # never leave the store waiting


@pytest.fixture
def gated(start_lane: StartLane, gates: dict[int, threading.Event]) -> StartLane:
    """start_lane with the GatedStore."""

    def store(wiring: LaneWiring) -> pykka.ActorRef[Any]:
        return GatedStore.start(
            gates,
            wiring.config().store,
            wiring.clock,
            listener=wiring.listener,
            recover_on_open=False,
            timers=wiring.timers,
        )

    return lambda **given: start_lane(factories={"store": store}, **given)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"  # the file start_lane uses


def test_after_a_restart_every_queued_job_runs_once_in_serving_order(path: Path) -> None:
    clock = ManualClock()
    external = [make_spec(n) for n in range(20)]
    internal = make_spec(20, lane=Lane.INTERNAL).replace(priority=Priority.URGENT)
    fill(path, [*external, internal], clock)
    ran: list[str] = []

    def finish(call: FakeCall) -> None:
        ran.append(question(call))
        call.finish("ok")

    config = Config(store=StoreSettings(path=str(path)), limits=Limits.off())
    lane = GpuLane.start(config, gpu=FakeGpu(clock, script=finish), clock=clock)
    try:
        quiesce()
        assert ran == ["question 20", *(f"question {n}" for n in range(20))]
        assert lane.status()["jobs"]["succeeded"] == 21
    finally:
        lane.stop()


def test_dispatch_starts_while_the_rest_of_the_queue_is_still_in_the_store(
    path: Path, gated: StartLane, fake_gpu: FakeGpu, gates: dict[int, threading.Event]
) -> None:
    fill(path, [make_spec(n) for n in range(20)], fake_gpu.clock)
    lane = gated(limits=Limits.off())
    # The arbiter took chunk 1 as it started and waits for chunk 2; the slot's SlotIdle,
    # told as the slot started, is behind that turn in the arbiter's mailbox.
    gates[1].set()
    first = fake_gpu.next_call()  # chunks 3 to 5 are still in the store (gate 2)
    assert question(first) == "question 0"
    gates[2].set()
    quiesce()
    assert lane.status()["queued"] == 19


def test_a_cancel_of_a_job_still_in_the_store_holds_when_its_chunk_comes(
    path: Path, gated: StartLane, fake_gpu: FakeGpu, gates: dict[int, threading.Event]
) -> None:
    ids = fill(path, [make_spec(n) for n in range(20)], fake_gpu.clock)
    lane = gated(limits=Limits.off())
    # The arbiter waits for chunk 2; the cancel goes in its mailbox ahead of chunk 3.
    cancel = CancelQueued(ids[-1], CancelReason.USER)
    outcome = lane.ref_for("arbiter").ask(cancel, block=False)
    gates[1].set()
    gates[2].set()
    assert outcome.get(timeout=10) == "queued"
    quiesce()
    assert lane.get(ids[-1]).state is JobState.CANCELLED
    assert lane.status()["queued"] == 18  # one running, one cancelled
    fake_gpu.next_call().finish("ok")
    assert question(fake_gpu.next_call()) == "question 1"


def test_a_cancel_of_an_unknown_job_during_the_load_is_not_found(
    path: Path, gated: StartLane, fake_gpu: FakeGpu, gates: dict[int, threading.Event]
) -> None:
    fill(path, [make_spec(n) for n in range(20)], fake_gpu.clock)
    lane = gated(limits=Limits.off())
    cancel = CancelQueued("01NOSUCHJOB", CancelReason.USER)
    outcome = lane.ref_for("arbiter").ask(cancel, block=False)
    gates[1].set()
    gates[2].set()
    assert outcome.get(timeout=10) == "not_found"


def test_the_limiter_counts_jobs_left_running_as_well_as_queued_after_a_restart(
    path: Path, start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    ids = fill(path, [make_spec(n) for n in range(2)], fake_gpu.clock)
    db = JobDB.open(str(path), fake_gpu.clock)
    try:
        moves = iter([Transition(ids[0], JobState.LOADING), Transition(ids[0], JobState.RUNNING)])
        db.write_batch(lambda: next(moves, None))
    finally:
        db.close()
    lane = start_lane(limits=Limits(max_queued_per_caller=2))
    lane.pause()
    with pytest.raises(QueueFullError, match="queued_per_caller"):
        lane.submit(make_spec(3))
    assert lane.status()["admission"]["queued_by_caller"] == {"alice": 2}


def test_an_arbiter_that_crashes_in_the_middle_of_the_reload_starts_it_over_and_loses_nothing(
    path: Path, gated: StartLane, fake_gpu: FakeGpu, gates: dict[int, threading.Event]
) -> None:
    ids = fill(path, [make_spec(n) for n in range(20)], fake_gpu.clock)
    lane = gated(limits=Limits.off())
    # Behind the slot's SlotIdle, ahead of chunk 3: the arbiter dispatches, then crashes.
    lane.ref_for("arbiter").tell(InjectedFault())
    gates[1].set()
    gates[2].set()
    quiesce()  # crashed, restarted (the slots with it), reloaded from the start
    answered: list[str] = []
    stopped: list[str] = []
    while not all(lane.get(job_id).state is JobState.SUCCEEDED for job_id in ids):
        call = fake_gpu.next_call()
        if call.token.cancelled:  # the call the crash stopped: its job runs again
            stopped.append(question(call))
        else:
            call.finish("ok")
            answered.append(question(call))
        quiesce()
    assert stopped == ["question 0"]
    assert sorted(answered) == sorted(f"question {n}" for n in range(20))
    supervision = lane.supervision()
    assert supervision is not None and supervision.child("arbiter").restarts == 1
