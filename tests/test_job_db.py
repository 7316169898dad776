"""The thread-free job database: batches, failures inside a batch, schema migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from job_store_helpers import make_spec

from actors import job_db
from actors.clock import ManualClock
from actors.job_db import SCHEMA_VERSION, BatchOutcome, JobDB, WriteMessage, migrate
from protocol import IllegalTransitionError, Job, JobState, StoreError
from protocol.messages import InsertJob, Transition


@pytest.fixture
def db(tmp_path: Path) -> Iterator[JobDB]:
    opened = JobDB.open(str(tmp_path / "jobs.sqlite3"), ManualClock())
    yield opened
    opened.close()


def batch(db: JobDB, writes: Iterable[WriteMessage]) -> list[BatchOutcome]:
    """Run ``writes`` as one batch; the iterator is consumed only as far as the batch takes."""
    it = iter(writes)
    return db.write_batch(lambda: next(it, None))


class FaultyConnection:
    """Wraps a connection; the statement ``fail_on`` raises, optionally after a rollback."""

    def __init__(self, conn: sqlite3.Connection, fail_on: str, rollback: bool = False) -> None:
        self._conn = conn
        self._fail_on = fail_on
        self._rollback = rollback
        self.armed = True

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, *args: Any) -> Any:
        if self.armed and sql.startswith(self._fail_on):
            if self._rollback:
                self._conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)


def test_a_batch_commits_once_and_returns_one_outcome_per_write(db: JobDB) -> None:
    outcomes = batch(db, [InsertJob(make_spec(n)) for n in range(5)])
    assert all(isinstance(o, Job) for o in outcomes) and len(outcomes) == 5
    assert (db.commits, db.writes, db.largest_batch) == (1, 5, 5)
    assert [j.id for j in db.queued_jobs()] == [o.id for o in outcomes if isinstance(o, Job)]


def test_writes_that_arrive_while_the_bulk_insert_runs_join_the_same_commit(db: JobDB) -> None:
    arrivals = iter([InsertJob(make_spec(1)), None, InsertJob(make_spec(2)), None, None])
    outcomes = db.write_batch(lambda: next(arrivals))
    assert [type(o) for o in outcomes] == [Job, Job]
    assert db.commits == 1 and db.count_by_state()["queued"] == 2
    assert next(arrivals, "drained") == "drained", "it asked again after each INSERT"


def test_when_the_commit_fails_every_writer_gets_the_store_error_and_nothing_is_kept(
    db: JobDB,
) -> None:
    done = batch(db, [InsertJob(make_spec())])[0]
    assert isinstance(done, Job)
    batch(db, [Transition(done.id, JobState.CANCELLED)])
    real = db._conn
    db._conn = FaultyConnection(real, "COMMIT")  # type: ignore[assignment]
    outcomes = batch(
        db,
        [InsertJob(make_spec(1)), Transition(done.id, JobState.RUNNING), InsertJob(make_spec(2))],
    )
    db._conn = real
    assert isinstance(outcomes[0], StoreError) and outcomes[2] is outcomes[0]
    assert "cannot commit" in str(outcomes[0]) and db.path in str(outcomes[0])
    assert isinstance(outcomes[1], IllegalTransitionError), "a refused write keeps its reason"
    assert db.count_by_state()["queued"] == 0
    assert not real.in_transaction


def test_when_a_batch_cannot_begin_only_the_first_write_is_taken_and_failed(db: JobDB) -> None:
    real = db._conn
    db._conn = FaultyConnection(real, "BEGIN")  # type: ignore[assignment]
    writes = iter([InsertJob(make_spec(1)), InsertJob(make_spec(2))])
    outcomes = batch(db, writes)
    db._conn = real
    assert len(outcomes) == 1 and isinstance(outcomes[0], StoreError)
    assert next(writes) == InsertJob(make_spec(2)), "the second write was left for later"


def test_when_sqlite_abandons_the_transaction_the_batch_stops_and_fails_whole(db: JobDB) -> None:
    kept = batch(db, [InsertJob(make_spec(0))])[0]
    assert isinstance(kept, Job)
    real = db._conn
    db._conn = FaultyConnection(real, "UPDATE", rollback=True)  # type: ignore[assignment]
    writes = iter(
        [InsertJob(make_spec(1)), Transition(kept.id, JobState.LOADING), InsertJob(make_spec(2))]
    )
    outcomes = batch(db, writes)
    db._conn = real
    assert len(outcomes) == 2 and all(isinstance(o, StoreError) for o in outcomes)
    assert next(writes) == InsertJob(make_spec(2)), "the batch stopped taking writes"
    assert [j.id for j in db.queued_jobs()] == [kept.id]
    again = batch(db, [InsertJob(make_spec(3))])[0]
    assert isinstance(again, Job) and again.seq == kept.seq + 1, "no sequence number lost"


def test_when_the_bulk_insert_loses_the_transaction_every_insert_fails(db: JobDB) -> None:
    real = db._conn
    db._conn = FaultyConnection(real, "INSERT", rollback=True)  # type: ignore[assignment]
    outcomes = batch(db, [InsertJob(make_spec(1)), InsertJob(make_spec(2))])
    db._conn = real
    assert len(outcomes) == 2 and all(isinstance(o, StoreError) for o in outcomes)
    assert "cannot write" in str(outcomes[0]) and "disk I/O error" in str(outcomes[0])
    assert db.count_by_state()["queued"] == 0


def test_a_write_that_fails_in_sqlite_fails_alone(
    db: JobDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    class SameId:
        @staticmethod
        def from_timestamp(_: float) -> str:
            return "01HZZZZZZZZZZZZZZZZZZZZZZZ"

    monkeypatch.setattr(job_db, "ULID", SameId)
    first, clash = batch(db, [InsertJob(make_spec(1)), InsertJob(make_spec(2))])
    assert isinstance(first, Job)
    assert isinstance(clash, StoreError) and "UNIQUE" in str(clash)
    assert db.get(first.id) == first
    assert db.count_by_state()["queued"] == 1


def test_a_batch_larger_than_one_insert_statement_is_written_whole(db: JobDB) -> None:
    outcomes = batch(db, [InsertJob(make_spec(n)) for n in range(1200)])
    seqs = [o.seq for o in outcomes if isinstance(o, Job)]
    assert seqs == list(range(1, 1201))
    assert db.commits == 1
    assert db.get_by_seq(1200) == outcomes[-1]
    assert db.count_by_state()["queued"] == 1200


def test_a_new_file_gets_the_current_schema_version(db: JobDB) -> None:
    assert db.schema_version() == SCHEMA_VERSION == 1
    assert db.durability() == ("wal", "FULL")


def test_migrations_run_in_order_from_the_stored_version_only(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "m.sqlite3"), isolation_level=None)
    ran: list[str] = []

    def v1(c: sqlite3.Connection) -> None:
        ran.append("v1")
        c.execute("CREATE TABLE t (a)")

    def v2(c: sqlite3.Connection) -> None:
        ran.append("v2")
        c.execute("ALTER TABLE t ADD COLUMN b")

    assert migrate(conn, "m", [v1]) == 0
    assert migrate(conn, "m", [v1, v2]) == 1
    assert migrate(conn, "m", [v1, v2]) == 2
    assert ran == ["v1", "v2"]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert [r[1] for r in conn.execute("PRAGMA table_info(t)")] == ["a", "b"]
    with pytest.raises(StoreError, match="schema version 2, newer than the 1"):
        migrate(conn, "m", [v1])
    conn.close()


def test_a_version_one_file_opens_unchanged_with_its_jobs(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.sqlite3")
    first = JobDB.open(path, ManualClock())
    job = batch(first, [InsertJob(make_spec())])[0]
    first.close()
    again = JobDB.open(path, ManualClock())
    try:
        assert again.get(job.id) == job  # type: ignore[union-attr]
        assert again.schema_version() == 1
    finally:
        again.close()
