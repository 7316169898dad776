"""A deep queue: submit rate, dispatch gap, restart, memory per job, submits during a prune.

    .venv/bin/python tests/benchmarks/bench_scale.py [--quick] [--json]

gpulane on a fake GPU (calls that take real time) with its durable store
(synchronous=FULL), the system clock and no rate limits. Figures:

- submit rate while 8 threads fill the queue to the depth (100,000; quick 20,000), and
  the rate over the last tenth of it, at depth;
- the GPU's idle gap between consecutive jobs (p50, p99) with the queue at depth, against
  the same with a shallow queue (the jobs measured, 300, queued and nothing more);
- the first dispatch after a restart (a fresh process opens the file with the whole queue
  in it; from ``GpuLane.start`` to the first backend call), and when the reload is done;
- resident memory per queued job: the process's RSS growth over the queue, once in the
  process that took the submits (each job's Ticket dropped, its Sink kept, as a gateway's
  ``POST /jobs`` leaves it) and once in the restarted process after its reload;
- opening the deep file (``JobDB.open``: its check of each b-tree's edges) against the
  ``PRAGMA quick_check`` open ran before, on the same file, and the seconds per GB of each;
- a status read at depth (``count_by_state``, the store's kept counts, what ``CountJobs``
  answers) against the ``SELECT state, COUNT(*)`` it ran before;
- the worst submit latency (and p99) while the store's timer prunes terminal jobs (100,000;
  quick 20,000, with an answer of 1,000 characters each) against the same submitters
  without a prune.

Each job is a chat with a 60-character question, one of 3 models, one of 50 callers, a
quarter of them internal.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import ROOT, goal, parse_args, percentile, report

from actors import Config, GpuLane, SystemClock
from actors.runtime import ManualClock
from actors.stores import JobDB
from actors.testing import FakeCall, FakeGpu, quiesce
from protocol import Job, JobSpec, JobState, Lane, Limits, StoreSettings
from protocol.messages import InsertJob, StoreSnapshot, Transition

JOB_S = 0.010  # each measured call's run
GAP_JOBS = 300  # calls whose gaps are measured, at depth and shallow
SUBMITTERS = 8
PRUNE_AFTER_S = 3600.0
ANSWER = "x" * 1000


def spec(n: int) -> JobSpec:
    return JobSpec.chat(
        model=f"model-{n % 3}",
        messages=[{"role": "user", "content": f"Summarise ticket {n:>7}: printer on floor 3 jams"}],
        lane=Lane.INTERNAL if n % 4 == 0 else Lane.EXTERNAL,
        caller=f"caller-{n % 50}",
    )


def rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Timeline:
    """Start and end of each backend call, from the slot's worker thread."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.enough = threading.Event()
        self.wanted = 0

    def script(self, call: FakeCall) -> None:
        self.starts.append(time.perf_counter())
        time.sleep(JOB_S)
        self.ends.append(time.perf_counter())
        if len(self.ends) >= self.wanted:
            self.enough.set()
        call.finish("ok")

    def gaps(self, count: int) -> list[float]:
        return [s - e for s, e in zip(self.starts[1 : count + 1], self.ends[:count], strict=False)]


def config(path: Path, **store: Any) -> Config:
    return Config(store=StoreSettings(path=str(path), **store), limits=Limits.off())


def fill(lane: GpuLane, depth: int) -> tuple[float, float]:
    """Submit ``depth`` jobs from SUBMITTERS threads; submits/s overall and in the last tenth."""
    stamps: list[list[float]] = [[] for _ in range(SUBMITTERS)]

    def submitter(k: int) -> None:
        for n in range(k, depth, SUBMITTERS):
            lane.submit(spec(n), detach=True)  # the ticket is dropped; its sink is kept
            stamps[k].append(time.perf_counter())

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(SUBMITTERS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = sorted(t for times in stamps for t in times)
    tail = done[-(depth // 10) :]
    return depth / (done[-1] - start), (len(tail) - 1) / (tail[-1] - tail[0])


def gaps_at(lane: GpuLane, timeline: Timeline) -> list[float]:
    """Let GAP_JOBS + 1 calls run from the queue as it is, then pause; their idle gaps."""
    timeline.wanted = GAP_JOBS + 1
    lane.resume()
    assert timeline.enough.wait(120), "the calls did not run"
    lane.pause()
    return timeline.gaps(GAP_JOBS)


def shallow_gaps(tmp: Path) -> list[float]:
    timeline = Timeline()
    lane = GpuLane.start(
        config(tmp / "shallow.sqlite3"), gpu=FakeGpu(SystemClock(), timeline.script)
    )
    try:
        lane.pause()
        for n in range(GAP_JOBS + 1):
            lane.submit(spec(n), detach=True)
        return gaps_at(lane, timeline)
    finally:
        lane.stop()


def restart_child(path: str, depth: int) -> None:
    """In a fresh process: start on ``path``, time the first call and the reload, measure
    the RSS growth; print one JSON line."""
    first = threading.Event()
    at: list[float] = []

    def script(call: FakeCall) -> None:
        if not first.is_set():
            at.append(time.perf_counter())
            first.set()
        call.finish("ok")

    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    lane = GpuLane.start(config(Path(path)), gpu=FakeGpu(SystemClock(), script))
    try:
        assert first.wait(60), "no dispatch after the restart"
        lane.pause()
        quiesce(timeout=300)  # the reload's chunks are messages: quiet once it is done
        loaded = time.perf_counter()
        gc.collect()
        grown = rss_bytes() - before
        queued = lane.status()["queued"]
    finally:
        lane.stop()
    print(
        json.dumps(
            {
                "first_dispatch_s": at[0] - started,
                "reload_done_s": loaded - started,
                "bytes_per_job": grown / max(1, queued),
                "queued": queued,
                "depth": depth,
            }
        )
    )


def restart(path: Path, depth: int) -> dict[str, float]:
    """Run :func:`restart_child` in a fresh interpreter, so its RSS is its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--restart-child", str(path), str(depth)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=600,
    )
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def open_and_status(path: Path, reads: int = 200) -> dict[str, float]:
    """Open the file with the deep queue (best of 3) and read its counts per state; the
    same file's ``quick_check`` and ``GROUP BY`` count, what open and ``CountJobs`` ran
    before, measured on the open connection for comparison."""
    opens: list[float] = []
    for _ in range(3):
        started = time.perf_counter()
        db = JobDB.open(str(path), ManualClock(), synchronous="NORMAL")
        opens.append(time.perf_counter() - started)
        if len(opens) < 3:
            db.close()
    gb = path.stat().st_size / 1e9
    try:
        conn = db._conn
        started = time.perf_counter()
        conn.execute("PRAGMA quick_check").fetchall()
        quick_check = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(reads):
            db.count_by_state()
        kept = (time.perf_counter() - started) / reads
        started = time.perf_counter()
        for _ in range(reads // 20):
            conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        walked = (time.perf_counter() - started) / (reads // 20)
    finally:
        db.close()
    return {
        "file_mb": gb * 1000,
        "open_s": min(opens),
        "open_s.quick_check_before": quick_check,
        "open_s_per_gb.quick_check_before": quick_check / gb,
        "status_read_us": kept * 1e6,
        "status_read_us.group_by_before": walked * 1e6,
    }


def terminal_file(path: Path, count: int, ended_at: float) -> None:
    """A store file holding ``count`` succeeded jobs that ended at ``ended_at``."""
    db = JobDB.open(str(path), ManualClock(ended_at), synchronous="NORMAL")
    try:
        for start in range(0, count, 1000):
            inserts = iter([InsertJob(spec(n)) for n in range(start, min(count, start + 1000))])
            jobs = [j for j in db.write_batch(lambda: next(inserts, None)) if isinstance(j, Job)]  # noqa: B023
            for target, extra in (
                (JobState.LOADING, {}),
                (JobState.RUNNING, {}),
                (JobState.SUCCEEDED, {"result": ANSWER}),
            ):
                moves = iter([Transition(job.id, target, **extra) for job in jobs])
                db.write_batch(lambda: next(moves, None))  # noqa: B023
    finally:
        db.close()


def submit_latencies(lane: GpuLane, stop: threading.Event, into: list[float]) -> None:
    """Submit one job after another until ``stop``; each submit's latency into ``into``."""
    n = 0
    while not stop.is_set():
        began = time.perf_counter()
        lane.submit(spec(n), detach=True)
        into.append(time.perf_counter() - began)
        n += 1


def prune_latency(tmp: Path, count: int) -> dict[str, float]:
    """Submit latency from 4 threads for 2 s without a prune, then while the store's timer
    prunes ``count`` terminal jobs, ``store.prune_batch`` per turn of its mailbox.

    The lane runs on a manual clock (submit latencies are wall-clock all the same), so the
    jobs are young when it starts and the timer's prune finds them old when the test moves
    the clock on past ``prune_interval_s``.
    """
    path = tmp / "prune.sqlite3"
    ended = time.time()
    terminal_file(path, count, ended)
    clock = ManualClock(ended + 60)
    store = {"prune_after_s": PRUNE_AFTER_S, "prune_interval_s": PRUNE_AFTER_S}
    lane = GpuLane.start(config(path, **store), gpu=FakeGpu(clock), clock=clock)
    phases: dict[str, list[float]] = {"quiet": [], "pruning": []}
    took = 0.0
    try:
        lane.pause()
        for phase, latencies in phases.items():
            stop = threading.Event()
            threads = [
                threading.Thread(target=submit_latencies, args=(lane, stop, latencies))
                for _ in range(4)
            ]
            for thread in threads:
                thread.start()
            if phase == "quiet":
                time.sleep(2.0)
            else:
                began = time.perf_counter()
                clock.advance(2 * PRUNE_AFTER_S)  # the prune timer fires
                while lane.ref_for("store").ask(StoreSnapshot())["pruned"] < count:
                    time.sleep(0.005)
                took = time.perf_counter() - began
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        lane.stop()
    ms = 1000.0
    return {
        "prune.jobs": float(count),
        "prune.seconds": took,
        "prune.jobs_per_s": count / took,
        "submit_ms.quiet.p99": percentile(phases["quiet"], 99) * ms,
        "submit_ms.quiet.max": max(phases["quiet"]) * ms,
        "submit_ms.pruning.p99": percentile(phases["pruning"], 99) * ms,
        "submit_ms.pruning.max": max(phases["pruning"]) * ms,
        "submit_ms.pruning.count": float(len(phases["pruning"])),
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--restart-child":
        restart_child(sys.argv[2], int(sys.argv[3]))
        return
    args = parse_args(__doc__ or "")
    depth, pruned = (20_000, 20_000) if args.quick else (100_000, 100_000)
    results: dict[str, float] = {"depth": float(depth)}
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=Path.cwd()) as name:
        tmp = Path(name)
        timeline = Timeline()
        lane = GpuLane.start(
            config(tmp / "deep.sqlite3"), gpu=FakeGpu(SystemClock(), timeline.script)
        )
        try:
            lane.pause()
            gc.collect()
            before = rss_bytes()
            rate, rate_at_depth = fill(lane, depth)
            gc.collect()
            results["submits_per_s"] = rate
            results["submits_per_s.last_tenth"] = rate_at_depth
            results["memory.bytes_per_job.submitted"] = (rss_bytes() - before) / depth
            deep = gaps_at(lane, timeline)
        finally:
            lane.stop()
        shallow = shallow_gaps(tmp)
        after = restart(tmp / "deep.sqlite3", depth)
        results.update(open_and_status(tmp / "deep.sqlite3"))
        results.update(prune_latency(tmp, pruned))
    ms = 1000.0
    for name, gaps in (("deep", deep), ("shallow", shallow)):
        results[f"gap_ms.{name}.p50"] = percentile(gaps, 50) * ms
        results[f"gap_ms.{name}.p99"] = percentile(gaps, 99) * ms
    for q in ("p50", "p99"):
        results[f"ratio.gap_deep_vs_shallow.{q}"] = (
            results[f"gap_ms.deep.{q}"] / results[f"gap_ms.shallow.{q}"]
        )
    results["restart.first_dispatch_s"] = after["first_dispatch_s"]
    results["restart.reload_done_s"] = after["reload_done_s"]
    results["memory.bytes_per_job.restarted"] = after["bytes_per_job"]
    worst_memory = max(
        results["memory.bytes_per_job.submitted"], results["memory.bytes_per_job.restarted"]
    )
    print(f"depth {depth:,} jobs; calls of {JOB_S * ms:.0f} ms; store synchronous=FULL")
    for name, value in results.items():
        print(f"  {name:40} {value:14.3f}")
    goals = [
        goal("ratio.gap_deep_vs_shallow.p50", "<=", 2.0, results["ratio.gap_deep_vs_shallow.p50"]),
        goal("ratio.gap_deep_vs_shallow.p99", "<=", 2.0, results["ratio.gap_deep_vs_shallow.p99"]),
        goal("restart.first_dispatch_s", "<=", 1.0, results["restart.first_dispatch_s"]),
        goal("memory.bytes_per_job.worst", "<=", 1500, worst_memory),
    ]
    report("scale", results, goals, args.json)


if __name__ == "__main__":
    main()
