"""Fault injection: actors crash at random moments during a long run; no job is lost or doubled.

Two submitter threads queue JOBS jobs on a two-slot fake GPU whose calls answer at
once, while an injector crashes the store, the limiter, the residency tracker, the
arbiter and the GPU slots at seeded random points of the run (measured in backend
calls started). Then every accepted
job must have exactly one terminal commit in the store, be succeeded, and have been
answered by the backend exactly once; and the lane must still serve. The figures
are printed and recorded in docs/reliability.md.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from pathlib import Path
from typing import Any

import pykka

from actors import Config, GpuLane
from actors.config import BackendSettings
from actors.job_store import JobStore
from actors.runtime import ChildUnavailableError
from actors.testing import FakeCall, FakeGpu, InjectedFault, ManualClock
from actors.tree import DEFAULT_FACTORIES, LaneWiring, SupervisionSettings
from protocol import Job, JobSpec, JobState, Limits, StoreSettings

JOBS = 2000
CRASHES = 60
SEED = 20261123
KINDS = ("store", "limiter", "residency", "arbiter", "gpu0", "gpu1")


class Ledger:
    """Counts, per job id, the terminal commits the store made (its listener's view)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.terminal: collections.Counter[str] = collections.Counter()

    def wrap(self, deliver: Any) -> Any:
        def listener(job: Job) -> None:
            if job.state.is_terminal:
                with self._lock:
                    self.terminal[job.id] += 1
            deliver(job)

        return listener


def chat(n: int) -> JobSpec:
    return JobSpec.chat(model="m", messages=[{"role": "user", "content": f"job-{n}"}])


def test_random_crashes_of_every_actor_lose_no_job_and_complete_none_twice(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    started = threading.Semaphore(0)

    def answer_at_once(call: FakeCall) -> None:
        call.finish(f"answer to {call.request.messages[0].content}")
        started.release()

    ledger = Ledger()
    starts: collections.Counter[str] = collections.Counter()

    def counted_arbiter(wiring: LaneWiring) -> pykka.ActorRef[Any]:
        starts["arbiter"] += 1
        return DEFAULT_FACTORIES["arbiter"](wiring)

    def store_with_ledger(wiring: LaneWiring) -> pykka.ActorRef[Any]:
        starts["store"] += 1
        return JobStore.start(
            wiring.config().store,
            wiring.clock,
            listener=ledger.wrap(wiring.sinks.committed),
            recover_on_open=False,
        )

    clock = ManualClock()
    fake = FakeGpu(clock, script=answer_at_once)
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3"), synchronous="NORMAL"),
        backend=BackendSettings(slots=2),
        limits=Limits.off(),
    )
    lane = GpuLane.start(
        config,
        gpu=fake,
        clock=clock,
        factories={"store": store_with_ledger, "arbiter": counted_arbiter},
        supervision=SupervisionSettings(intensity=10 * CRASHES, period_s=3600),
    )
    accepted: dict[str, int] = {}
    refused: list[str] = []
    accepted_lock = threading.Lock()
    crash_points = sorted(rng.sample(range(50, JOBS - 200), CRASHES))
    targets = [rng.choice(KINDS) for _ in crash_points]
    injected: collections.Counter[str] = collections.Counter()
    began = time.monotonic()
    try:

        def submit(first: int) -> None:
            for n in range(first, JOBS, 2):
                try:
                    job_id = lane.submit(chat(n), detach=True).job_id
                except ChildUnavailableError as error:  # not acknowledged: not accepted
                    refused.append(str(error))
                    continue
                with accepted_lock:
                    accepted[job_id] = n

        def inject() -> None:
            calls = 0
            for point, target in zip(crash_points, targets, strict=True):
                while calls < point:
                    assert started.acquire(timeout=30), "the lane stopped serving"
                    calls += 1
                lane.ref_for(target).tell(InjectedFault())
                injected[target] += 1

        threads = [threading.Thread(target=submit, args=(i,)) for i in (0, 1)]
        threads.append(threading.Thread(target=inject))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
            assert not thread.is_alive()

        finals = {job_id: lane.wait(job_id, timeout=30) for job_id in accepted}
        last = lane.submit(chat(JOBS), detach=True)
        assert lane.wait(last.job_id, timeout=30).state is JobState.SUCCEEDED, "still serving"
        tree = lane.status()["supervision"]
    finally:
        lane.stop()
    elapsed = time.monotonic() - began

    answered: collections.Counter[str] = collections.Counter(
        call.request.messages[0].content for call in fake.backend.all_calls if call.result
    )
    by_n = {n: job_id for job_id, n in accepted.items()}
    lost = [job_id for job_id, job in finals.items() if job.state is not JobState.SUCCEEDED]
    terminal_twice = [job_id for job_id in accepted if ledger.terminal[job_id] != 1]
    answered_twice = [by_n[n] for n in by_n if answered[f"job-{n}"] != 1]
    wrong = [
        job_id
        for job_id, job in finals.items()
        if job.result != f"answer to job-{accepted[job_id]}"
    ]
    restarts = {
        "store": starts["store"] - 1,
        "arbiter": starts["arbiter"] - 1,
        "gpu slots": len(fake.slots) - 2,
    }
    print(
        f"\nfault injection: jobs={len(accepted)} refused={len(refused)} "
        f"crashes={sum(injected.values())} {dict(sorted(injected.items()))} "
        f"restarts={restarts} root_restarts={tree['restarts']} "
        f"backend_calls={len(fake.backend.all_calls)} lost={len(lost)} "
        f"terminal_twice={len(terminal_twice)} answered_twice={len(answered_twice)} "
        f"elapsed={elapsed:.1f}s"
    )
    assert sum(injected.values()) == CRASHES >= 50
    assert set(injected) == set(KINDS), "every kind of actor was crashed"
    # A fault told right behind another dies unread with the crashed instance (at most once).
    assert 1 <= restarts["store"] <= injected["store"]
    assert restarts["arbiter"] >= restarts["store"], "rest_for_one restarts what follows"
    assert restarts["gpu slots"] >= injected["gpu0"] + injected["gpu1"]
    assert all(c["state"] == "running" for c in tree["children"].values())
    assert len(accepted) + len(refused) == JOBS and len(accepted) >= JOBS - 5
    assert lost == [] and wrong == []
    assert terminal_twice == [], "every accepted job ends in exactly one terminal state"
    assert answered_twice == [], "no job was run to completion twice"
