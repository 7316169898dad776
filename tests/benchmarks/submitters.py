"""Submitter threads for bench_submit.py, shared with pg_peers.py (which runs in the `bench`
extra's interpreter, so this module needs nothing but the standard library)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

WARM_UP = 50  # submits before measuring: tables, caches, connections, threads

Submit = Callable[[], object]


def warm_up(submit: Submit) -> None:
    """A few submits from this thread, not measured."""
    for _ in range(WARM_UP):
        submit()


def measure(submits: Sequence[Submit], total: int) -> tuple[float, list[float]]:
    """Run ``total`` submits over one thread per item of ``submits`` (the same callable
    repeated, or one per thread where each holds a connection of its own), each thread doing
    one submit at a time; return submits per second and every submit's latency in seconds."""
    per_thread = total // len(submits)
    latencies: list[list[float]] = [[] for _ in submits]
    start = threading.Barrier(len(submits) + 1)

    def work(submit: Submit, mine: list[float]) -> None:
        start.wait()
        clock = time.perf_counter
        for _ in range(per_thread):
            began = clock()
            submit()
            mine.append(clock() - began)

    threads = [
        threading.Thread(target=work, args=pair) for pair in zip(submits, latencies, strict=True)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = [x for lat in latencies for x in lat]
    return len(flat) / elapsed, flat
