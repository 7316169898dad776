"""Placement over three hosts: gpulane against LiteLLM's router strategies and model affinity.

    .venv/bin/python tests/benchmarks/bench_placement.py [--quick] [--json]

A discrete-event simulation (no real sleeping, as bench_swaps.py) of 3 hosts and 5 models.
Each host is an Ollama server with one slot and one model loaded at a time
(``OLLAMA_NUM_PARALLEL=1``, ``OLLAMA_MAX_LOADED_MODELS=1``: loading another model evicts
the loaded one; the hosts start empty, so each first load is a swap too). The hosts are
equally fast. Each host's catalog is the models it has: h1 and h2 have the four smaller
models, h3 all five (``qwen2.5:32b`` is only on h3). Loading a model takes its load
time, then the job runs 1-4 s (uniform). The same seeded trace (one caller, models drawn
by popularity 35/25/18/12/10 %, exponential arrivals with a mean gap of 1 s: 2.5 times
what one host serves with no swap at all, 0.83 of three hosts') goes through four systems:

- gpulane: one ``actors.scheduling.ReadyQueue`` and ``actors.placement.place`` itself,
  called whenever a slot frees or a job arrives, as the arbiter does; ``resident`` is each
  host's loaded model, ``last_used`` when its last job started. The arbiter's prefetch
  (handing a busy slot its next job early, to hide the dispatch round trip) is not
  modelled: in the simulation a dispatch takes no time, so the choice is made when the
  slot frees.
- LiteLLM ``simple-shuffle`` (router_strategy/simple_shuffle.py, no weights given): each
  request to a host drawn at random among the deployments of its model;
- LiteLLM ``least-busy`` (router_strategy/least_busy.py): the deployment of the model
  with the fewest requests in flight, counted per model group (a request is in flight
  from the call until its answer, so one queued at the host counts; requests for other
  models on the same host do not), ties to the first deployment in ``model_list`` order
  (its strict ``<`` over the counts);
- model affinity: each model always to one host, assigned round-robin over the models in
  the order above, each to the next host in turn whose catalog has it (a model on one host
  only goes there): h1 gets llama3.2 and mistral-nemo, h2 qwen2.5:7b, h3 gemma2:9b and
  qwen2.5:32b.

Every peer routes only to hosts whose catalog has the model (a LiteLLM ``model_list``
names one deployment per model and host), and each host then serves its own queue FIFO,
as Ollama does, loading the model a request needs (a swap if it is not the loaded one).

Figures: swaps (model loads), time spent loading, makespan, wait p50/p99/max (a job's
wait is from its arrival until its host starts serving it, loading included in the
service as in bench_swaps.py), and how far past its FIFO turn a job starts.

A job's FIFO turn, adapted per host: the first dispatch round (a host is free) in which
FIFO over the hosts that can run it would start it, that is, each free host in turn
taking the oldest waiting job it may run; how far past its turn a job starts is its start
minus that moment (0 for a job started before its turn came). The bound checked for
every job of gpulane's: ``max_swap_defer_s`` plus the longest run. For the peers the same
figure shows the price of routing at arrival: a job waits behind its host's queue while
another host that has its model is free.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from _common import Outcome, goal, parse_args, percentile, report

from actors.hosts import slot_id_for
from actors.placement import FreeHost, place
from actors.scheduling import ReadyQueue
from protocol import Job, JobSpec, JobState, SchedulingPolicy, normalise_model_name

T0 = 1_767_610_800.0
SEED = 20261205
LOAD_S = {
    "llama3.2": 5.0,
    "qwen2.5:7b": 8.0,
    "gemma2:9b": 10.0,
    "mistral-nemo": 12.0,
    "qwen2.5:32b": 20.0,
}
POPULARITY = (35, 25, 18, 12, 10)  # percent of the requests, in LOAD_S's order
MODELS = tuple(LOAD_S)
SMALL = frozenset(normalise_model_name(m) for m in MODELS[:4])
CATALOGS = {"h1": SMALL, "h2": SMALL, "h3": frozenset(normalise_model_name(m) for m in MODELS)}
HOSTS = tuple(CATALOGS)
RUN_S = (1.0, 4.0)  # uniform run time of one job
MEAN_GAP_S = 1.0  # one host serves a job per 2.5 s at best (no swap): 2.5x what one serves
POLICY = SchedulingPolicy()  # the default max_swap_defer_s
NAMES = ("gpulane", "shuffle", "least_busy", "affinity")


@dataclasses.dataclass(frozen=True)
class Request:
    job: Job
    arrival: float
    run: float


@dataclasses.dataclass
class Host:
    """One Ollama server: one slot, one model loaded at a time."""

    name: str
    catalog: frozenset[str]
    loaded: str | None = None
    job: Job | None = None
    free_at: float = T0
    last_used: float = float("-inf")

    def has(self, job: Job) -> bool:
        return normalise_model_name(job.spec.model) in self.catalog


class System(Protocol):
    """Where jobs go and in which order each host serves them."""

    def arrive(self, job: Job, now: float, hosts: Sequence[Host]) -> None:
        """A job arrived."""

    def dispatch(self, now: float, hosts: Sequence[Host]) -> list[tuple[Host, Job]]:
        """The jobs the free hosts start now."""
        ...

    def finished(self, host: Host, job: Job) -> None:
        """``host`` answered ``job``."""


class Gpulane:
    """One queue for every host; ``place`` fills the free hosts (the arbiter's decision)."""

    def __init__(self) -> None:
        self.queue = ReadyQueue()

    def arrive(self, job: Job, now: float, hosts: Sequence[Host]) -> None:
        self.queue.add(job, now)

    def dispatch(self, now: float, hosts: Sequence[Host]) -> list[tuple[Host, Job]]:
        free = [
            FreeHost(h.name, [slot_id_for(h.name, 0)], last_used=h.last_used)
            for h in hosts
            if h.job is None
        ]
        catalogs: dict[str, frozenset[str] | None] = {h.name: h.catalog for h in hosts}
        resident = {h.name: frozenset({h.loaded} if h.loaded else ()) for h in hosts}
        by_name = {h.name: h for h in hosts}
        placed = place(self.queue, now, POLICY, free, catalogs, resident)
        return [(by_name[p.backend], p.job) for p in placed]

    def finished(self, host: Host, job: Job) -> None:
        pass


Route = Callable[[Job, list[str]], str]  # a job and its model's deployments -> a host


class RoutedFifo:
    """Routed at arrival by ``route`` to one host, then that host's own FIFO queue
    (Ollama's)."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.queues: dict[str, deque[Job]] = {name: deque() for name in HOSTS}

    def arrive(self, job: Job, now: float, hosts: Sequence[Host]) -> None:
        self.queues[self.route(job, [h.name for h in hosts if h.has(job)])].append(job)

    def dispatch(self, now: float, hosts: Sequence[Host]) -> list[tuple[Host, Job]]:
        return [
            (h, self.queues[h.name].popleft())
            for h in hosts
            if h.job is None and self.queues[h.name]
        ]

    def finished(self, host: Host, job: Job) -> None:
        pass


def simple_shuffle(seed: int) -> RoutedFifo:
    """LiteLLM ``simple-shuffle`` with no weights: ``random.choice(healthy_deployments)``."""
    rng = random.Random(seed)
    return RoutedFifo(lambda job, deployments: rng.choice(deployments))


class LeastBusy(RoutedFifo):
    """LiteLLM ``least-busy``: fewest requests in flight among the model's deployments."""

    def __init__(self) -> None:
        super().__init__(self._least_busy)
        self.in_flight: dict[str, dict[str, int]] = {}  # per model group, per deployment

    def _least_busy(self, job: Job, deployments: list[str]) -> str:
        counts = self.in_flight.setdefault(job.spec.model, {})
        for name in deployments:
            counts.setdefault(name, 0)
        pick = min(counts, key=counts.__getitem__)  # the first of the least, as its `<` scan
        counts[pick] += 1
        return pick

    def finished(self, host: Host, job: Job) -> None:
        self.in_flight[job.spec.model][host.name] -= 1


def model_affinity() -> RoutedFifo:
    """Each model to one fixed host: round-robin over the models, each to the next host in
    turn whose catalog has it."""
    home: dict[str, str] = {}
    turn = 0
    for model in MODELS:
        while normalise_model_name(model) not in CATALOGS[HOSTS[turn % len(HOSTS)]]:
            turn += 1
        home[model] = HOSTS[turn % len(HOSTS)]
        turn += 1
    return RoutedFifo(lambda job, deployments: home[job.spec.model])


class FifoTurns:
    """Each job's FIFO turn: the first dispatch round in which FIFO over the hosts that can
    run it would start it (each free host in turn taking the oldest waiting job it may run)."""

    def __init__(self) -> None:
        self.waiting: dict[str, deque[Job]] = {}  # per model, oldest first
        self.started: set[str] = set()
        self.turn: dict[str, float] = {}

    def add(self, job: Job) -> None:
        self.waiting.setdefault(normalise_model_name(job.spec.model), deque()).append(job)

    def start(self, job: Job) -> None:
        self.started.add(job.id)

    def observe(self, now: float, free: Sequence[Host]) -> None:
        claimed: set[str] = set()
        for host in free:
            oldest: Job | None = None
            for model in host.catalog:
                queue = self.waiting.get(model)
                while queue and queue[0].id in self.started:
                    queue.popleft()
                head = next(
                    (j for j in queue or () if j.id not in claimed and j.id not in self.started),
                    None,
                )
                if head is not None and (oldest is None or head.seq < oldest.seq):
                    oldest = head
            if oldest is not None:
                claimed.add(oldest.id)
                self.turn.setdefault(oldest.id, now)


def make_trace(count: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    t, out = T0, []
    for seq in range(1, count + 1):
        t += rng.expovariate(1.0 / MEAN_GAP_S)
        model = rng.choices(MODELS, weights=POPULARITY)[0]
        spec = JobSpec.generate(model=model, prompt="p", caller="bench")
        job = Job(
            id=f"j{seq}", seq=seq, spec=spec, state=JobState.QUEUED, created_at=t, updated_at=t
        )
        out.append(Request(job, t, rng.uniform(*RUN_S)))
    return out


def simulate(trace: list[Request], system: System) -> Outcome:
    """Serve ``trace`` on the three hosts: at each arrival or answer, the hosts that are
    free start what ``system`` gives them."""
    hosts = [Host(name, CATALOGS[name]) for name in HOSTS]
    turns = FifoTurns()
    start: dict[str, float] = {}
    run = {r.job.id: r.run for r in trace}
    swaps, loading, i, done = 0, 0.0, 0, 0
    answers: list[tuple[float, int]] = []  # (when, host index) of each running job's answer
    while done < len(trace):
        arrival = trace[i].arrival if i < len(trace) else float("inf")
        now = min(arrival, answers[0][0]) if answers else arrival
        while answers and answers[0][0] <= now:
            host = hosts[heapq.heappop(answers)[1]]
            assert host.job is not None
            system.finished(host, host.job)
            host.job = None
            done += 1
        while i < len(trace) and trace[i].arrival <= now:
            system.arrive(trace[i].job, now, hosts)
            turns.add(trace[i].job)
            i += 1
        free = [h for h in hosts if h.job is None]
        if not free:
            continue
        turns.observe(now, free)
        for host, job in system.dispatch(now, hosts):
            assert host.job is None and host.has(job), f"{job.id} placed on {host.name}"
            start[job.id] = now
            turns.start(job)
            service = run[job.id]
            if host.loaded != job.spec.model_key:
                swaps += 1
                loading += LOAD_S[job.spec.model]
                service += LOAD_S[job.spec.model]
                host.loaded = job.spec.model_key
            host.job, host.free_at, host.last_used = job, now + service, now
            heapq.heappush(answers, (host.free_at, hosts.index(host)))
    return Outcome(start, turns.turn, swaps, loading, max(h.free_at for h in hosts))


def figures(name: str, trace: list[Request], outcome: Outcome, bound: float) -> dict[str, float]:
    """One system's figures, keyed ``<name>.<figure>``."""
    waits = [outcome.start[r.job.id] - r.arrival for r in trace]
    beyond = [
        max(0.0, outcome.start[r.job.id] - outcome.turn.get(r.job.id, outcome.start[r.job.id]))
        for r in trace
    ]
    return {
        f"{name}.swaps": outcome.swaps,
        f"{name}.loading_s": outcome.loading_s,
        f"{name}.makespan_s": outcome.end - T0,
        f"{name}.wait_s.p50": percentile(waits, 50),
        f"{name}.wait_s.p99": percentile(waits, 99),
        f"{name}.wait_s.max": max(waits),
        f"{name}.beyond_fifo_turn_s.max": max(beyond),
        f"{name}.jobs_beyond_bound": sum(1 for b in beyond if b > bound),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    jobs = 500 if args.quick else 1500
    trace = make_trace(jobs, SEED)
    systems: dict[str, Callable[[], System]] = {
        "gpulane": Gpulane,
        "shuffle": lambda: simple_shuffle(SEED + 1),
        "least_busy": LeastBusy,
        "affinity": model_affinity,
    }
    bound = POLICY.max_swap_defer_s + RUN_S[1]
    results: dict[str, float] = {}
    for name, make in systems.items():
        results.update(figures(name, trace, simulate(trace, make()), bound))
    peers = NAMES[1:]
    best_p99 = min(results[f"{p}.wait_s.p99"] for p in peers)
    results["ratio.least_busy_swaps_vs_gpulane"] = results["least_busy.swaps"] / max(
        1, results["gpulane.swaps"]
    )
    results["ratio.gpulane_makespan_vs_least_busy"] = (
        results["gpulane.makespan_s"] / results["least_busy.makespan_s"]
    )
    results["ratio.gpulane_wait_p99_vs_best_peer"] = results["gpulane.wait_s.p99"] / best_p99
    rows = (
        ("swaps", "swaps"),
        ("loading_s", "time spent loading (s)"),
        ("makespan_s", "makespan (s)"),
        ("wait_s.p50", "wait p50 (s)"),
        ("wait_s.p99", "wait p99 (s)"),
        ("wait_s.max", "wait max (s)"),
        ("beyond_fifo_turn_s.max", "max start past FIFO turn (s)"),
        ("jobs_beyond_bound", f"jobs past the bound ({bound:g} s)"),
    )
    print(f"{'figure':34} " + " ".join(f"{n:>12}" for n in NAMES))
    for key, label in rows:
        print(f"{label:34} " + " ".join(f"{results[f'{n}.{key}']:12.1f}" for n in NAMES))
    print(
        f"{jobs} jobs, hosts {', '.join(f'{h} ({len(c)} models)' for h, c in CATALOGS.items())}, "
        f"loads {', '.join(f'{m} {s:g} s' for m, s in LOAD_S.items())}, "
        f"popularity {'/'.join(map(str, POPULARITY))} %, run {RUN_S[0]:g}-{RUN_S[1]:g} s, "
        f"mean gap {MEAN_GAP_S:g} s, max_swap_defer_s {POLICY.max_swap_defer_s:g}"
    )
    for key in (
        "ratio.least_busy_swaps_vs_gpulane",
        "ratio.gpulane_makespan_vs_least_busy",
        "ratio.gpulane_wait_p99_vs_best_peer",
    ):
        print(f"{key:40} {results[key]:8.3f}")
    goals = [
        goal(
            "ratio.least_busy_swaps_vs_gpulane",
            ">=",
            4.0,
            results["ratio.least_busy_swaps_vs_gpulane"],
        ),
        goal(
            "ratio.gpulane_makespan_vs_least_busy",
            "<=",
            0.8,
            results["ratio.gpulane_makespan_vs_least_busy"],
        ),
        goal(
            "ratio.gpulane_wait_p99_vs_best_peer",
            "<=",
            1.0,
            results["ratio.gpulane_wait_p99_vs_best_peer"],
        ),
        goal(
            "gpulane.beyond_fifo_turn_s.max", "<=", bound, results["gpulane.beyond_fifo_turn_s.max"]
        ),
    ]
    report("placement", results, goals, args.json)


if __name__ == "__main__":
    main()
