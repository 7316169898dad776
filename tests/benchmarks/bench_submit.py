"""Durable submits per second and submit latency: gpulane's JobStore against its peers.

Each submitter is a thread doing one submit at a time and waiting for it to be
durable. Every system stores the same job (a chat spec) in SQLite in WAL mode with
``synchronous=FULL`` in a fresh file on disk:

- gpulane: ``ask(InsertJob(spec))`` to the JobStore actor (group commit);
- raw sqlite3: one connection shared under a lock, one INSERT + COMMIT per job,
  same row shape (ULID, indexed columns, spec JSON);
- huey: ``SqliteHuey(fsync=True)``, enqueueing a task that carries the spec;
- persist-queue: ``SQLiteAckQueue(auto_commit=True, multithreading=True)``, put().

Usage: bench_submit.py [--quick] [--json]   (see /work/shared/BENCHMARKS.md)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import structlog
from huey import SqliteHuey
from persistqueue import SQLiteAckQueue
from ulid import ULID

from actors.job_store import JobStore
from actors.runtime import SystemClock
from protocol import JobSpec, Lane, StoreSettings
from protocol.messages import InsertJob, StoreSnapshot

Submit = Callable[[], object]
SYSTEMS = ("gpulane", "raw_sqlite", "huey", "persist_queue")
PEERS = ("huey", "persist_queue")
SUBMITTERS = (1, 8)

SPEC = JobSpec.chat(
    model="llama3.2",
    messages=[
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Summarise the plot of Hamlet in two sentences."},
    ],
    lane=Lane.EXTERNAL,
    caller="bench",
    options={"num_ctx": 4096, "temperature": 0.2},
)
PAYLOAD = SPEC.to_dict()


# --- the systems ------------------------------------------------------------------------


@contextmanager
def gpulane(directory: Path) -> Iterator[tuple[Submit, Callable[[], str]]]:
    """The JobStore actor; the note reports its average batch size."""
    store = JobStore.start(StoreSettings(path=str(directory / "gpulane.sqlite3")), SystemClock())

    def note() -> str:
        snap = store.ask(StoreSnapshot())
        return f"{snap['writes'] / max(1, snap['commits']):.1f} writes/commit"

    try:
        yield (lambda: store.ask(InsertJob(SPEC))), note
    finally:
        store.stop()


@contextmanager
def raw_sqlite(directory: Path) -> Iterator[tuple[Submit, Callable[[], str]]]:
    """One commit per job through one shared connection: what group commit saves."""
    conn = sqlite3.connect(
        str(directory / "raw.sqlite3"), isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
        "state TEXT NOT NULL, lane TEXT NOT NULL, caller TEXT NOT NULL, model TEXT NOT NULL, "
        "priority INTEGER NOT NULL, spec TEXT NOT NULL, created_at REAL, updated_at REAL)"
    )
    conn.execute("CREATE INDEX jobs_by_state ON jobs (state, seq)")
    conn.execute("CREATE INDEX jobs_by_caller ON jobs (caller, seq)")
    lock = threading.Lock()

    def submit() -> None:
        now = time.time()
        row = (
            str(ULID.from_timestamp(now)),
            SPEC.lane.value,
            SPEC.caller,
            SPEC.model,
            int(SPEC.priority),
            json.dumps(SPEC.to_dict()),
            now,
            now,
        )
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO jobs (id, state, lane, caller, model, priority, spec, created_at, "
                "updated_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            conn.execute("COMMIT")

    try:
        yield submit, lambda: "1 write/commit"
    finally:
        conn.close()


@contextmanager
def huey(directory: Path) -> Iterator[tuple[Submit, Callable[[], str]]]:
    """huey's SQLite storage with fsync on: each enqueue is one durable commit."""
    queue = SqliteHuey(name="bench", filename=str(directory / "huey.sqlite3"), fsync=True)

    @queue.task()
    def run_job(spec: dict[str, Any]) -> None:
        """Never runs: only enqueueing is measured."""

    try:
        yield (lambda: run_job(PAYLOAD)), lambda: "1 write/commit"
    finally:
        queue.storage.close()


@contextmanager
def persist_queue(directory: Path) -> Iterator[tuple[Submit, Callable[[], str]]]:
    """persist-queue's acknowledging SQLite queue, committing every put."""
    queue = SQLiteAckQueue(str(directory / "pq"), auto_commit=True, multithreading=True)
    queue._putter.execute("PRAGMA synchronous = FULL")  # its default, made explicit
    try:
        yield (lambda: queue.put(PAYLOAD)), lambda: "1 write/commit"
    finally:
        queue.close()


FACTORIES = {
    "gpulane": gpulane,
    "raw_sqlite": raw_sqlite,
    "huey": huey,
    "persist_queue": persist_queue,
}


# --- measuring --------------------------------------------------------------------------


def measure(submit: Submit, submitters: int, total: int) -> tuple[float, list[float]]:
    """Run ``total`` submits over ``submitters`` threads; return submits/s and latencies."""
    per_thread = total // submitters
    latencies: list[list[float]] = [[] for _ in range(submitters)]
    start = threading.Barrier(submitters + 1)

    def work(mine: list[float]) -> None:
        start.wait()
        clock = time.perf_counter
        for _ in range(per_thread):
            began = clock()
            submit()
            mine.append(clock() - began)

    threads = [threading.Thread(target=work, args=(lat,)) for lat in latencies]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = [x for lat in latencies for x in lat]
    return len(flat) / elapsed, flat


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_dir() -> tuple[Path, str]:
    """A fresh directory on a real disk (not tmpfs), and the filesystem it is on."""
    base = Path(os.environ.get("GPULANE_BENCH_DIR", tempfile.gettempdir()))
    fs = filesystem_of(base)
    if fs in ("tmpfs", "ramfs"):
        base = Path(__file__).resolve().parents[2]
        fs = filesystem_of(base)
    return Path(tempfile.mkdtemp(prefix="gpulane-bench-", dir=base)), fs


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path``, from /proc/mounts (Linux)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and target.startswith(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def run(quick: bool) -> dict[str, Any]:
    """Measure every system at every submitter count; return the report."""
    totals = {1: 2000, 8: 16000} if quick else {1: 5000, 8: 40000}
    rounds = 1 if quick else 3
    results: dict[str, float] = {}
    notes: dict[str, str] = {}
    directory, fs = bench_dir()
    try:
        for submitters in SUBMITTERS:
            for system in SYSTEMS:
                rates, p50s, p99s = [], [], []
                for round_ in range(rounds):
                    place = directory / f"{system}-{submitters}-{round_}"
                    place.mkdir()
                    with FACTORIES[system](place) as (submit, note):
                        for _ in range(50):  # warm up: tables, caches, threads
                            submit()
                        rate, latencies = measure(submit, submitters, totals[submitters])
                        notes[f"{system}.{submitters}"] = note()
                    rates.append(rate)
                    p50s.append(percentile(latencies, 0.50) * 1e3)
                    p99s.append(percentile(latencies, 0.99) * 1e3)
                results[f"{system}.submits_per_s.{submitters}"] = round(statistics.median(rates), 1)
                results[f"{system}.p50_ms.{submitters}"] = round(statistics.median(p50s), 3)
                results[f"{system}.p99_ms.{submitters}"] = round(statistics.median(p99s), 3)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    best_peer = max(results[f"{p}.submits_per_s.8"] for p in PEERS)
    results["ratio.gpulane_vs_best_peer"] = round(results["gpulane.submits_per_s.8"] / best_peer, 2)
    results["ratio.gpulane_vs_raw_sqlite.8"] = round(
        results["gpulane.submits_per_s.8"] / results["raw_sqlite.submits_per_s.8"], 2
    )
    goals = [
        goal("gpulane.submits_per_s.8", ">=", 10000, results),
        goal("gpulane.p99_ms.8", "<=", 10, results),
        goal("ratio.gpulane_vs_best_peer", ">=", 2.0, results),
    ]
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "filesystem": fs,
    }
    return {
        "bench": "submit",
        "machine": machine,
        "results": results,
        "goals": goals,
        "notes": notes,
        "rounds": rounds,
        "submits": totals,
    }


def goal(metric: str, op: str, target: float, results: dict[str, float]) -> dict[str, Any]:
    return {"metric": metric, "op": op, "goal": target, "value": results[metric]}


def met(item: dict[str, Any]) -> bool:
    value, target = item["value"], item["goal"]
    return bool(value >= target if item["op"] == ">=" else value <= target)


def table(report: dict[str, Any]) -> str:
    """The readable form: one row per system and submitter count, then the goals."""
    r = report["results"]
    lines = [
        (
            f"submit benchmark — {report['machine']}, median of {report['rounds']} round(s), "
            f"submits per round {report['submits']}"
        ),
        "",
        (
            f"{'system':<14} {'subm.':>5} {'submits/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'vs gpulane':>10}  batching"
        ),
    ]
    for submitters in SUBMITTERS:
        ours = r[f"gpulane.submits_per_s.{submitters}"]
        for system in SYSTEMS:
            rate = r[f"{system}.submits_per_s.{submitters}"]
            lines.append(
                f"{system:<14} {submitters:>5} {rate:>10,.0f} "
                f"{r[f'{system}.p50_ms.{submitters}']:>8.2f} "
                f"{r[f'{system}.p99_ms.{submitters}']:>8.2f} {rate / ours:>9.2f}x  "
                f"{report['notes'][f'{system}.{submitters}']}"
            )
    lines.append("")
    for item in report["goals"]:
        verdict = "met" if met(item) else "NOT met"
        lines.append(
            f"goal {item['metric']} {item['op']} {item['goal']}: {item['value']} {verdict}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, under a minute")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    report = run(args.quick)
    print(table(report))
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
