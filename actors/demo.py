"""``gpulane demo`` / ``make run``: a bot and external callers share one simulated GPU.

A simulated Ollama server (real HTTP on loopback, realistic load time, time to
first token and tokens per second) stands in for the GPU. An internal bot submits
chained and urgent work; external callers stream answers across three models; a
few injected backend faults show the retries. A live terminal view shows the
queue and the GPU; a summary closes the run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import FaultKind, SimulatedOllama
from actors.config import Config
from actors.logs import configure_logging
from actors.system import GpuLane
from protocol import (
    ActiveHours,
    GpulaneError,
    Job,
    JobSpec,
    JobState,
    Lane,
    Priority,
    RetryPolicy,
    SchedulingPolicy,
    StoreSettings,
)

__all__ = ["main", "run_demo"]

CHAT_MODELS = ("llama3.2", "qwen2.5:7b", "mistral")
TOPICS = ("the weather", "a haiku", "rust vs go", "sourdough", "black holes", "tax forms", "chess")


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class _Workload:
    """The bot and the external callers, each on its own thread, until ``stop`` is set."""

    def __init__(self, lane: GpuLane, rng: random.Random, stop: threading.Event) -> None:
        self.lane = lane
        self.rng = rng
        self.stop = stop
        self.job_ids: list[str] = []
        self._lock = threading.Lock()

    def _submit(self, spec: JobSpec) -> None:
        try:
            ticket = self.lane.submit(spec, detach=True)
        except GpulaneError:
            return
        with self._lock:
            self.job_ids.append(ticket.job_id)

    def bot(self) -> None:
        step = 0
        while not self.stop.wait(self.rng.uniform(2.0, 4.0)):
            step += 1
            chain = f"bot-task-{step}"
            priority = Priority.URGENT if step % 4 == 0 else Priority.HIGH
            for part in ("plan", "act"):
                self._submit(
                    JobSpec.chat(
                        model="llama3.2",
                        messages=_ask(f"bot {part} {step}"),
                        lane=Lane.INTERNAL,
                        priority=priority,
                        caller="bot",
                        chain_id=chain,
                        task_type=part,
                    )
                )

    def caller(self, name: str) -> None:
        while not self.stop.wait(self.rng.uniform(1.0, 3.0)):
            model = self.rng.choices(CHAT_MODELS, weights=(6, 2, 2))[0]
            priority = self.rng.choices(list(Priority), weights=(2, 6, 2, 0))[0]
            self._submit(
                JobSpec.chat(
                    model=model,
                    messages=_ask(f"{name} asks about {self.rng.choice(TOPICS)}"),
                    lane=Lane.EXTERNAL,
                    priority=priority,
                    caller=name,
                    stream=True,
                )
            )


def _view(lane: GpuLane, elapsed: float, total: float) -> Group:
    status = lane.status()
    gpu = Table(title="GPU", expand=True)
    for column in ("slot", "job", "model", "since"):
        gpu.add_column(column)
    for slot_id, slot in status["slots"].items():
        since = "" if slot["since"] is None else f"{lane.clock.now() - slot['since']:.1f}s"
        gpu.add_row(slot_id, slot["job_id"] or "idle", slot["model_key"] or "-", since)
    queue = Table(title="Queue (lane.priority)", expand=True)
    queue.add_column("class")
    queue.add_column("depth", justify="right")
    for key, depth in status["depth"].items():
        queue.add_row(key, str(depth), style="bold" if depth else "dim")
    jobs = status["jobs"]
    counters = status["counters"]
    summary = (
        f"resident: {', '.join(status['resident_models']) or '-'}   "
        f"succeeded {jobs['succeeded']}  failed {jobs['failed']}  "
        f"running {jobs['running'] + jobs['loading']}  "
        f"queued {jobs['queued']}   preemptions {counters['preemptions']}   "
        f"elapsed {elapsed:.0f}/{total:.0f}s"
    )
    return Group(gpu, queue, Panel(summary))


def _unfinished(lane: GpuLane) -> int:
    jobs = lane.status()["jobs"]
    return int(jobs["queued"] + jobs["loading"] + jobs["running"])


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarise(jobs: Sequence[Job]) -> Mapping[str, Any]:
    """Jobs per lane, p50/p99 wait per lane (submit to first start), preemptions, retries."""
    out: dict[str, Any] = {}
    for lane in Lane:
        mine = [j for j in jobs if j.spec.lane is lane]
        waits = sorted(j.wait_seconds for j in mine if j.wait_seconds is not None)
        out[lane.value] = {
            "jobs": len(mine),
            "succeeded": sum(j.state is JobState.SUCCEEDED for j in mine),
            "failed": sum(j.state is JobState.FAILED for j in mine),
            "wait_p50_s": _percentile(waits, 50),
            "wait_p99_s": _percentile(waits, 99),
        }
    out["preemptions"] = sum(j.preemptions for j in jobs)
    out["retries"] = sum(j.attempts for j in jobs if j.state is JobState.SUCCEEDED)
    return out


def run_demo(
    seconds: float, speed: float, callers: int, seed: int, console: Console
) -> Mapping[str, Any]:
    """Run the demo for ``seconds``, then let the queue drain; returns the summary."""
    rng = random.Random(seed)
    with (
        tempfile.TemporaryDirectory(prefix="gpulane-demo-") as tmp,
        SimulatedOllama(speed=speed) as sim,
    ):
        backend = OllamaBackend(sim.url)
        config = Config(
            store=StoreSettings(path=str(Path(tmp) / "demo.sqlite3")),
            scheduling=SchedulingPolicy(
                active_hours=ActiveHours.parse("00:00-23:59"), max_swap_defer_s=8.0
            ),
            retry=RetryPolicy(base_delay_s=0.5, max_delay_s=4.0),
        )
        lane = GpuLane.start(config, backend=backend)
        stop = threading.Event()
        work = _Workload(lane, rng, stop)
        threads = [threading.Thread(target=work.bot, name="demo-bot")] + [
            threading.Thread(target=work.caller, args=(f"caller-{i}",), name=f"demo-caller-{i}")
            for i in range(callers)
        ]
        try:
            for thread in threads:
                thread.start()
            started = time.monotonic()
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while (elapsed := time.monotonic() - started) < seconds:
                    if rng.random() < 0.03:
                        sim.inject(
                            rng.choice(
                                (FaultKind.SERVER_ERROR, FaultKind.BUSY, FaultKind.CUT_STREAM)
                            ),
                            after_chunks=3,
                        )
                    live.update(_view(lane, elapsed, seconds))
                    time.sleep(0.25)
                stop.set()
                for thread in threads:
                    thread.join()
                sim.clear_faults()
                deadline = time.monotonic() + 60
                while _unfinished(lane) and time.monotonic() < deadline:
                    live.update(_view(lane, seconds, seconds))
                    time.sleep(0.25)
            jobs = [lane.get(job_id) for job_id in work.job_ids]
        finally:
            stop.set()
            lane.stop()
            backend.close()
    summary = summarise(jobs)
    _print_summary(summary, console)
    return summary


def _print_summary(summary: Mapping[str, Any], console: Console) -> None:
    console.print()
    table = Table(title="gpulane demo: summary")
    for column in ("lane", "jobs", "succeeded", "failed", "wait p50", "wait p99"):
        table.add_column(column, justify="right")
    for lane in Lane:
        row = summary[lane.value]
        table.add_row(
            lane.value,
            str(row["jobs"]),
            str(row["succeeded"]),
            str(row["failed"]),
            f"{row['wait_p50_s']:.2f}s",
            f"{row['wait_p99_s']:.2f}s",
        )
    console.print(table)
    console.print(f"preemptions: {summary['preemptions']}   retries: {summary['retries']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gpulane demo``."""
    parser = argparse.ArgumentParser(prog="gpulane demo", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="how long the callers submit work (default 30)"
    )
    parser.add_argument(
        "--speed", type=float, default=3.0, help="simulated GPU speed-up factor (default 3)"
    )
    parser.add_argument("--callers", type=int, default=4, help="external callers (default 4)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = parser.parse_args(argv)
    configure_logging("warning")
    run_demo(args.seconds, args.speed, args.callers, args.seed, Console())
    return 0
