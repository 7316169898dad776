"""One actor message round trip: gpulane's mailbox and ask future against pykka's defaults.

Every job costs about fifteen actor messages (docs/benchmarks.md), so the price of one
message is a floor under every other figure. Side by side in the same run, an echo
actor answers ``ask`` one at a time from one thread:

- gpulane: a SupervisedActor (actors.runtime.Mailbox, actors.runtime.LatchFuture);
- pykka: a plain pykka.ThreadingActor (queue.Queue inbox, ThreadingFuture);
- floor: a bare thread answering through a queue.SimpleQueue and a raw lock, with no
  actor library at all.

CPU time is the process's over the run divided by the asks. No goal of its own.

Usage: bench_ask.py [--quick] [--json]   (see /work/shared/BENCHMARKS.md)
"""

from __future__ import annotations

import _thread
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pykka
from _common import parse_args, percentile, report

from actors.runtime import SupervisedActor

Ask = Callable[[], object]


class GpulaneEcho(SupervisedActor):
    """Answers every message with itself."""

    def on_receive(self, message: Any) -> Any:
        return message


class PykkaEcho(pykka.ThreadingActor):
    """Answers every message with itself."""

    def on_receive(self, message: Any) -> Any:
        return message


@contextmanager
def actor(cls: type[pykka.ThreadingActor]) -> Iterator[Ask]:
    """An ask to a started echo actor of ``cls``."""
    ref = cls.start()
    try:
        yield lambda: ref.ask(1)
    finally:
        ref.stop()


@contextmanager
def floor() -> Iterator[Ask]:
    """The same round trip with no actor library: a SimpleQueue and a raw lock."""
    inbox: queue.SimpleQueue[tuple[int, Any, list[int]] | None] = queue.SimpleQueue()

    def serve() -> None:
        while (item := inbox.get()) is not None:
            value, done, box = item
            box.append(value)
            done.release()

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    def ask() -> int:
        done = _thread.allocate_lock()
        done.acquire()
        box: list[int] = []
        inbox.put((1, done, box))
        done.acquire()
        return box[0]

    try:
        yield ask
    finally:
        inbox.put(None)
        server.join()


SYSTEMS: dict[str, Callable[[], Any]] = {
    "gpulane": lambda: actor(GpulaneEcho),
    "pykka": lambda: actor(PykkaEcho),
    "floor": floor,
}


def measure(ask: Ask, count: int) -> tuple[float, list[float]]:
    """CPU microseconds per ask over ``count`` asks, and each ask's wall time."""
    for _ in range(count // 10):
        ask()  # warm-up
    latencies = []
    cpu = time.process_time()
    for _ in range(count):
        began = time.perf_counter()
        ask()
        latencies.append(time.perf_counter() - began)
    return (time.process_time() - cpu) / count * 1e6, latencies


def main() -> None:
    args = parse_args(__doc__ or "")
    count, rounds = (5_000, 3) if args.quick else (30_000, 5)
    cpu: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    wall: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    for _ in range(rounds):  # interleaved, so drift on the machine hits all three alike
        for name, make in SYSTEMS.items():
            with make() as ask:
                used, latencies = measure(ask, count)
            cpu[name].append(used)
            wall[name].append(percentile(latencies, 50) * 1e6)
    results: dict[str, float] = {}
    print(f"ask round trip, {count} asks x {rounds} rounds (medians of the rounds)\n")
    print(f"{'system':10} {'cpu us/ask':>12} {'wall p50 us':>12} {'cpu vs pykka':>13}")
    pykka_cpu = sorted(cpu["pykka"])[rounds // 2]
    for name in SYSTEMS:
        used = sorted(cpu[name])[rounds // 2]
        p50 = sorted(wall[name])[rounds // 2]
        results[f"{name}.cpu_us_per_ask"] = used
        results[f"{name}.wall_us.p50"] = p50
        print(f"{name:10} {used:12.1f} {p50:12.1f} {used / pykka_cpu:12.2f}x")
    results["ratio.gpulane_cpu_vs_pykka"] = results["gpulane.cpu_us_per_ask"] / pykka_cpu
    report("ask", results, [], args.json)


if __name__ == "__main__":
    main()
