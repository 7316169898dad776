"""The JobDB's jobs per state, kept in memory (``actors/stores/_counts.py``), stay equal to
what the database says after any sequence of inserts, transitions (legal, illegal, several
of one job in a batch), a batch rolled back, prunes, recovery and a restart, on both engines
(``store_engines``)."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import psycopg
import pytest
from job_store_helpers import make_spec
from store_engines import StoreEngine

from actors.runtime import ManualClock
from actors.stores import BatchOutcome, JobDB, PgJobDB, WriteMessage
from protocol import Job, JobState
from protocol.messages import InsertJob, Transition


def batch(db: JobDB | PgJobDB, writes: Iterable[WriteMessage]) -> list[BatchOutcome]:
    it = iter(writes)
    return db.write_batch(lambda: next(it, None))


def counted_by_the_database(db: JobDB | PgJobDB) -> dict[str, int]:
    """What ``SELECT state, COUNT(*)`` says, on the store's connection (it holds the lock)."""
    counts = dict.fromkeys((s.value for s in JobState), 0)
    for state, count in db._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
        counts[state] = count
    return counts


class RollbackAtCommit:
    """Wraps a connection so that COMMIT fails with the driver's error (``error``): the whole
    batch is rolled back."""

    def __init__(self, conn: object, error: type[Exception]) -> None:
        self._conn = conn
        self._error = error

    def execute(self, sql: str, *args: object) -> object:
        if sql == "COMMIT":
            self._conn.execute("ROLLBACK")  # type: ignore[attr-defined]
            raise self._error("disk I/O error (injected)")
        return self._conn.execute(sql, *args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)


def step(db: JobDB | PgJobDB, rng: random.Random, clock: ManualClock, ids: list[str]) -> None:
    """One random step: a batch of writes (maybe rolled back), a prune, or a recovery."""
    kind = rng.choice(["writes", "writes", "writes", "rollback", "prune", "recover"])
    if kind == "prune":
        clock.advance(rng.choice([0.0, 5.0]))
        db.prune(rng.choice([0.0, 3.0]), rng.randint(1, 4))
        return
    if kind == "recover":
        db.recover()
        return
    writes: list[WriteMessage] = []
    for _ in range(rng.randint(1, 8)):
        if not ids or rng.random() < 0.35:
            writes.append(InsertJob(make_spec(len(ids) + len(writes))))
        else:  # legal or not; the same job may move twice in one batch
            writes.append(Transition(rng.choice(ids), rng.choice(list(JobState))))
    if kind == "rollback":
        real = db._conn
        error = psycopg.OperationalError if isinstance(db, PgJobDB) else sqlite3.OperationalError
        db._conn = RollbackAtCommit(real, error)  # type: ignore[assignment]
        try:
            batch(db, writes)
        finally:
            db._conn = real
        return
    for outcome in batch(db, writes):
        if isinstance(outcome, Job) and outcome.id not in ids:
            ids.append(outcome.id)


@pytest.mark.parametrize("seed", range(12))
def test_the_counts_per_state_equal_the_databases_after_any_sequence_of_writes(
    engine: StoreEngine, seed: int
) -> None:
    rng = random.Random(seed)
    clock = ManualClock(1000.0)
    db = engine.open(clock)
    ids: list[str] = []
    try:
        for n in range(60):
            step(db, rng, clock, ids)
            assert dict(db.count_by_state()) == counted_by_the_database(db), f"after step {n}"
            if n % 20 == 19:  # a restart counts again from the file
                db.close()
                db = engine.open(clock)
                assert dict(db.count_by_state()) == counted_by_the_database(db), "after a restart"
        assert sum(db.count_by_state().values()) > 0
    finally:
        db.close()


def test_a_status_read_does_not_query_the_file(tmp_path: Path) -> None:
    db = JobDB.open(str(tmp_path / "jobs.sqlite3"), ManualClock())
    try:
        batch(db, [InsertJob(make_spec(n)) for n in range(3)])
        statements: list[str] = []
        db._conn.set_trace_callback(statements.append)
        assert db.count_by_state()["queued"] == 3
        assert statements == []
    finally:
        db.close()
