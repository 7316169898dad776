"""Preemption over real HTTP: a full GpuLane with the Ollama backend on the simulated server.

    .venv/bin/python tests/benchmarks/bench_preempt_http.py [--quick] [--json]

Figures: from an internal submit to the running external stream being closed (as the
simulated server sees it: its disconnect count goes up) and to the internal job's first
token at the caller (p50, p99); the GPU time that resuming preempted jobs from
their prefix saves against restarting them from scratch, on a seeded workload
(tokens the simulated server generated for the external jobs, both strategies); and per
kind of output the external job makes (text, two tool calls, thinking), with its caller
waiting for the answer or a client streaming it, what a cut costs: the internal job's
time to its first token, and the external job's extra tokens and time beyond an uncut run
of the same request. Output that cannot be continued (thinking, tool calls) starts over if
nobody has seen it and is not preempted once a client has (docs/architecture.md section 3,
"Preempt"), so there the internal job waits for the external one to end.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import goal, parse_args, percentile, report

from actors import Config, GpuLane, SystemClock, Ticket
from actors.backends.base import CancelToken, ChunkSink
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import ModelProfile, SimulatedOllama
from protocol import (
    BackendRequest,
    BackendResult,
    Chunk,
    Job,
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
# The output kinds a preemption meets (docs/architecture.md section 3, "Preempt"); 100
# tokens per second as "long", answers of about 40 tokens.
OUTPUT_MODELS = {
    "short": ModelProfile(
        load_seconds=0.0, first_token_seconds=FIRST_TOKEN_S, tokens_per_second=100.0,
        mean_answer_tokens=40, max_answer_tokens=2000,
    ),
    "thinker": ModelProfile(
        load_seconds=0.0, first_token_seconds=FIRST_TOKEN_S, tokens_per_second=100.0,
        mean_answer_tokens=40, max_answer_tokens=2000, thinking=True,
    ),
}  # fmt: skip
CUT_AT = 10  # the internal job arrives this many tokens into the external job's output


def _lookup_tool(name: str) -> dict[str, Any]:
    """A function whose arguments are fixed (a ``const`` of 20 words), so its call decodes
    the same 24-odd tokens every time."""
    words = " ".join(f"{name}{i}" for i in range(20))
    schema = {"type": "object", "properties": {"q": {"const": words}}, "required": ["q"]}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


# Each external request: the job, and how many tokens into its output the cut comes. The
# tools request names both tools, so the model calls both (docs/backends.md): the cut comes
# while the second call decodes, after a streaming client has seen the first.
OUTPUT_CASES: dict[str, JobSpec] = {
    "text": JobSpec.chat(model="short", messages=QUESTION),
    "tools": JobSpec.chat(
        model="short",
        messages=[{"role": "user", "content": "Call lookup, then fetch, for the arbiter."}],
        tools=(_lookup_tool("lookup"), _lookup_tool("fetch")),
    ),
    "thinking": JobSpec.chat(model="thinker", messages=QUESTION, think="medium"),
}


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


def tokens_or_end(sim: SimulatedOllama, tokens: int, ticket: Ticket) -> bool:
    """Wait until the server has decoded ``tokens`` in all (True) or the job has ended
    (False). The job's end is not a change the server wakes its waiters for, so it is
    looked at every 50 ms."""
    while not ticket.done():
        try:
            sim.wait_for(lambda s: s.tokens_generated >= tokens, timeout=0.05)
            return True
        except TimeoutError:
            pass
    return False


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
                    if not tokens_or_end(sim, sim.stats().tokens_generated + at, ticket):
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


@dataclasses.dataclass
class Round:
    """One external job of an output case, cut or not: its final state, its time from
    submit to end, the tokens the server decoded for it, the internal job's time to its
    first token, and what a streaming client saw (each piece with the server's token count
    relative to the job's start when it arrived)."""

    job: Job
    wall_s: float
    tokens: int
    first_token_s: float | None
    pieces: list[tuple[Chunk, int]]

    @property
    def outcome(self) -> str:
        """What the preemption did: ``resumed`` (more than one call's output makes the
        answer), ``started over`` (preempted, one call's output), or ``not preempted``."""
        if self.job.preemptions == 0:
            return "not preempted"
        return "resumed" if len(self.job.segments) > 1 else "started over"

    @property
    def stream_matches(self) -> bool:
        """The pieces a streaming client saw add up to the answer: nothing repeated, nothing
        contradicting it."""
        output = self.job.output
        assert output is not None and self.job.result is not None
        chunks = [piece for piece, _ in self.pieces]
        return (
            "".join(chunks) == self.job.result
            and "".join(c.thinking for c in chunks) == output.thinking
            and tuple(call for c in chunks for call in c.tool_calls) == output.tool_calls
        )


def external_round(
    lane: GpuLane, sim: SimulatedOllama, spec: JobSpec, streaming: bool, cut: int | None
) -> Round:
    """Run ``spec`` as an external job; ``cut`` tokens into its output an URGENT internal
    job arrives (None: nobody cuts it). ``streaming``: a client reads its pieces as they
    come (subscribed before the cut), else its caller waits for the answer."""
    base = sim.stats()
    pieces: list[tuple[Chunk, int]] = []
    ticket = lane.submit(spec)
    reader = None
    if streaming:
        stream = ticket.chunks(timeout=30)

        def read(piece: Chunk) -> None:
            pieces.append((piece, sim.stats().tokens_generated - base.tokens_generated))

        def read_the_rest() -> None:
            for piece in stream:
                read(piece)

        read(next(stream))  # subscribed from here on
        reader = threading.Thread(target=read_the_rest)
        reader.start()
    first_token_s = None
    internal_tokens = 0
    if cut is not None:
        sim.wait_for(lambda s: s.tokens_generated >= base.tokens_generated + cut, timeout=10)
        began = time.perf_counter()
        interrupt = lane.submit(internal("long", f"interrupt {base.calls_started}"))
        chunks = interrupt.chunks(timeout=30)
        next(chunks)
        first_token_s = time.perf_counter() - began
        for _ in chunks:
            pass
        internal_tokens = interrupt.job(timeout=30).metrics.eval_count  # type: ignore[union-attr]
    job = ticket.job(timeout=30)
    if reader is not None:
        reader.join()
    assert job.finished_at is not None, job
    tokens = sim.stats().tokens_generated - base.tokens_generated - internal_tokens
    return Round(job, job.finished_at - job.created_at, tokens, first_token_s, pieces)


def output_costs(rounds: int, tmp: Path) -> dict[str, float]:
    """Per output kind (text, tools, thinking) and client (waiting for the answer, or
    streaming it): uncut runs (their median time is the baseline), then ``rounds`` cut
    ones; the figures of each."""
    results: dict[str, float] = {}
    with SimulatedOllama({**MODELS, **OUTPUT_MODELS}, max_loaded_models=3) as sim:
        backend = OllamaBackend(sim.url)
        lane = lane_on(tmp, "outputs", backend)
        try:
            for kind, spec in OUTPUT_CASES.items():
                uncut = external_round(lane, sim, spec, True, None)  # also warms the model up
                uncut_s = statistics.median(
                    external_round(lane, sim, spec, False, None).wall_s
                    for _ in range(max(3, rounds // 4))
                )
                calls = [at for piece, at in uncut.pieces if piece.tool_calls]
                cut = calls[0] + 6 if calls else CUT_AT  # tools: into the second call
                thinking = sum(1 for piece, _ in uncut.pieces if piece.thinking)
                results[f"{kind}.uncut.tokens"] = float(uncut.tokens)
                results[f"{kind}.uncut.thinking_tokens"] = float(thinking)
                results[f"{kind}.cut_at_token"] = float(cut)
                for client in ("waiting", "streaming"):
                    cuts = [
                        external_round(lane, sim, spec, client == "streaming", cut)
                        for _ in range(rounds)
                    ]
                    name = f"{kind}.{client}"
                    first = [r.first_token_s for r in cuts if r.first_token_s is not None]
                    results[f"{name}.internal_first_token_ms.p50"] = percentile(first, 50) * 1000
                    results[f"{name}.internal_first_token_ms.p99"] = percentile(first, 99) * 1000
                    extra_tokens = [r.tokens - uncut.tokens for r in cuts]
                    extra_ms = [(r.wall_s - uncut_s) * 1000 for r in cuts]
                    results[f"{name}.external_extra_tokens.p50"] = percentile(extra_tokens, 50)
                    results[f"{name}.external_extra_ms.p50"] = percentile(extra_ms, 50)
                    for outcome in ("resumed", "started over", "not preempted"):
                        count = sum(1 for r in cuts if r.outcome == outcome)
                        results[f"{name}.{outcome.replace(' ', '_')}"] = float(count)
                    if client == "streaming":
                        matched = sum(1 for r in cuts if r.stream_matches)
                        results[f"{name}.streams_matching_answer"] = float(matched)
        finally:
            lane.stop()
            backend.close()
    return results


def print_output_costs(outputs: dict[str, float], rounds: int) -> None:
    """The output cases side by side: what the internal job waited, what the external paid."""
    print(
        f"\n{'external job, cut by an URGENT internal one':44} {'internal first token ms':>24} "
        f"{'external extra':>16} {'outcome of the cuts':>32}"
    )
    print(f"{'':44} {'p50':>11} {'p99':>12} {'tokens':>7} {'ms':>8}")
    for kind in OUTPUT_CASES:
        for client in ("waiting", "streaming"):
            name = f"{kind}.{client}"
            counts = ", ".join(
                f"{outputs[f'{name}.{o}']:.0f} {o.replace('_', ' ')}"
                for o in ("resumed", "started_over", "not_preempted")
                if outputs[f"{name}.{o}"]
            )
            label = f"{kind} ({'a client streams it' if client == 'streaming' else 'caller waits'})"
            print(
                f"{label:44} {outputs[f'{name}.internal_first_token_ms.p50']:11.1f} "
                f"{outputs[f'{name}.internal_first_token_ms.p99']:12.1f} "
                f"{outputs[f'{name}.external_extra_tokens.p50']:7.0f} "
                f"{outputs[f'{name}.external_extra_ms.p50']:8.1f}   {counts}"
            )
    for kind in OUTPUT_CASES:
        matched = outputs[f"{kind}.streaming.streams_matching_answer"]
        print(
            f"{kind}: uncut {outputs[f'{kind}.uncut.tokens']:.0f} tokens "
            f"({outputs[f'{kind}.uncut.thinking_tokens']:.0f} thinking), cut at token "
            f"{outputs[f'{kind}.cut_at_token']:.0f}; streams matching the answer "
            f"{matched:.0f}/{rounds}"
        )
    print(f"({rounds} cuts each; extra: the external job's beyond its uncut runs', p50)")


def main() -> None:
    args = parse_args(__doc__ or "")
    rounds, jobs, output_rounds = (30, 15, 3) if args.quick else (200, 60, 20)
    with tempfile.TemporaryDirectory(prefix="bench-preempt-http-", dir=Path.cwd()) as tmp:
        closed, first = preemption_latency(rounds, Path(tmp))
        resume_tokens, answer_tokens, cuts = workload_tokens(jobs, 6, False, Path(tmp))
        restart_tokens, _, restart_cuts = workload_tokens(jobs, 6, True, Path(tmp))
        outputs = output_costs(output_rounds, Path(tmp))
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
    print_output_costs(outputs, output_rounds)
    results.update({f"outputs.{name}": value for name, value in outputs.items()})
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
