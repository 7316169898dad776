"""Properties of the ready-queue policy under random traffic (hypothesis), without threads.

A single GPU serves a random trace: each job arrives at some time, needs one of a few
models (a different model costs a load first) and runs for a bounded time. The
properties: every job is served; the order keys hold (lane, then priority, dominate;
FIFO within a caller's jobs for one model); and a job is never deferred for longer
than ``max_swap_defer_s`` plus the service of the call in progress (plus, for a job
whose model is resident, one fair-share turn per other caller) after its FIFO turn,
the first moment it was the oldest ready job of its class (one class, for this one:
a job of a higher class that arrives later rightly goes first).
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.scheduling import ReadyQueue
from protocol import Job, JobSpec, JobState, Lane, Priority, SchedulingPolicy

T0 = 1_767_610_800.0
LOAD_S = 3.0
MAX_RUN_S = 5.0
CALLERS = ("a", "b", "c")
MODELS = ("m1", "m2", "m3")


@dataclasses.dataclass(frozen=True)
class Arrival:
    gap: float
    lane: Lane
    priority: Priority
    model: str
    caller: str
    run: float


arrivals = st.builds(
    Arrival,
    gap=st.floats(0.0, 4.0),
    lane=st.sampled_from(tuple(Lane)),
    priority=st.sampled_from(tuple(Priority)),
    model=st.sampled_from(MODELS),
    caller=st.sampled_from(CALLERS),
    run=st.floats(0.5, MAX_RUN_S),
)


@dataclasses.dataclass
class Served:
    job: Job
    arrived: float
    turn: float | None
    start: float
    run: float


def class_rank(job: Job) -> tuple[int, int]:
    return job.spec.lane.rank, job.spec.priority.rank


def simulate(trace: list[Arrival], policy: SchedulingPolicy) -> list[Served]:
    """Serve ``trace`` on one GPU; returns every job with its FIFO turn and start time."""
    jobs: list[tuple[float, Job, float]] = []
    t = T0
    for seq, a in enumerate(trace, start=1):
        t += a.gap
        spec = JobSpec.generate(
            model=a.model, prompt="p", lane=a.lane, priority=a.priority, caller=a.caller
        )
        job = Job(
            id=f"j{seq}", seq=seq, spec=spec, state=JobState.QUEUED, created_at=t, updated_at=t
        )
        jobs.append((t, job, a.run))
    run_of = {job.id: run for _, job, run in jobs}
    arrived_at = {job.id: at for at, job, _ in jobs}
    queue, ready, turns, served = ReadyQueue(), {}, {}, []
    now, current, pending = T0, None, list(jobs)
    while pending or len(queue):
        while pending and pending[0][0] <= now:
            _, job, _ = pending.pop(0)
            queue.add(job, now)
            ready[job.id] = job
        if not len(queue):
            now = pending[0][0]
            continue
        best = min(class_rank(j) for j in ready.values())
        head = min((j for j in ready.values() if class_rank(j) == best), key=lambda j: j.seq)
        turns.setdefault(head.id, now)
        resident = frozenset() if current is None else frozenset({current})
        job = queue.pop(now, policy, resident=resident)
        assert job is not None
        del ready[job.id]
        served.append(Served(job, arrived_at[job.id], turns.get(job.id), now, run_of[job.id]))
        now += run_of[job.id] + (LOAD_S if job.spec.model_key != current else 0.0)
        current = job.spec.model_key
    return served


@settings(max_examples=150, deadline=None)
@given(st.lists(arrivals, min_size=1, max_size=60), st.sampled_from((0.0, 5.0, 30.0)))
def test_every_job_is_served_exactly_once(trace: list[Arrival], defer: float) -> None:
    served = simulate(trace, SchedulingPolicy(max_swap_defer_s=defer))
    assert sorted(s.job.seq for s in served) == list(range(1, len(trace) + 1))


@settings(max_examples=150, deadline=None)
@given(st.lists(arrivals, min_size=1, max_size=60), st.sampled_from((0.0, 5.0, 30.0)))
def test_no_job_is_deferred_past_the_bound_after_its_fifo_turn(
    trace: list[Arrival], defer: float
) -> None:
    # One class: a job of a higher class arriving later rightly goes first, bound or not.
    one_class = [
        dataclasses.replace(a, lane=Lane.EXTERNAL, priority=Priority.NORMAL) for a in trace
    ]
    served = simulate(one_class, SchedulingPolicy(max_swap_defer_s=defer))
    one_service = LOAD_S + MAX_RUN_S
    bound = max(defer + one_service, len(CALLERS) * one_service)
    for s in served:
        if s.turn is not None:  # None: fair share served it before its FIFO turn came
            assert s.start - s.turn <= bound + 1e-6, (s.job.id, s.start - s.turn)


@settings(max_examples=150, deadline=None)
@given(st.lists(arrivals, min_size=1, max_size=60))
def test_lane_then_priority_dominate_and_each_callers_jobs_for_a_model_run_in_order(
    trace: list[Arrival],
) -> None:
    served = simulate(trace, SchedulingPolicy(max_swap_defer_s=30.0))
    for i, s in enumerate(served):
        waiting = [o for o in served[i + 1 :] if o.arrived <= s.start]
        assert all(class_rank(s.job) <= class_rank(o.job) for o in waiting), s.job.id
    last_seq: dict[tuple[tuple[int, int], str, str], int] = {}
    for s in served:
        key = (class_rank(s.job), s.job.spec.caller, s.job.spec.model_key)
        assert s.job.seq > last_seq.get(key, 0), key
        last_seq[key] = s.job.seq


def test_a_job_needing_a_swap_waits_no_longer_than_the_bound_under_a_flood_of_resident_work() -> (
    None
):
    trace = [Arrival(0.0, Lane.EXTERNAL, Priority.NORMAL, "m1", "a", 2.0)]
    trace += [Arrival(0.0, Lane.EXTERNAL, Priority.NORMAL, "m2", "a", 2.0)]
    trace += [Arrival(1.0, Lane.EXTERNAL, Priority.NORMAL, "m1", "a", 2.0) for _ in range(100)]
    served = simulate(trace, SchedulingPolicy(max_swap_defer_s=20.0))
    swap_job = next(s for s in served if s.job.spec.model == "m2")
    assert swap_job.turn is not None
    assert 20.0 <= swap_job.start - swap_job.turn <= 20.0 + 2.0
    assert sum(1 for s in served[1:] if s.job.spec.model_key != "m1") == 1
