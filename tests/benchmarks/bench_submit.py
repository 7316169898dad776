"""Durable submits per second and submit latency: gpulane's JobStore against its peers,
on SQLite and on PostgreSQL.

Each submitter is a thread doing one submit at a time and waiting for it to be durable
(committed). Every system stores the same job (a chat spec). On SQLite, each writes it in
WAL mode with ``synchronous=FULL`` to a fresh file on disk:

- gpulane: ``ask(InsertJob(spec))`` to the JobStore actor (group commit);
- raw sqlite3: one connection shared under a lock, one INSERT + COMMIT per job,
  same row shape (ULID, indexed columns, spec JSON);
- huey: ``SqliteHuey(fsync=True)``, enqueueing a task that carries the spec;
- persist-queue: ``SQLiteAckQueue(auto_commit=True, multithreading=True)``, put().

On PostgreSQL (the tests' server, ``tests/kits/postgres_kit.py``: ``make postgres`` starts
it), each system gets a fresh database of its own on the same server, in every round, the
systems' rounds taken in turn:

- gpulane: ``ask(InsertJob(spec))`` to a JobStore with ``StoreSettings(url=...)`` fenced by
  the lease, as a leader's store is (every write runs the fence check of the lease row);
- raw psycopg: a connection per submitter in autocommit, one INSERT per job, the raw sqlite3
  loop's row (PostgreSQL alone: no group commit of ours, no NOTIFY);
- procrastinate and pgqueuer: their synchronous enqueue with the spec's JSON as payload,
  run by pg_peers.py (which says what each call does) in the `bench` extra's interpreter,
  ``.venv/bench/bin/python``, since the main environment does not carry them.

- gpulane, two gateways: two ``gpulane serve`` processes on the database (one leads, one
  follows and forwards to it; ``tests/kits/cluster_kit.py``), dispatch paused so the jobs
  only queue, each submitter a thread with an HTTP client of its own posting ``POST /jobs``
  to the gateways in turn (half of them through the follower): what a client of the
  gateways sees, HTTP and the forward included.

Where no PostgreSQL server answers, its rows are skipped with a line naming the server; where
the `bench` environment is missing, the peers' rows are.

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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kits"))  # postgres_kit

import httpx
import psycopg
import pytest
import structlog
from cluster_kit import running_cluster
from huey import SqliteHuey
from persistqueue import SQLiteAckQueue
from postgres_kit import fresh_database, require_postgres
from submitters import Submit, measure, warm_up
from ulid import ULID

from actors.job_store import JobStore
from actors.lease import session_name, try_acquire
from actors.runtime import SystemClock
from actors.stores._pg_schema import migrate
from protocol import JobSpec, Lane, StoreSettings
from protocol.cluster import LeaseHold
from protocol.messages import InsertJob, StoreSnapshot

ROOT = Path(__file__).resolve().parents[2]
Note = Callable[[], str]
SYSTEMS = ("gpulane", "raw_sqlite", "huey", "persist_queue")
PEERS = ("huey", "persist_queue")
PG_SYSTEMS = ("gpulane_pg", "gpulane_2gw", "raw_pg", "procrastinate", "pgqueuer")
PG_PEERS = ("procrastinate", "pgqueuer")  # the peers; raw_pg is PostgreSQL alone
SUBMITTERS = (1, 8)
# Submits per round, by submitter count, in a --quick run (True) and a full one (False).
SQLITE_SUBMITS = {True: {1: 2000, 8: 16000}, False: {1: 5000, 8: 40000}}
PG_SUBMITS = {True: {1: 500, 8: 4000}, False: {1: 3000, 8: 24000}}
BENCH_PYTHON = ROOT / ".venv" / "bench" / "bin" / "python"  # the `bench` extra (make bench)
PG_PEERS_SCRIPT = Path(__file__).with_name("pg_peers.py")

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Summarise the plot of Hamlet in two sentences."},
]
OPTIONS = {"num_ctx": 4096, "temperature": 0.2}
SPEC = JobSpec.chat(
    model="llama3.2", messages=MESSAGES, lane=Lane.EXTERNAL, caller="bench", options=OPTIONS
)
# The simulated model the two gateways' server offers (their dispatch is paused).
CLUSTER_MODEL = '{"load_seconds": 0.05, "first_token_seconds": 0.0, "tokens_per_second": 400}'
PAYLOAD = SPEC.to_dict()


# --- the systems ------------------------------------------------------------------------


@contextmanager
def gpulane(directory: Path) -> Iterator[tuple[Submit, Note]]:
    """The JobStore actor on SQLite."""
    with job_store(StoreSettings(path=str(directory / "gpulane.sqlite3"))) as opened:
        yield opened


@contextmanager
def job_store(
    settings: StoreSettings, lease: LeaseHold | None = None
) -> Iterator[tuple[Submit, Note]]:
    """The JobStore actor with ``settings`` (fenced by ``lease``, a leader's); the note
    reports its average batch size."""
    store = JobStore.start(settings, SystemClock(), lease=lease)

    def note() -> str:
        snap = store.ask(StoreSnapshot())
        return f"{snap['writes'] / max(1, snap['commits']):.1f} writes/commit"

    try:
        yield (lambda: store.ask(InsertJob(SPEC))), note
    finally:
        store.stop()


@contextmanager
def raw_sqlite(directory: Path) -> Iterator[tuple[Submit, Note]]:
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
    insert = RAW_INSERT.replace("%s", "?")

    def submit() -> None:
        row = raw_row()
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(insert, row)
            conn.execute("COMMIT")

    try:
        yield submit, lambda: "1 write/commit"
    finally:
        conn.close()


def raw_row() -> tuple[Any, ...]:
    """A new job's row for the raw loops (``RAW_INSERT``): its ULID, its indexed columns, the
    spec's JSON, the times."""
    now = time.time()
    return (str(ULID.from_timestamp(now)), SPEC.lane.value, SPEC.caller, SPEC.model,
            int(SPEC.priority), json.dumps(SPEC.to_dict()), now, now)  # fmt: skip


@contextmanager
def raw_pg(url: str, submitters: int) -> Iterator[tuple[list[Submit], Note]]:
    """A connection per submitter in autocommit, one INSERT per job, the raw sqlite3 loop's
    row: what PostgreSQL does alone (it shares a WAL flush among the commits that wait for
    one), with no group commit of ours and no NOTIFY."""
    conns = [psycopg.connect(url, autocommit=True) for _ in range(submitters)]
    conns[0].execute(
        "CREATE TABLE jobs (seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
        "state TEXT NOT NULL, lane TEXT NOT NULL, caller TEXT NOT NULL, model TEXT NOT NULL, "
        "priority INTEGER NOT NULL, spec TEXT NOT NULL, created_at DOUBLE PRECISION, "
        "updated_at DOUBLE PRECISION)"
    )
    conns[0].execute("CREATE INDEX jobs_by_state ON jobs (state, seq)")
    conns[0].execute("CREATE INDEX jobs_by_caller ON jobs (caller, seq)")

    def inserter(conn: psycopg.Connection[Any]) -> Submit:
        return lambda: conn.execute(RAW_INSERT, raw_row())

    try:
        yield [inserter(conn) for conn in conns], lambda: "1 write/commit"
    finally:
        for conn in conns:
            conn.close()


@contextmanager
def pg_store(url: str, submitters: int) -> Iterator[tuple[list[Submit], Note]]:
    """The JobStore actor on the PostgreSQL database at ``url`` as a leader's: the lease
    taken first, so every write runs the schema's fence check of the lease row."""
    with psycopg.connect(
        url, autocommit=True, application_name=session_name("lease", "bench#1")
    ) as lease_conn:
        with lease_conn.transaction():
            migrate(lease_conn, "bench")
        hold = try_acquire(lease_conn, "bench#1", "bench", "http://127.0.0.1:1", 600.0)
        assert hold is not None, "a fresh database's lease is free"
        with job_store(StoreSettings(url=url), hold) as (submit, note):
            yield [submit] * submitters, note


@contextmanager
def huey(directory: Path) -> Iterator[tuple[Submit, Note]]:
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
def persist_queue(directory: Path) -> Iterator[tuple[Submit, Note]]:
    """persist-queue's acknowledging SQLite queue, committing every put."""
    queue = SQLiteAckQueue(str(directory / "pq"), auto_commit=True, multithreading=True)
    queue._putter.execute("PRAGMA synchronous = FULL")  # its default, made explicit
    try:
        yield (lambda: queue.put(PAYLOAD)), lambda: "1 write/commit"
    finally:
        queue.close()


RAW_INSERT = (
    "INSERT INTO jobs (id, state, lane, caller, model, priority, spec, created_at, updated_at) "
    "VALUES (%s, 'queued', %s, %s, %s, %s, %s, %s, %s)"
)
FACTORIES = {
    "gpulane": gpulane,
    "raw_sqlite": raw_sqlite,
    "huey": huey,
    "persist_queue": persist_queue,
}


@contextmanager
def two_gateways(url: str, submitters: int) -> Iterator[tuple[list[Submit], Note]]:
    """Two ``gpulane serve`` on ``url``, dispatch paused; a client per submitter posting
    ``POST /jobs`` to the gateways in turn (the follower forwards to the leader)."""
    body = {"model": SPEC.model, "messages": MESSAGES, "options": OPTIONS}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp), url, CLUSTER_MODEL, lease_s=3.0) as cluster,
    ):
        leader = cluster.leader()
        assert httpx.post(leader.url + "/admin/pause", timeout=10).status_code == 200
        clients = [
            httpx.Client(base_url=cluster.gateways[n % 2].url, timeout=30)
            for n in range(submitters)
        ]

        def poster(client: httpx.Client) -> Submit:
            def submit() -> None:
                answer = client.post("/jobs", json=body)
                if answer.status_code != 202:
                    raise SystemExit(f"POST /jobs answered {answer.status_code}: {answer.text}")

            return submit

        try:
            yield [poster(c) for c in clients], lambda: f"{min(submitters, 2)} gateway(s), HTTP"
        finally:
            for client in clients:
                client.close()


PG_IN_PROCESS = {"gpulane_pg": pg_store, "gpulane_2gw": two_gateways, "raw_pg": raw_pg}


# --- measuring --------------------------------------------------------------------------


def run_peer(system: str, url: str, submitters: int, total: int) -> tuple[float, list[float]]:
    """One round of a PostgreSQL peer in pg_peers.py, on the fresh database at ``url``."""
    done = subprocess.run(
        [str(BENCH_PYTHON), str(PG_PEERS_SCRIPT), system, str(submitters), str(total)],
        input=json.dumps({"url": url, "spec": PAYLOAD}) + "\n",
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{system} failed in {PG_PEERS_SCRIPT.name}:\n{done.stderr[-3000:]}")
    answer = json.loads(done.stdout.splitlines()[-1])
    return answer["submits_per_s"], answer["latencies_s"]


def peer_versions(skipped: list[str]) -> dict[str, str]:
    """The PostgreSQL peers' versions, or none (and why, in ``skipped``) where the `bench`
    environment cannot run them."""
    why = f"{BENCH_PYTHON} is missing"
    if BENCH_PYTHON.exists():
        done = subprocess.run(
            [str(BENCH_PYTHON), str(PG_PEERS_SCRIPT), "--versions"], capture_output=True, text=True
        )
        if done.returncode == 0:
            versions: dict[str, str] = json.loads(done.stdout)
            return versions
        why = f"{BENCH_PYTHON} cannot run them: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    skipped.append(
        f"procrastinate and pgqueuer skipped: {why}; `make bench` installs the `bench` extra there"
    )
    return {}


def record(
    results: dict[str, float], system: str, submitters: int, rounds: list[tuple[float, list[float]]]
) -> None:
    """The medians over ``rounds`` of submits per second, p50 and p99 (ms)."""
    rates = [rate for rate, _ in rounds]
    p50s = [percentile(latencies, 0.50) * 1e3 for _, latencies in rounds]
    p99s = [percentile(latencies, 0.99) * 1e3 for _, latencies in rounds]
    results[f"{system}.submits_per_s.{submitters}"] = round(statistics.median(rates), 1)
    results[f"{system}.p50_ms.{submitters}"] = round(statistics.median(p50s), 3)
    results[f"{system}.p99_ms.{submitters}"] = round(statistics.median(p99s), 3)


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


def run_sqlite(quick: bool, results: dict[str, float], notes: dict[str, str]) -> str:
    """Measure every SQLite system at every submitter count; return the filesystem used."""
    totals = SQLITE_SUBMITS[quick]
    directory, fs = bench_dir()
    try:
        for submitters in SUBMITTERS:
            for system in SYSTEMS:
                rounds = []
                for round_ in range(rounds_of(quick)):
                    place = directory / f"{system}-{submitters}-{round_}"
                    place.mkdir()
                    with FACTORIES[system](place) as (submit, note):
                        warm_up(submit)
                        rounds.append(measure([submit] * submitters, totals[submitters]))
                        notes[f"{system}.{submitters}"] = note()
                record(results, system, submitters, rounds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return fs


def run_postgres(
    quick: bool, results: dict[str, float], notes: dict[str, str], skipped: list[str]
) -> dict[str, str]:
    """Measure gpulane and the peers on PostgreSQL, each round on fresh databases, the
    systems taken in turn; return what describes the server (nothing where none answers)."""
    try:
        admin = require_postgres()
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        skipped.append(f"PostgreSQL rows skipped: {exc.msg}")
        return {}
    peers = peer_versions(skipped)
    systems = [system for system in PG_SYSTEMS if system in PG_IN_PROCESS or system in peers]
    total = PG_SUBMITS[quick]
    for submitters in SUBMITTERS:
        rounds: dict[str, list[tuple[float, list[float]]]] = {system: [] for system in systems}
        for _ in range(rounds_of(quick)):
            for system in systems:
                with fresh_database() as url:
                    if system in PG_IN_PROCESS:
                        with PG_IN_PROCESS[system](url, submitters) as (submits, note):
                            for submit in dict.fromkeys(submits):  # each connection once
                                warm_up(submit)
                            rounds[system].append(measure(submits, total[submitters]))
                            notes[f"{system}.{submitters}"] = note()
                    else:
                        rounds[system].append(run_peer(system, url, submitters, total[submitters]))
                        notes[f"{system}.{submitters}"] = "1 write/commit"
        for system in systems:
            record(results, system, submitters, rounds[system])
    with psycopg.connect(admin, autocommit=True) as conn:
        server = {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])
            for name in ("server_version", "synchronous_commit", "fsync", "wal_sync_method")
        }
    return {"postgresql": server.pop("server_version"), "postgresql_settings": server, **peers}


def rounds_of(quick: bool) -> int:
    return 1 if quick else 3


def run(quick: bool) -> dict[str, Any]:
    """Measure every system at every submitter count; return the report."""
    results: dict[str, float] = {}
    notes: dict[str, str] = {}
    skipped: list[str] = []
    fs = run_sqlite(quick, results, notes)
    server = run_postgres(quick, results, notes, skipped)
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
    if "gpulane_pg.submits_per_s.8" in results:
        goals.append(goal("gpulane_pg.p99_ms.8", "<=", 10, results))
    pg_peers = [p for p in PG_PEERS if f"{p}.submits_per_s.8" in results]
    if "gpulane_pg.submits_per_s.8" in results and pg_peers:
        best = max(results[f"{p}.submits_per_s.8"] for p in pg_peers)
        ratio = results["gpulane_pg.submits_per_s.8"] / best
        results["ratio.gpulane_pg_vs_best_pg_peer"] = round(ratio, 2)
        goals.append(goal("ratio.gpulane_pg_vs_best_pg_peer", ">=", 2.0, results))
    if "raw_pg.submits_per_s.8" in results:
        ratio = results["gpulane_pg.submits_per_s.8"] / results["raw_pg.submits_per_s.8"]
        results["ratio.gpulane_pg_vs_raw_pg.8"] = round(ratio, 2)
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "filesystem": fs,
        **server,
    }
    return {
        "bench": "submit",
        "machine": machine,
        "results": results,
        "goals": goals,
        "notes": notes,
        "skipped": skipped,
        "rounds": rounds_of(quick),
        "submits": {"sqlite": SQLITE_SUBMITS[quick], "postgresql": PG_SUBMITS[quick]},
    }


def goal(metric: str, op: str, target: float, results: dict[str, float]) -> dict[str, Any]:
    return {"metric": metric, "op": op, "goal": target, "value": results[metric]}


def met(item: dict[str, Any]) -> bool:
    value, target = item["value"], item["goal"]
    return bool(value >= target if item["op"] == ">=" else value <= target)


def table(report: dict[str, Any]) -> str:
    """The readable form: one row per system and submitter count, SQLite's then
    PostgreSQL's, each against gpulane on the same engine; then the goals."""
    m = report["machine"]
    lines = [
        (
            f"submit benchmark — {m['cpus']} CPUs, Python {m['python']}, SQLite {m['sqlite']} "
            f"on {m['filesystem']}; median of {report['rounds']} round(s), submits per round "
            f"{report['submits']}"
        ),
        "",
        (
            f"{'system':<14} {'subm.':>5} {'submits/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'vs gpulane':>10}  batching"
        ),
    ]
    lines += rows(report, SYSTEMS)
    pg_systems = [s for s in PG_SYSTEMS if f"{s}.submits_per_s.1" in report["results"]]
    if pg_systems:
        settings = ", ".join(f"{k}={v}" for k, v in m["postgresql_settings"].items())
        peers = ", ".join(f"{p} {m[p]}" for p in PG_PEERS if p in m)
        lines += ["", f"on PostgreSQL {m['postgresql']} ({settings}); {peers or 'no peers'}:"]
        lines += rows(report, pg_systems)
    lines += ["", *report["skipped"]]
    for item in report["goals"]:
        verdict = "met" if met(item) else "NOT met"
        lines.append(
            f"goal {item['metric']} {item['op']} {item['goal']}: {item['value']} {verdict}"
        )
    return "\n".join(lines)


def rows(report: dict[str, Any], systems: Sequence[str]) -> list[str]:
    """A row per system and submitter count, against the first system (gpulane)."""
    r, lines = report["results"], []
    for submitters in SUBMITTERS:
        ours = r[f"{systems[0]}.submits_per_s.{submitters}"]
        for system in systems:
            rate = r[f"{system}.submits_per_s.{submitters}"]
            lines.append(
                f"{system:<14} {submitters:>5} {rate:>10,.0f} "
                f"{r[f'{system}.p50_ms.{submitters}']:>8.2f} "
                f"{r[f'{system}.p99_ms.{submitters}']:>8.2f} {rate / ours:>9.2f}x  "
                f"{report['notes'][f'{system}.{submitters}']}"
            )
    return lines


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
