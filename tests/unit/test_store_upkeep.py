"""The job database's upkeep and deep-queue reads: pruning in batches with the incremental
vacuum (schema version 3), the queue handed out in chunks in serving order, and the
admitted jobs read from their columns for the rate limiter. The tests on ``any_db`` run on
both engines (``store_engines``); the vacuum is SQLite's alone (PostgreSQL's autovacuum)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from job_store_helpers import make_spec
from store_engines import StoreEngine

from actors.runtime import ManualClock
from actors.stores import MIGRATIONS, JobDB, PgJobDB, migrate
from protocol import Job, JobState, Lane, Priority, ValidationError
from protocol.messages import InsertJob, ListJobs, Transition

EVERY = ListJobs(limit=1000)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(tmp_path: Path, clock: ManualClock) -> Iterator[JobDB]:
    opened = JobDB.open(str(tmp_path / "jobs.sqlite3"), clock)
    yield opened
    opened.close()


@pytest.fixture
def any_db(engine_home: str, tmp_path: Path, clock: ManualClock) -> Iterator[JobDB | PgJobDB]:
    opened = StoreEngine.in_home(engine_home, tmp_path).open(clock)
    yield opened
    opened.close()


def write(db: JobDB | PgJobDB, *messages: InsertJob | Transition) -> list[Job]:
    """Apply ``messages`` as one batch; every one must succeed."""
    it = iter(messages)
    outcomes = db.write_batch(lambda: next(it, None))
    assert all(isinstance(o, Job) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, Job)]


def insert(db: JobDB | PgJobDB, count: int, **fields: object) -> list[Job]:
    specs = (make_spec(n).replace(**fields) for n in range(count))
    return write(db, *(InsertJob(spec) for spec in specs))


def end(db: JobDB | PgJobDB, jobs: Iterable[Job], state: JobState = JobState.CANCELLED) -> None:
    write(db, *(Transition(job.id, state) for job in jobs))


def auto_vacuum(db: JobDB) -> int:
    return int(db._read_one("PRAGMA auto_vacuum")[0])


# --- pruning --------------------------------------------------------------------------


def test_a_prune_deletes_at_most_a_batch_of_the_oldest_terminal_jobs(
    any_db: JobDB | PgJobDB, clock: ManualClock
) -> None:
    first = insert(any_db, 5)
    end(any_db, first)
    clock.advance(10)
    later = insert(any_db, 3)
    end(any_db, later[:2])
    clock.advance(100)
    assert any_db.prune(50, 4) == 4
    assert {j.id for j in any_db.list_jobs(EVERY)} == {first[4].id, *(j.id for j in later)}
    assert any_db.prune(50, 4) == 3  # the last of the first five, and the two ended later
    assert any_db.prune(50, 4) == 0
    assert [j.state for j in any_db.list_jobs(EVERY)] == [JobState.QUEUED]


def test_a_prune_keeps_jobs_younger_than_the_age_and_jobs_not_ended(
    any_db: JobDB | PgJobDB, clock: ManualClock
) -> None:
    running = insert(any_db, 1)[0]
    write(
        any_db, Transition(running.id, JobState.LOADING), Transition(running.id, JobState.RUNNING)
    )
    ended = insert(any_db, 2)
    write(any_db, *(Transition(job.id, JobState.LOADING) for job in ended))
    end(any_db, ended, JobState.FAILED)
    clock.advance(30)
    assert any_db.prune(30, 10) == 0  # exactly 30 s old is not older than 30 s
    clock.advance(1)
    assert any_db.prune(30, 10) == 2
    assert any_db.get(running.id).state is JobState.RUNNING


@pytest.mark.parametrize("age", [-1, float("nan"), float("inf"), "60", True])
def test_a_prune_refuses_an_age_that_is_not_a_number_of_seconds(
    any_db: JobDB | PgJobDB, age: object
) -> None:
    with pytest.raises(ValidationError, match="older_than_s"):
        any_db.prune(age, 10)  # type: ignore[arg-type]


def test_a_prune_leaves_no_free_pages_in_the_file(db: JobDB, clock: ManualClock) -> None:
    jobs = insert(db, 2000)
    end(db, jobs)
    pages = int(db._read_one("PRAGMA page_count")[0])
    clock.advance(10)
    assert db.prune(5, 1500) == 1500
    assert int(db._read_one("PRAGMA freelist_count")[0]) == 0
    assert int(db._read_one("PRAGMA page_count")[0]) < pages / 2


# --- schema version 3: incremental auto_vacuum ------------------------------------------


def test_a_new_file_is_incremental_from_the_start(db: JobDB) -> None:
    assert auto_vacuum(db) == 2
    assert db.vacuumed_s is not None  # its one VACUUM ran on the empty file


def test_a_version_two_file_is_vacuumed_once_into_incremental_mode_with_its_jobs(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = str(tmp_path / "v2.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    migrate(conn, path, MIGRATIONS[:2])
    conn.execute("COMMIT")
    conn.close()
    old = JobDB(sqlite3.connect(path, isolation_level=None), path, clock)
    jobs = insert(old, 300)
    old.close()
    db = JobDB.open(path, clock)
    try:
        assert (db.schema_version(), auto_vacuum(db)) == (len(MIGRATIONS), 2)
        assert db.vacuumed_s is not None
        assert [j.id for j in db.queued_jobs()] == [j.id for j in jobs]
    finally:
        db.close()
    again = JobDB.open(path, clock)
    try:
        assert again.vacuumed_s is None  # once per file
    finally:
        again.close()


def test_a_vacuum_cut_short_after_the_migration_runs_at_the_next_open(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = str(tmp_path / "cut.sqlite3")
    JobDB.open(path, clock).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("VACUUM")  # as if the upgrade had committed version 3 and stopped here
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    db = JobDB.open(path, clock)
    try:
        assert (auto_vacuum(db), db.vacuumed_s is not None) == (2, True)
    finally:
        db.close()


# --- the queue in chunks, in serving order ---------------------------------------------


def test_the_queue_comes_back_in_the_order_the_arbiter_serves_it(
    any_db: JobDB | PgJobDB, clock: ManualClock
) -> None:
    low = insert(any_db, 2, priority=Priority.LOW, lane=Lane.INTERNAL)
    external = insert(any_db, 2)
    urgent = insert(any_db, 1, priority=Priority.URGENT, lane=Lane.INTERNAL)
    preempted = insert(any_db, 1)[0]
    write(
        any_db,
        Transition(preempted.id, JobState.LOADING),
        Transition(preempted.id, JobState.QUEUED, count_preemption=True),
    )
    load = any_db.load_queue(4, first=True)
    assert [j.id for j in load.jobs] == [urgent[0].id, low[0].id, low[1].id, preempted.id]
    assert load.remaining == 2
    rest = any_db.load_queue(4, first=False)
    assert ([j.id for j in rest.jobs], rest.remaining) == ([j.id for j in external], 0)


def test_a_load_hands_out_only_what_was_queued_when_it_began_and_is_still_queued(
    any_db: JobDB | PgJobDB,
) -> None:
    jobs = insert(any_db, 5)
    first = any_db.load_queue(2, first=True)
    assert [j.id for j in first.jobs] == [j.id for j in jobs[:2]]
    write(any_db, Transition(jobs[3].id, JobState.CANCELLED))
    late = insert(any_db, 1)[0]
    rest = any_db.load_queue(10, first=False)
    assert [j.id for j in rest.jobs] == [jobs[2].id, jobs[4].id]
    assert rest.remaining == 0 and late.id not in {j.id for j in rest.jobs}
    with pytest.raises(ValidationError, match="first"):
        any_db.load_queue(10, first=False)  # that load is over


def test_a_new_load_starts_again_from_the_best_job(any_db: JobDB | PgJobDB) -> None:
    jobs = insert(any_db, 3)
    any_db.load_queue(1, first=True)
    again = any_db.load_queue(1, first=True)
    assert ([j.id for j in again.jobs], again.remaining) == ([jobs[0].id], 2)


@pytest.mark.parametrize("chunk", [0, -1, 1.5, True])
def test_a_chunk_must_be_a_positive_integer(any_db: JobDB | PgJobDB, chunk: object) -> None:
    with pytest.raises(ValidationError, match="chunk"):
        any_db.load_queue(chunk, first=True)  # type: ignore[arg-type]


# --- admitted jobs, for the rate limiter --------------------------------------------------


def test_the_admitted_jobs_are_every_job_not_ended_by_caller_and_lane(
    any_db: JobDB | PgJobDB,
) -> None:
    alice = insert(any_db, 3)
    bots = insert(any_db, 2, caller="bot", lane=Lane.INTERNAL)
    write(
        any_db, Transition(alice[0].id, JobState.LOADING), Transition(bots[0].id, JobState.LOADING)
    )
    write(any_db, Transition(bots[0].id, JobState.RUNNING))
    end(any_db, [alice[1]], JobState.CANCELLED)
    admitted = {(caller, lane): set(ids) for caller, lane, ids in any_db.admitted()}
    assert admitted == {
        ("alice", Lane.EXTERNAL): {alice[0].id, alice[2].id},
        ("bot", Lane.INTERNAL): {j.id for j in bots},
    }
