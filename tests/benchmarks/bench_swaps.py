"""Model swaps and fairness: gpulane's ready-queue policy against FIFO and unbounded drain-by-model.

    .venv/bin/python tests/benchmarks/bench_swaps.py [--quick] [--json]

A discrete-event simulation of one GPU (no real sleeping): each job needs one of
three models, loading a model that is not resident takes that model's load time, then
the job runs for its run time. The same seeded trace (random interleave of models,
arrivals faster than service) goes through three policies:

- gpulane: ``actors.scheduling.ReadyQueue`` with the default ``max_swap_defer_s``;
- FIFO, what Ollama does with a queue of requests for different models;
- unbounded drain-by-model, ``ORDER BY model != current, created_at``.

Figures: swaps (model loads), time spent loading, makespan, wait p50/p99/max, and
how far past its FIFO turn a job starts (its start minus its start under FIFO, and
minus the moment it became the oldest waiting job). A second run has 10 callers,
one sending 10x the others, and reports Jain's index over the light callers'
throughput (jobs served within the arrival window over jobs sent).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Protocol

from _common import goal, parse_args, percentile, report

from actors.scheduling import ReadyQueue
from protocol import Job, JobSpec, JobState, SchedulingPolicy

T0 = 1_767_610_800.0
SEED = 20260105
LOAD_S = {"llama3.2": 6.0, "qwen2.5:7b": 9.0, "mistral-nemo": 12.0}
MODELS = tuple(LOAD_S)
RUN_S = (1.0, 4.0)  # uniform run time of one job
MEAN_GAP_S = 2.0  # mean time between arrivals: faster than the 2.5 s mean run alone
POLICY = SchedulingPolicy()  # the default max_swap_defer_s


@dataclasses.dataclass(frozen=True)
class Request:
    job: Job
    arrival: float
    run: float


@dataclasses.dataclass
class Outcome:
    start: dict[str, float]
    turn: dict[str, float]
    swaps: int
    loading_s: float
    end: float


class Policy(Protocol):
    """One ordering of the waiting jobs."""

    def add(self, job: Job, now: float) -> None:
        """A job arrived."""

    def pop(self, now: float, current: str | None) -> Job:
        """The next job to run on a GPU holding ``current``."""
        ...


class Gpulane:
    def __init__(self) -> None:
        self.queue = ReadyQueue()

    def add(self, job: Job, now: float) -> None:
        self.queue.add(job, now)

    def pop(self, now: float, current: str | None) -> Job:
        resident = frozenset() if current is None else frozenset({current})
        job = self.queue.pop(now, POLICY, resident=resident)
        assert job is not None
        return job


class Fifo:
    def __init__(self) -> None:
        self.waiting: list[Job] = []

    def add(self, job: Job, now: float) -> None:
        self.waiting.append(job)

    def pop(self, now: float, current: str | None) -> Job:
        return self.waiting.pop(0)


class DrainByModel(Fifo):
    """``ORDER BY model != current, created_at``: no bound at all."""

    def pop(self, now: float, current: str | None) -> Job:
        for i, job in enumerate(self.waiting):
            if job.spec.model_key == current:
                return self.waiting.pop(i)
        return self.waiting.pop(0)


def make_trace(count: int, callers: Callable[[random.Random], str], seed: int) -> list[Request]:
    rng = random.Random(seed)
    t, out = T0, []
    for seq in range(1, count + 1):
        t += rng.expovariate(1.0 / MEAN_GAP_S)
        spec = JobSpec.generate(model=rng.choice(MODELS), prompt="p", caller=callers(rng))
        job = Job(
            id=f"j{seq}", seq=seq, spec=spec, state=JobState.QUEUED, created_at=t, updated_at=t
        )
        out.append(Request(job, t, rng.uniform(*RUN_S)))
    return out


def simulate(trace: list[Request], policy: Policy) -> Outcome:
    """Serve ``trace`` on one GPU; the FIFO turn of a job is the first pop at which it is
    the oldest job waiting."""
    start: dict[str, float] = {}
    turn: dict[str, float] = {}
    waiting: dict[int, Job] = {}
    now, current, swaps, loading, i = T0, None, 0, 0.0, 0
    run = {r.job.id: r.run for r in trace}
    while i < len(trace) or waiting:
        while i < len(trace) and trace[i].arrival <= now:
            policy.add(trace[i].job, now)
            waiting[trace[i].job.seq] = trace[i].job
            i += 1
        if not waiting:
            now = trace[i].arrival
            continue
        turn.setdefault(waiting[min(waiting)].id, now)
        job = policy.pop(now, current)
        del waiting[job.seq]
        start[job.id] = now
        if job.spec.model_key != current:
            swaps += 1
            loading += LOAD_S[job.spec.model]
            now += LOAD_S[job.spec.model]
            current = job.spec.model_key
        now += run[job.id]
    return Outcome(start, turn, swaps, loading, now)


def waits(trace: list[Request], outcome: Outcome) -> list[float]:
    return [outcome.start[r.job.id] - r.arrival for r in trace]


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def fairness(count: int, policy: Policy) -> tuple[float, float, float]:
    """Jain's index over the light callers' throughput, and their and the heavy caller's
    mean wait. Caller ``heavy`` sends 10x as many jobs as each of the 9 light callers."""
    weights = ["heavy"] * 10 + [f"light{n}" for n in range(9)]
    trace = make_trace(count, lambda rng: rng.choice(weights), SEED + 1)
    outcome = simulate(trace, policy)
    window_end = trace[-1].arrival
    sent: dict[str, int] = {}
    served: dict[str, int] = {}
    wait_by: dict[str, list[float]] = {}
    for r in trace:
        caller = r.job.spec.caller
        sent[caller] = sent.get(caller, 0) + 1
        if outcome.start[r.job.id] <= window_end:
            served[caller] = served.get(caller, 0) + 1
        wait_by.setdefault(caller, []).append(outcome.start[r.job.id] - r.arrival)
    light = [c for c in sent if c != "heavy"]
    index = jain([served.get(c, 0) / sent[c] for c in light])
    light_waits = [w for c in light for w in wait_by[c]]
    return index, sum(light_waits) / len(light_waits), sum(wait_by["heavy"]) / len(wait_by["heavy"])


def main() -> None:
    args = parse_args(__doc__ or "")
    jobs, fair_jobs = (300, 1000) if args.quick else (600, 2000)
    names = ("gpulane", "fifo", "drain")
    trace = make_trace(jobs, lambda rng: rng.choice(("a", "b", "c", "d", "e")), SEED)
    policies: dict[str, Callable[[], Policy]] = {
        "gpulane": Gpulane,
        "fifo": Fifo,
        "drain": DrainByModel,
    }
    runs = {name: simulate(trace, make()) for name, make in policies.items()}
    results: dict[str, float] = {}
    for name, outcome in runs.items():
        w = waits(trace, outcome)
        results.update(
            {
                f"{name}.swaps": outcome.swaps,
                f"{name}.loading_s": outcome.loading_s,
                f"{name}.makespan_s": outcome.end - T0,
                f"{name}.wait_s.p50": percentile(w, 50),
                f"{name}.wait_s.p99": percentile(w, 99),
                f"{name}.wait_s.max": max(w),
            }
        )
        fifo_start = runs["fifo"].start
        results[f"{name}.beyond_fifo_start_s.max"] = max(
            outcome.start[r.job.id] - fifo_start[r.job.id] for r in trace
        )
        results[f"{name}.beyond_fifo_turn_s.max"] = max(
            outcome.start[j] - t for j, t in outcome.turn.items()
        )
    for name, make in (("gpulane", Gpulane), ("fifo", Fifo)):
        index, light_wait, heavy_wait = fairness(fair_jobs, make())
        results[f"{name}.fair.jain_light"] = index
        results[f"{name}.fair.light_wait_s.mean"] = light_wait
        results[f"{name}.fair.heavy_wait_s.mean"] = heavy_wait
    results["ratio.fifo_swaps_vs_gpulane"] = results["fifo.swaps"] / max(
        1, results["gpulane.swaps"]
    )
    figures = (
        "swaps",
        "loading_s",
        "makespan_s",
        "wait_s.p50",
        "wait_s.p99",
        "wait_s.max",
        "beyond_fifo_start_s.max",
        "beyond_fifo_turn_s.max",
    )
    print(f"{'figure':30} {'gpulane':>12} {'FIFO':>12} {'drain':>12}")
    for fig in figures:
        print(f"{fig:30} " + " ".join(f"{results[f'{n}.{fig}']:12.1f}" for n in names))
    for fig in ("fair.jain_light", "fair.light_wait_s.mean", "fair.heavy_wait_s.mean"):
        print(f"{fig:30} {results['gpulane.' + fig]:12.3f} {results['fifo.' + fig]:12.3f}")
    print(
        f"{jobs} jobs, 3 models (load {', '.join(f'{v:g}' for v in LOAD_S.values())} s), "
        f"run {RUN_S[0]:g}-{RUN_S[1]:g} s, mean gap {MEAN_GAP_S:g} s, "
        f"max_swap_defer_s {POLICY.max_swap_defer_s:g}; fairness: {fair_jobs} jobs, 10 callers"
    )
    bound = POLICY.max_swap_defer_s + RUN_S[1]
    goals = [
        goal("ratio.fifo_swaps_vs_gpulane", ">=", 5.0, results["ratio.fifo_swaps_vs_gpulane"]),
        goal(
            "gpulane.beyond_fifo_start_s.max",
            "<=",
            bound,
            results["gpulane.beyond_fifo_start_s.max"],
        ),
        goal("gpulane.fair.jain_light", ">=", 0.95, results["gpulane.fair.jain_light"]),
    ]
    report("swaps", results, goals, args.json)


if __name__ == "__main__":
    main()
