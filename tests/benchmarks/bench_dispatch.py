"""Dispatch speed and preemption latency: gpulane against a plain asyncio priority-queue worker.

    .venv/bin/python tests/benchmarks/bench_dispatch.py [--quick] [--json]

Figures: the GPU idle gap between consecutive jobs under a backlog (p50, p99), the
idle fraction with 20 ms jobs, and from an internal submit to the running external
call's cancel and to the internal job's start (p50, p99). gpulane runs with its
durable store (synchronous=FULL) on a fake GPU whose calls take real time; the
baseline is the common design: one asyncio worker over an asyncio.PriorityQueue,
in memory, without preemption. The backlog also runs with gpulane's prefetch off
(``scheduling.prefetch = false``), to show what handing the next job over early buys.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path

from _common import goal, parse_args, percentile, report

from actors import Config, GpuLane, SystemClock
from actors.testing import FakeCall, FakeGpu
from protocol import ActiveHours, JobSpec, Lane, Limits, SchedulingPolicy, StoreSettings

JOB_SECONDS = 0.020
LONG_EXTERNAL_SECONDS = 1.0


def spec(lane: Lane = Lane.EXTERNAL, text: str = "x") -> JobSpec:
    return JobSpec.generate(model="m", prompt=text, lane=lane, caller="bench")


class Timeline:
    """Start and end times of every backend call, recorded on the slot's worker thread."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.lock = threading.Lock()

    def gaps(self) -> list[float]:
        return [s - e for s, e in zip(self.starts[1:], self.ends[:-1], strict=False)]


def gpulane_backlog(jobs: int, tmp: Path, *, prefetch: bool) -> tuple[list[float], float]:
    timeline = Timeline()

    def script(call: FakeCall) -> None:
        timeline.starts.append(time.perf_counter())
        time.sleep(JOB_SECONDS)
        timeline.ends.append(time.perf_counter())
        call.finish("ok")

    config = Config(
        store=StoreSettings(path=str(tmp / f"backlog-{prefetch}.sqlite3")),
        limits=Limits.off(),
        scheduling=SchedulingPolicy(prefetch=prefetch),
    )
    lane = GpuLane.start(config, gpu=FakeGpu(SystemClock(), script=script), clock=SystemClock())
    try:
        lane.pause()
        tickets = [lane.submit(spec(), detach=True) for _ in range(jobs)]
        lane.resume()
        for ticket in tickets:
            ticket.result(timeout=60)
    finally:
        lane.stop()
    gaps = timeline.gaps()
    span = timeline.ends[-1] - timeline.starts[0]
    return gaps, sum(gaps) / span


def gpulane_preemption(rounds: int, tmp: Path) -> tuple[list[float], list[float]]:
    cancel_latency: list[float] = []
    start_latency: list[float] = []
    external_running = threading.Event()
    internal_started = threading.Event()
    submitted_at = [0.0]

    def script(call: FakeCall) -> None:
        if call.request.prompt == "external":
            external_running.set()
            if call.token.wait(LONG_EXTERNAL_SECONDS * 5):
                cancel_latency.append(time.perf_counter() - submitted_at[0])
            call.finish("ext")
        else:
            start_latency.append(time.perf_counter() - submitted_at[0])
            internal_started.set()
            call.finish("int")

    config = Config(
        store=StoreSettings(path=str(tmp / "preempt.sqlite3")),
        limits=Limits.off(),
        scheduling=SchedulingPolicy(
            active_hours=ActiveHours.parse("00:00-23:59"), max_preemptions=10**6
        ),
    )
    lane = GpuLane.start(config, gpu=FakeGpu(SystemClock(), script=script), clock=SystemClock())
    try:
        external = lane.submit(spec(Lane.EXTERNAL, "external"), detach=True)
        for _ in range(rounds):
            assert external_running.wait(10)
            external_running.clear()
            internal_started.clear()
            time.sleep(0.005)  # let the external call settle into its stream
            submitted_at[0] = time.perf_counter()
            lane.submit(spec(Lane.INTERNAL, "internal"), detach=True).result(timeout=10)
            assert internal_started.is_set()
        lane.cancel(external.job_id)
    finally:
        lane.stop()
    return cancel_latency, start_latency


async def _baseline(jobs: int, preempt_rounds: int) -> tuple[list[float], float, list[float]]:
    """A plain asyncio worker: PriorityQueue, one call at a time, no preemption, no store."""
    queue: asyncio.PriorityQueue[tuple[int, int, str, float]] = asyncio.PriorityQueue()
    timeline = Timeline()
    start_latency: list[float] = []
    done = asyncio.Event()
    expected = [jobs]

    async def worker() -> None:
        while True:
            _, _, kind, submitted = await queue.get()
            timeline.starts.append(time.perf_counter())
            if kind == "internal":
                start_latency.append(time.perf_counter() - submitted)
            await asyncio.sleep(LONG_EXTERNAL_SECONDS if kind == "external-long" else JOB_SECONDS)
            timeline.ends.append(time.perf_counter())
            expected[0] -= 1
            if expected[0] == 0:
                done.set()

    task = asyncio.create_task(worker())
    for i in range(jobs):
        queue.put_nowait((1, i, "external", 0.0))
    await done.wait()
    gaps = timeline.gaps()
    span = timeline.ends[-1] - timeline.starts[0]
    for r in range(preempt_rounds):
        done.clear()
        expected[0] = 2
        queue.put_nowait((1, r, "external-long", 0.0))
        await asyncio.sleep(0.005 + (r % 10) * LONG_EXTERNAL_SECONDS / 10)
        queue.put_nowait((0, r, "internal", time.perf_counter()))
        await done.wait()
    task.cancel()
    return gaps, sum(gaps) / span, start_latency


def main() -> None:
    args = parse_args(__doc__ or "")
    jobs, rounds, base_rounds = (300, 50, 10) if args.quick else (2000, 200, 30)
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-", dir=Path.cwd()) as tmp:
        gaps, idle = gpulane_backlog(jobs, Path(tmp), prefetch=True)
        np_gaps, np_idle = gpulane_backlog(jobs, Path(tmp), prefetch=False)
        cancel_lat, start_lat = gpulane_preemption(rounds, Path(tmp))
    b_gaps, b_idle, b_start = asyncio.run(_baseline(jobs, base_rounds))
    ms = 1000.0
    results = {
        "gpulane.idle_gap_ms.p50": percentile(gaps, 50) * ms,
        "gpulane.idle_gap_ms.p99": percentile(gaps, 99) * ms,
        "gpulane.idle_fraction": idle,
        "gpulane.preempt_cancel_ms.p50": percentile(cancel_lat, 50) * ms,
        "gpulane.preempt_cancel_ms.p99": percentile(cancel_lat, 99) * ms,
        "gpulane.internal_start_ms.p50": percentile(start_lat, 50) * ms,
        "gpulane.internal_start_ms.p99": percentile(start_lat, 99) * ms,
        "gpulane_no_prefetch.idle_gap_ms.p50": percentile(np_gaps, 50) * ms,
        "gpulane_no_prefetch.idle_gap_ms.p99": percentile(np_gaps, 99) * ms,
        "gpulane_no_prefetch.idle_fraction": np_idle,
        "asyncio_pq.idle_gap_ms.p50": percentile(b_gaps, 50) * ms,
        "asyncio_pq.idle_gap_ms.p99": percentile(b_gaps, 99) * ms,
        "asyncio_pq.idle_fraction": b_idle,
        "asyncio_pq.internal_start_ms.p50": percentile(b_start, 50) * ms,
        "asyncio_pq.internal_start_ms.p99": percentile(b_start, 99) * ms,
    }
    print(f"{'figure':30} {'gpulane':>12} {'no prefetch':>12} {'asyncio PQ':>12}")
    for name in (
        "idle_gap_ms.p50",
        "idle_gap_ms.p99",
        "idle_fraction",
        "internal_start_ms.p50",
        "internal_start_ms.p99",
    ):
        off = results.get("gpulane_no_prefetch." + name)
        print(
            f"{name:30} {results['gpulane.' + name]:12.4f} "
            f"{'-' if off is None else f'{off:.4f}':>12} {results['asyncio_pq.' + name]:12.4f}"
        )
    print(
        f"{'preempt_cancel_ms.p50 / p99':30} {results['gpulane.preempt_cancel_ms.p50']:12.4f} "
        f"{results['gpulane.preempt_cancel_ms.p99']:12.4f}"
        "  (gpulane only: the baseline cannot preempt)"
    )
    print(
        f"jobs {jobs} x {JOB_SECONDS * 1000:.0f} ms; "
        f"preemption rounds {rounds} (baseline {base_rounds}); "
        f"gpulane store synchronous=FULL"
    )
    goals = [
        goal("gpulane.idle_gap_ms.p50", "<=", 0.5, results["gpulane.idle_gap_ms.p50"]),
        goal("gpulane.idle_gap_ms.p99", "<=", 3.0, results["gpulane.idle_gap_ms.p99"]),
        goal("gpulane.idle_fraction", "<=", 0.01, results["gpulane.idle_fraction"]),
        goal("gpulane.internal_start_ms.p99", "<=", 20.0, results["gpulane.internal_start_ms.p99"]),
    ]
    report("dispatch", results, goals, args.json)


if __name__ == "__main__":
    main()
