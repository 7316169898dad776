"""Preemption over real HTTP: a full GpuLane with the Ollama backend on the simulated server.

    .venv/bin/python tests/benchmarks/bench_preempt_http.py [--quick] [--json]

Figures: from an internal submit to the running external stream being closed (as the
simulated server sees it: its disconnect count goes up) and to the internal job's first
token at the caller (p50, p99); and the GPU time that resuming preempted jobs from
their prefix saves against restarting them from scratch, on a seeded workload
(tokens the simulated server generated for the external jobs, both strategies).
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import threading
import time
from pathlib import Path

from _common import goal, parse_args, percentile, report

from actors import Config, GpuLane, SystemClock
from actors.backends.base import CancelToken, ChunkSink
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import ModelProfile, SimulatedOllama
from protocol import (
    BackendRequest,
    BackendResult,
    JobSpec,
    Lane,
    Limits,
    Priority,
    SchedulingPolicy,
    StoreSettings,
)

FIRST_TOKEN_S = 0.05  # the simulated time to first token of every call
MODELS = {
    # A long answer the internal job interrupts; 100 tokens per second.
    "long": ModelProfile(
        load_seconds=0.0, first_token_seconds=FIRST_TOKEN_S, tokens_per_second=100.0,
        mean_answer_tokens=10**6, max_answer_tokens=10**6,
    ),
    # The workload's answers: about 120 tokens at 1000 tokens per second.
    "answer": ModelProfile(
        load_seconds=0.0, first_token_seconds=FIRST_TOKEN_S, tokens_per_second=1000.0,
        mean_answer_tokens=120, max_answer_tokens=2000,
    ),
}  # fmt: skip
QUESTION = [{"role": "user", "content": "Explain how the arbiter picks the next job."}]


def lane_on(tmp: Path, name: str, backend: OllamaBackend) -> GpuLane:
    """A GpuLane whose external jobs can be preempted any number of times."""
    config = Config(
        store=StoreSettings(path=str(tmp / f"{name}.sqlite3")),
        scheduling=SchedulingPolicy(max_preemptions=10**6),
        limits=Limits.off(),  # the bench measures preemption, not admission
    )
    return GpuLane.start(config, backend=backend, clock=SystemClock())


def internal(model: str, text: str) -> JobSpec:
    return JobSpec.generate(
        model=model, prompt=text, lane=Lane.INTERNAL, priority=Priority.URGENT, max_tokens=3
    )


def preemption_latency(rounds: int, tmp: Path) -> tuple[list[float], list[float]]:
    """Per round: a long external stream runs; an URGENT internal job arrives."""
    closed: list[float] = []
    first: list[float] = []
    with SimulatedOllama(MODELS, max_loaded_models=2) as sim:
        backend = OllamaBackend(sim.url)
        lane = lane_on(tmp, "latency", backend)
        try:
            spec = JobSpec.chat(model="long", messages=QUESTION)
            external = lane.submit(spec, detach=True)
            for r in range(rounds):
                seen = sim.stats()
                sim.wait_for(lambda s, t=seen.tokens_generated: s.tokens_generated >= t + 3)
                stamp: list[float] = []
                watcher = threading.Thread(
                    target=_stamp_disconnect, args=(sim, seen.calls_disconnected, stamp)
                )
                watcher.start()
                began = time.perf_counter()
                ticket = lane.submit(internal("long", f"round {r}"))
                chunks = ticket.chunks(timeout=10)
                next(chunks)
                first.append(time.perf_counter() - began)
                for _ in chunks:  # read to the end: a caller that stops reading has gone
                    pass
                watcher.join()
                closed.append(stamp[0] - began)
            lane.cancel(external.job_id)
        finally:
            lane.stop()
            backend.close()
    return closed, first


def _stamp_disconnect(sim: SimulatedOllama, before: int, out: list[float]) -> None:
    sim.wait_for(lambda s: s.calls_disconnected > before, timeout=10)
    out.append(time.perf_counter())


class RestartFromScratch:
    """The baseline strategy: a preempted job runs again from the start (no prefix).

    Only the server's token count matters here; the text it returns is not used.
    """

    def __init__(self, inner: OllamaBackend) -> None:
        self.inner = inner
        self.name = "restart"

    def complete(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken
    ) -> BackendResult:
        fresh = dataclasses.replace(request, resume_prefix="")
        return self.inner.complete(fresh, on_chunk, cancel)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def workload_tokens(jobs: int, seed: int, restart: bool, tmp: Path) -> tuple[int, int, int]:
    """Run the seeded workload; returns (external tokens generated, answer tokens, cuts)."""
    rng = random.Random(seed)
    with SimulatedOllama(MODELS, max_loaded_models=2) as sim:
        ollama = OllamaBackend(sim.url)
        backend = RestartFromScratch(ollama) if restart else ollama
        lane = GpuLane.start(
            Config(
                store=StoreSettings(path=str(tmp / f"work-{restart}.sqlite3")),
                limits=Limits.off(),
            ),
            backend=backend,  # type: ignore[arg-type]
            clock=SystemClock(),
        )
        internal_tokens = answer_tokens = cuts = 0
        try:
            for i in range(jobs):
                messages = [{"role": "user", "content": f"Question {i}: {rng.random():.6f}"}]
                ticket = lane.submit(JobSpec.chat(model="answer", messages=messages))
                preempt_at = rng.sample(range(5, 110), rng.randint(0, 3))
                for at in sorted(preempt_at):
                    base = sim.stats().tokens_generated
                    try:
                        sim.wait_for(
                            lambda s, b=base, a=at, t=ticket: (
                                s.tokens_generated >= b + a or t.done()
                            ),
                            timeout=10,
                        )
                    except TimeoutError:
                        break
                    if ticket.done():
                        break
                    job = lane.submit(internal("answer", f"interrupt {i}.{at}"))
                    internal_tokens += job.job(timeout=10).metrics.eval_count  # type: ignore[union-attr]
                    cuts += 1
                done = ticket.job(timeout=30)
                answer_tokens += len((done.result or "").split()) if not restart else 0
        finally:
            lane.stop()
            ollama.close()
        total = sim.stats().tokens_generated - internal_tokens
    return total, answer_tokens, cuts


def main() -> None:
    args = parse_args(__doc__ or "")
    rounds, jobs = (30, 15) if args.quick else (200, 60)
    with tempfile.TemporaryDirectory(prefix="bench-preempt-http-", dir=Path.cwd()) as tmp:
        closed, first = preemption_latency(rounds, Path(tmp))
        resume_tokens, answer_tokens, cuts = workload_tokens(jobs, 6, False, Path(tmp))
        restart_tokens, _, restart_cuts = workload_tokens(jobs, 6, True, Path(tmp))
    ms = 1000.0
    saved = 1 - resume_tokens / restart_tokens
    tokens_per_s = MODELS["answer"].tokens_per_second
    results = {
        "gpulane.stream_closed_ms.p50": percentile(closed, 50) * ms,
        "gpulane.stream_closed_ms.p99": percentile(closed, 99) * ms,
        "gpulane.internal_first_token_ms.p50": percentile(first, 50) * ms,
        "gpulane.internal_first_token_ms.p99": percentile(first, 99) * ms,
        "simulated.first_token_ms": FIRST_TOKEN_S * ms,
        "resume.external_tokens": float(resume_tokens),
        "restart.external_tokens": float(restart_tokens),
        "answer_tokens": float(answer_tokens),
        "preemptions.resume": float(cuts),
        "preemptions.restart": float(restart_cuts),
        "resume.gpu_seconds": resume_tokens / tokens_per_s,
        "restart.gpu_seconds": restart_tokens / tokens_per_s,
        "resume.gpu_time_saved_fraction": saved,
    }
    print(f"{'figure':40} {'p50':>10} {'p99':>10}")
    for name in ("stream_closed_ms", "internal_first_token_ms"):
        p50, p99 = results[f"gpulane.{name}.p50"], results[f"gpulane.{name}.p99"]
        print(f"{name:40} {p50:10.2f} {p99:10.2f}")
    print(f"(simulated time to first token {FIRST_TOKEN_S * ms:.0f} ms; {rounds} rounds)")
    print(f"\n{'workload':40} {'resume':>10} {'restart':>10}")
    print(f"{'external tokens generated':40} {resume_tokens:10d} {restart_tokens:10d}")
    print(f"{'preemptions':40} {cuts:10d} {restart_cuts:10d}")
    print(
        f"{'GPU seconds at 1000 tok/s':40} {resume_tokens / tokens_per_s:10.2f} "
        f"{restart_tokens / tokens_per_s:10.2f}"
    )
    print(f"answers: {jobs} jobs, {answer_tokens} tokens; GPU time saved by resuming {saved:.1%}")
    goals = [
        goal("gpulane.stream_closed_ms.p99", "<=", 50.0, results["gpulane.stream_closed_ms.p99"]),
        goal(
            "gpulane.internal_first_token_ms.p99",
            "<=",
            50.0 + FIRST_TOKEN_S * ms,
            results["gpulane.internal_first_token_ms.p99"],
        ),
    ]
    report("preempt_http", results, goals, args.json)


if __name__ == "__main__":
    main()
