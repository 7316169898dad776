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

The real path: a seeded mixed-model trace through the gateway (``POST /jobs``) to a
GpuLane on the simulated Ollama server (one model fits its GPU; every call on a loaded
model reports a small warm ``load_duration``, as Ollama does), all timings divided by
``REAL_SPEED``. It reports the swaps gpulane counted (``gpulane_swaps_total`` and the
load histogram's count from ``/metrics``) next to the loads the server performed, which
must be equal, and what the old figure was: the jobs that reported a ``load_duration``
(each was a sample of the load histogram before #15).
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx
from _common import Outcome, goal, parse_args, percentile, report
from prometheus_client.parser import text_string_to_metric_families

from actors import Config, GpuLane
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import ModelProfile, SimulatedOllama
from actors.gateway import GatewayServer, create_app
from actors.scheduling import ReadyQueue
from protocol import Job, JobSpec, JobState, Limits, SchedulingPolicy, StoreSettings

T0 = 1_767_610_800.0
SEED = 20260105
LOAD_S = {"llama3.2": 6.0, "qwen2.5:7b": 9.0, "mistral-nemo": 12.0}
MODELS = tuple(LOAD_S)
RUN_S = (1.0, 4.0)  # uniform run time of one job
MEAN_GAP_S = 2.0  # mean time between arrivals: faster than the 2.5 s mean run alone
POLICY = SchedulingPolicy()  # the default max_swap_defer_s
REAL_SPEED = 20.0  # the real path runs the simulated server this much faster than its profiles
REAL_MODELS = {
    name: ModelProfile(
        load_seconds=load_s, first_token_seconds=0.2, tokens_per_second=40.0,
        mean_answer_tokens=60, max_answer_tokens=120,
    )
    for name, load_s in LOAD_S.items()
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Request:
    job: Job
    arrival: float
    run: float


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


@dataclasses.dataclass(frozen=True)
class RealRun:
    """What the real path measured: gpulane's figures from ``/metrics``, the server's loads,
    and the jobs that reported a load_duration (the old histogram's samples)."""

    jobs: int
    swaps_total: int
    load_histogram_count: int
    loading_s: float
    overhead_ratio: float
    dispatched_cold: int
    server_loads: int
    jobs_with_load_duration: int
    wall_s: float


def real_path(count: int) -> RealRun:
    """``count`` jobs of the seeded trace through the gateway on the simulated server, each
    submitted at its arrival time (scaled by ``REAL_SPEED``); waits for all to end."""
    trace = make_trace(count, lambda rng: "bench", SEED + 2)
    scheduling = SchedulingPolicy(max_swap_defer_s=POLICY.max_swap_defer_s / REAL_SPEED)
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatedOllama(REAL_MODELS, max_loaded_models=1, speed=REAL_SPEED) as sim,
    ):
        backend = OllamaBackend(sim.url, timeout=60.0)
        config = Config(
            store=StoreSettings(path=str(Path(tmp) / "jobs.sqlite3")),
            scheduling=scheduling,
            limits=Limits.off(),  # one caller sends the whole trace
        )
        lane = GpuLane.start(config, backend=backend)
        try:
            with (
                GatewayServer(create_app(lane, upstream=sim.url)) as server,
                httpx.Client(base_url=server.url, timeout=30.0) as http,
            ):
                began = time.monotonic()
                ids = []
                for r in trace:
                    time.sleep(max(0.0, began + (r.arrival - T0) / REAL_SPEED - time.monotonic()))
                    body = {"kind": "generate", "model": r.job.spec.model, "prompt": "a story"}
                    response = http.post("/jobs", json=body)
                    response.raise_for_status()
                    ids.append(response.json()["id"])
                ended = [lane.wait(job_id, timeout=120.0) for job_id in ids]
                wall_s = time.monotonic() - began
                metrics = _samples(http.get("/metrics").text)
        finally:
            lane.stop()
            backend.close()
        loads = sim.stats().loads
    failed = [job.id for job in ended if job.state is not JobState.SUCCEEDED]
    if failed:
        raise SystemExit(f"bench_swaps: {len(failed)} jobs of the real path did not succeed")
    return RealRun(
        jobs=count,
        swaps_total=int(metrics["gpulane_swaps_total"]),
        load_histogram_count=int(metrics["gpulane_model_load_seconds_count"]),
        loading_s=metrics["gpulane_model_load_seconds_sum"],
        overhead_ratio=metrics["gpulane_swap_overhead_ratio"],
        dispatched_cold=int(metrics["gpulane_dispatched_cold_total"]),
        server_loads=loads,
        jobs_with_load_duration=sum(
            1 for job in ended if job.metrics is not None and job.metrics.load_duration_ns > 0
        ),
        wall_s=wall_s,
    )


def _samples(exposition: str) -> dict[str, float]:
    """Each sample's value by name, summed over labels (``/metrics`` text)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def main() -> None:
    args = parse_args(__doc__ or "")
    jobs, fair_jobs, real_jobs = (300, 1000, 80) if args.quick else (600, 2000, 300)
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
    real = real_path(real_jobs)
    results.update(
        {
            "real.jobs": real.jobs,
            "real.gpulane_swaps": real.swaps_total,
            "real.gpulane_load_histogram_count": real.load_histogram_count,
            "real.server_loads": real.server_loads,
            "real.jobs_with_load_duration": real.jobs_with_load_duration,
            "real.dispatched_cold": real.dispatched_cold,
            "real.loading_s": real.loading_s,
            "real.overhead_ratio": real.overhead_ratio,
            "real.wall_s": real.wall_s,
            "real.swaps_minus_server_loads.abs": abs(real.swaps_total - real.server_loads),
        }
    )
    print(
        f"\nreal path: {real.jobs} jobs through the gateway on the simulated server "
        f"(speed {REAL_SPEED:g}x, one model fits, warm calls report a load_duration), "
        f"{real.wall_s:.1f} s"
    )
    for label, value in (
        ("swaps counted by gpulane (gpulane_swaps_total)", real.swaps_total),
        ("gpulane_model_load_seconds_count", real.load_histogram_count),
        ("loads the simulated server performed", real.server_loads),
        ("jobs reporting a load_duration (the old count)", real.jobs_with_load_duration),
        ("jobs dispatched for a model not resident", real.dispatched_cold),
        ("seconds loading (histogram sum)", real.loading_s),
        ("swap overhead ratio", real.overhead_ratio),
    ):
        print(
            f"  {label:50} {value:10.3f}"
            if isinstance(value, float)
            else f"  {label:50} {value:10}"
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
        goal(
            "real.swaps_minus_server_loads.abs",
            "<=",
            0,
            results["real.swaps_minus_server_loads.abs"],
        ),
    ]
    report("swaps", results, goals, args.json)


if __name__ == "__main__":
    main()
