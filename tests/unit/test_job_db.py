"""The thread-free job database: batches, failures inside a batch, schema migrations.

The tests on ``any_db`` run on both engines (``store_engines``); the ones that reach into
SQLite's connection or its files run on ``db``, SQLite alone.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from job_store_helpers import make_spec
from store_engines import StoreEngine
from ulid import ULID

from actors.runtime import ManualClock
from actors.stores import (
    MIGRATIONS,
    SCHEMA_VERSION,
    BatchOutcome,
    JobDB,
    PgJobDB,
    WriteMessage,
    _sqlite,
    is_volatile,
    migrate,
)
from protocol import (
    IllegalTransitionError,
    Job,
    JobMetrics,
    JobSpec,
    JobState,
    Output,
    StoreError,
    ToolCall,
    ValidationError,
)
from protocol.messages import InsertJob, ListJobs, Transition


@pytest.fixture
def db(tmp_path: Path) -> Iterator[JobDB]:
    opened = JobDB.open(str(tmp_path / "jobs.sqlite3"), ManualClock())
    yield opened
    opened.close()


@pytest.fixture
def any_db(engine: StoreEngine) -> Iterator[JobDB | PgJobDB]:
    opened = engine.open()
    yield opened
    opened.close()


def batch(
    db: JobDB | PgJobDB, writes: Iterable[WriteMessage], *, volatile: bool = False
) -> list[BatchOutcome]:
    """Run ``writes`` as one batch; the iterator is consumed only as far as the batch takes."""
    it = iter(writes)
    return db.write_batch(lambda: next(it, None), volatile=volatile)


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


def test_a_write_that_cannot_be_encoded_fails_alone_and_leaves_the_store_usable(
    any_db: JobDB | PgJobDB,
) -> None:
    unencodable = make_spec(2)
    object.__setattr__(unencodable, "options", {"seed": b"bytes slipped past validation"})
    first, bad, last = batch(
        any_db, [InsertJob(make_spec(1)), InsertJob(unencodable), InsertJob(make_spec(3))]
    )
    assert isinstance(first, Job) and isinstance(last, Job)
    assert isinstance(bad, StoreError) and "cannot encode InsertJob" in str(bad)
    assert last.seq == first.seq + 1, "the refused write used no sequence number"
    (after,) = batch(any_db, [InsertJob(make_spec(4))])
    assert isinstance(after, Job)
    assert [any_db.get(j.id).seq for j in (first, last, after)] == [first.seq, last.seq, after.seq]


def test_a_batch_commits_once_and_returns_one_outcome_per_write(any_db: JobDB | PgJobDB) -> None:
    outcomes = batch(any_db, [InsertJob(make_spec(n)) for n in range(5)])
    assert all(isinstance(o, Job) for o in outcomes) and len(outcomes) == 5
    assert (any_db.commits, any_db.writes, any_db.largest_batch) == (1, 5, 5)
    assert [j.id for j in any_db.queued_jobs()] == [o.id for o in outcomes if isinstance(o, Job)]


def test_writes_that_arrive_while_the_bulk_insert_runs_join_the_same_commit(
    any_db: JobDB | PgJobDB,
) -> None:
    arrivals = iter([InsertJob(make_spec(1)), None, InsertJob(make_spec(2)), None, None])
    outcomes = any_db.write_batch(lambda: next(arrivals))
    assert [type(o) for o in outcomes] == [Job, Job]
    assert any_db.commits == 1 and any_db.count_by_state()["queued"] == 2
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

    monkeypatch.setattr(_sqlite, "ULID", SameId)
    first, clash = batch(db, [InsertJob(make_spec(1)), InsertJob(make_spec(2))])
    assert isinstance(first, Job)
    assert isinstance(clash, StoreError) and "UNIQUE" in str(clash)
    assert db.get(first.id) == first
    assert db.count_by_state()["queued"] == 1


def test_a_batch_larger_than_one_insert_statement_is_written_whole(any_db: JobDB | PgJobDB) -> None:
    outcomes = batch(any_db, [InsertJob(make_spec(n)) for n in range(1200)])
    seqs = [o.seq for o in outcomes if isinstance(o, Job)]
    assert seqs == list(range(1, 1201))
    assert any_db.commits == 1
    assert any_db.get_by_seq(1200) == outcomes[-1]
    assert any_db.count_by_state()["queued"] == 1200


def test_a_new_file_gets_the_current_schema_version(db: JobDB) -> None:
    assert db.schema_version() == SCHEMA_VERSION == 6
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


def test_a_file_of_the_current_version_opens_unchanged_with_its_jobs(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.sqlite3")
    first = JobDB.open(path, ManualClock())
    job = batch(first, [InsertJob(make_spec())])[0]
    first.close()
    again = JobDB.open(path, ManualClock())
    try:
        assert again.get(job.id) == job  # type: ignore[union-attr]
        assert again.schema_version() == SCHEMA_VERSION
    finally:
        again.close()


# A spec as version 1 stored it: these keys, no more.
VERSION_ONE_SPEC = {
    "kind": "chat", "model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],
    "prompt": "", "system": None, "options": {"num_ctx": 4096}, "format": None,
    "max_tokens": 64, "lane": "external", "priority": "normal", "caller": "alice",
    "task_type": None, "task_id": None, "chain_id": None, "allow_cloud": False,
    "stream": True, "max_attempts": 3, "keep_alive": "5m",
}  # fmt: skip


def write_version_one_file(path: str) -> None:
    """A job database as gpulane wrote it at schema version 1: one succeeded job and one
    queued job, rows written with that version's columns only."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    migrate(conn, path, MIGRATIONS[:1])
    spec = json.dumps(VERSION_ONE_SPEC)
    conn.execute(
        "INSERT INTO jobs (id, state, lane, caller, model, priority, spec, created_at, "
        "updated_at, started_at, finished_at, result, metrics) VALUES "
        "('01OLDDONE', 'succeeded', 'external', 'anonymous', 'llama3.2', 1, ?, 1.0, 3.0, "
        "2.0, 3.0, 'Hello there', '{\"eval_count\": 2, \"total_duration_ns\": 5}')",
        (spec,),
    )
    conn.execute(
        "INSERT INTO jobs (id, state, lane, caller, model, priority, spec, created_at, "
        "updated_at, partial_output) VALUES "
        "('01OLDQUEUED', 'queued', 'external', 'anonymous', 'llama3.2', 1, ?, 4.0, 4.0, 'so far')",
        (spec,),
    )
    conn.execute("COMMIT")
    conn.close()


def test_a_version_one_file_is_migrated_and_its_jobs_read_back(tmp_path: Path) -> None:
    path = str(tmp_path / "old.sqlite3")
    write_version_one_file(path)
    db = JobDB.open(path, ManualClock())
    try:
        assert db.schema_version() == SCHEMA_VERSION == 6
        done = db.get("01OLDDONE")
        assert (done.state, done.result, done.output, done.segments) == (
            JobState.SUCCEEDED, "Hello there", None, (),
        )  # fmt: skip
        assert done.metrics == JobMetrics(eval_count=2, total_duration_ns=5)
        assert done.answer == "Hello there" and done.answer.tool_calls == ()
        queued = db.queued_jobs()
        assert [(j.id, j.partial_output, j.segments) for j in queued] == [
            ("01OLDQUEUED", "so far", ())
        ]
        assert queued[0].spec == JobSpec.from_dict(VERSION_ONE_SPEC)
        assert queued[0].spec.to_dict() == VERSION_ONE_SPEC
        # The old rows take the new columns' writes like any other.
        moved = batch(db, [Transition("01OLDQUEUED", JobState.LOADING)])[0]
        assert isinstance(moved, Job) and moved.state is JobState.LOADING
    finally:
        db.close()


class SyncRecorder:
    """Wraps a connection; records the synchronous level in force at each COMMIT."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.levels: list[int] = []

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self.levels.append(self._conn.execute("PRAGMA synchronous").fetchone()[0])
        return self._conn.execute(sql, *args)


FULL, NORMAL = 2, 1


def test_only_a_batch_of_bare_loading_and_running_moves_commits_without_fsync(
    db: JobDB,
) -> None:
    recorder = SyncRecorder(db._conn)
    db._conn = recorder  # type: ignore[assignment]
    (job,) = batch(db, [InsertJob(make_spec(1))])
    assert isinstance(job, Job)
    moves = [Transition(job.id, JobState.LOADING), Transition(job.id, JobState.RUNNING)]
    assert all(is_volatile(m) for m in moves)
    assert all(isinstance(o, Job) for o in batch(db, moves, volatile=True))
    requeue = Transition(job.id, JobState.QUEUED, count_preemption=True)
    assert isinstance(batch(db, [requeue])[0], Job)
    batch(db, [Transition(job.id, JobState.LOADING)], volatile=True)
    batch(db, [Transition(job.id, JobState.FAILED, error="boom", charge_attempt=True)])
    db._conn = recorder._conn
    assert recorder.levels == [FULL, NORMAL, FULL, NORMAL, FULL]
    assert (db.commits, db.volatile_commits) == (5, 2)
    assert db.durability() == ("wal", "FULL"), "FULL again after each volatile commit"


def test_every_write_that_records_more_than_a_move_into_loading_or_running_is_durable() -> None:
    job_id = "01HZZZZZZZZZZZZZZZZZZZZZZZ"
    durable = [
        InsertJob(make_spec(1)),
        Transition(job_id, JobState.QUEUED),
        Transition(job_id, JobState.SUCCEEDED, result="ok"),
        Transition(job_id, JobState.FAILED),
        Transition(job_id, JobState.CANCELLED),
        Transition(job_id, JobState.LOADING, charge_attempt=True),
        Transition(job_id, JobState.RUNNING, count_preemption=True),
        Transition(job_id, JobState.RUNNING, partial_output="so far"),
        Transition(job_id, JobState.RUNNING, error="retrying"),
        Transition(job_id, JobState.RUNNING, metrics=JobMetrics(eval_count=1)),
        Transition(job_id, JobState.RUNNING, segments=()),
        Transition(job_id, JobState.RUNNING, output=Output(thinking="t")),
    ]
    assert not any(is_volatile(m) for m in durable)
    assert is_volatile(Transition(job_id, JobState.LOADING, stale_ok=True))


def test_a_durable_write_handed_to_a_volatile_batch_fails_alone_and_is_not_kept(
    any_db: JobDB | PgJobDB,
) -> None:
    (job,) = batch(any_db, [InsertJob(make_spec(1))])
    assert isinstance(job, Job)
    moved, refused = batch(
        any_db, [Transition(job.id, JobState.LOADING), InsertJob(make_spec(2))], volatile=True
    )
    assert isinstance(moved, Job) and moved.state is JobState.LOADING
    assert isinstance(refused, StoreError) and "volatile batch" in str(refused)
    assert any_db.count_by_state()["queued"] == 0


def test_a_normal_store_commits_every_batch_at_normal_and_counts_none_volatile(
    tmp_path: Path,
) -> None:
    db = JobDB.open(str(tmp_path / "n.sqlite3"), ManualClock(), synchronous="NORMAL")
    try:
        (job,) = batch(db, [InsertJob(make_spec(1))])
        assert isinstance(job, Job)
        batch(db, [Transition(job.id, JobState.LOADING)], volatile=True)
        assert db.volatile_commits == 0
        assert db.durability() == ("wal", "NORMAL")
    finally:
        db.close()


def test_ids_are_ulids_of_the_creation_time_that_grow_within_a_millisecond(
    tmp_path: Path,
) -> None:
    clock = ManualClock(1_700_000_000.5)  # exact in binary, like the later time below
    db = JobDB.open(str(tmp_path / "jobs.sqlite3"), clock)
    try:
        jobs = batch(db, [InsertJob(make_spec(n)) for n in range(1000)])
        ids = [job.id for job in jobs if isinstance(job, Job)]
        assert len(ids) == 1000 and ids == sorted(ids) and len(set(ids)) == 1000
        assert {ULID.from_str(i).milliseconds for i in ids} == {1_700_000_000_500}
        clock.advance(0.25)
        (later,) = batch(db, [InsertJob(make_spec())])
        assert isinstance(later, Job)
        assert ULID.from_str(later.id).milliseconds == 1_700_000_000_750
    finally:
        db.close()


def test_a_transition_moves_the_job_from_memory_without_reading_its_row(db: JobDB) -> None:
    job = batch(db, [InsertJob(make_spec())])[0]
    assert isinstance(job, Job)
    statements: list[str] = []
    db._conn.set_trace_callback(statements.append)
    loading = batch(db, [Transition(job.id, JobState.LOADING)])[0]
    db._conn.set_trace_callback(None)
    assert isinstance(loading, Job) and loading.state is JobState.LOADING
    assert not [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert db.get(job.id) == loading


def test_two_moves_of_one_job_in_one_batch_each_start_from_the_one_before(
    any_db: JobDB | PgJobDB,
) -> None:
    job = batch(any_db, [InsertJob(make_spec())])[0]
    assert isinstance(job, Job)
    loading, running = batch(
        any_db, [Transition(job.id, JobState.LOADING), Transition(job.id, JobState.RUNNING)]
    )
    assert isinstance(loading, Job) and isinstance(running, Job)
    assert running.state is JobState.RUNNING and running.started_at == loading.started_at
    assert any_db.get(job.id) == running


def test_a_batch_that_fails_to_commit_leaves_the_jobs_as_they_were_committed(db: JobDB) -> None:
    job = batch(db, [InsertJob(make_spec())])[0]
    assert isinstance(job, Job)
    real = db._conn
    db._conn = FaultyConnection(real, "COMMIT")  # type: ignore[assignment]
    lost = batch(db, [Transition(job.id, JobState.LOADING)])[0]
    db._conn = real
    assert isinstance(lost, StoreError)
    assert db.get(job.id) == job
    loading = batch(db, [Transition(job.id, JobState.LOADING)])[0]
    assert isinstance(loading, Job) and loading.state is JobState.LOADING, "moved from queued"


def test_a_finished_job_is_read_back_from_the_file_as_it_was_kept_in_memory(
    any_db: JobDB | PgJobDB,
) -> None:
    job = batch(any_db, [InsertJob(make_spec())])[0]
    assert isinstance(job, Job)
    moves = [
        Transition(job.id, JobState.LOADING, backend="east", slot="east.gpu1"),
        Transition(job.id, JobState.RUNNING),
    ]
    *_, running = batch(any_db, moves)
    assert any_db.get(job.id) == running
    assert isinstance(running, Job) and (running.backend, running.slot) == ("east", "east.gpu1")
    done = batch(any_db, [Transition(job.id, JobState.SUCCEEDED, result="ok")])[0]
    assert isinstance(done, Job)
    assert any_db.get(job.id) == done == any_db.get_by_seq(job.seq)
    assert any_db.list_jobs(ListJobs()) == (done,)
    assert (done.backend, done.slot) == ("east", "east.gpu1"), "kept by moves that carry none"
    assert any_db._live == {}, "terminal jobs are not kept in memory"


def test_a_job_says_where_its_last_call_ran_and_a_move_to_loading_elsewhere_replaces_it(
    any_db: JobDB | PgJobDB,
) -> None:
    (job,) = batch(any_db, [InsertJob(make_spec())])
    assert isinstance(job, Job) and (job.backend, job.slot) == (None, None)
    assert job.to_dict()["backend"] is None and job.to_dict()["slot"] is None
    first = Transition(job.id, JobState.LOADING, backend="local", slot="gpu0")
    assert is_volatile(first), "where it runs does not make the move durable"
    batch(any_db, [first, Transition(job.id, JobState.QUEUED, count_preemption=True)])
    assert (any_db.get(job.id).backend, any_db.get(job.id).slot) == ("local", "gpu0")
    batch(any_db, [Transition(job.id, JobState.LOADING, backend="west", slot="west.gpu0")])
    (failed,) = batch(any_db, [Transition(job.id, JobState.FAILED, error="boom")])
    assert isinstance(failed, Job)
    assert {k: failed.to_dict()[k] for k in ("backend", "slot")} == {
        "backend": "west", "slot": "west.gpu0",
    }  # fmt: skip
    assert any_db.get(job.id) == failed


def test_a_version_four_file_gets_the_where_it_ran_columns_and_its_jobs_take_them(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "v4.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    migrate(conn, path, MIGRATIONS[:4])
    conn.execute(
        "INSERT INTO jobs (id, state, lane, caller, model, priority, spec, created_at, "
        "updated_at) VALUES ('01V4', 'queued', 'external', 'alice', 'llama3.2', 1, ?, 1, 1)",
        (json.dumps(make_spec().to_dict()),),
    )
    conn.execute("COMMIT")
    conn.close()
    db = JobDB.open(path, ManualClock())
    try:
        assert db.schema_version() == SCHEMA_VERSION == 6
        columns = [row[1] for row in db._conn.execute("PRAGMA table_info(jobs)")]
        assert columns[-2:] == ["backend", "slot"]
        old = db.get("01V4")
        assert (old.backend, old.slot) == (None, None)
        batch(db, [Transition("01V4", JobState.LOADING, backend="east", slot="east.gpu0")])
        db._live.clear()  # read the row, not the copy in memory
        assert (db.get("01V4").backend, db.get("01V4").slot) == ("east", "east.gpu0")
    finally:
        db.close()


def test_a_bug_mid_batch_rolls_the_batch_back_instead_of_leaving_it_open(
    any_db: JobDB | PgJobDB,
) -> None:
    kept = batch(any_db, [InsertJob(make_spec(1))])[0]
    assert isinstance(kept, Job)

    def writes_then_a_bug() -> Iterator[InsertJob]:
        yield InsertJob(make_spec(2))
        raise RuntimeError("a bug in the caller's take()")

    it = writes_then_a_bug()
    with pytest.raises(RuntimeError, match="a bug"):
        any_db.write_batch(lambda: next(it))
    (after,) = batch(any_db, [InsertJob(make_spec(3))])
    assert isinstance(after, Job), "the store still writes"
    assert after.seq == kept.seq + 1, "the rolled-back insert left no trace"
    assert [job.seq for job in any_db.list_jobs(ListJobs())] == [after.seq, kept.seq]


def test_an_answers_output_may_be_set_only_on_a_move_to_succeeded(any_db: JobDB | PgJobDB) -> None:
    (job,) = batch(any_db, [InsertJob(make_spec(1))])
    assert isinstance(job, Job)
    (refused,) = batch(
        any_db, [Transition(job.id, JobState.CANCELLED, output=Output(thinking="t"))]
    )
    assert isinstance(refused, ValidationError) and refused.field == "output"


def test_a_job_that_starts_over_has_its_segments_cleared_and_its_answer_counts_the_rest(
    any_db: JobDB | PgJobDB,
) -> None:
    (job,) = batch(any_db, [InsertJob(make_spec(1))])
    assert isinstance(job, Job)
    first, second = JobMetrics(eval_count=4), JobMetrics(eval_count=6, prompt_eval_count=9)
    call = ToolCall("get_weather", {"city": "Paris"}, id="call_1")
    moves = [
        Transition(job.id, JobState.LOADING),
        Transition(job.id, JobState.QUEUED, partial_output="half", segments=(first,)),
        Transition(job.id, JobState.LOADING),
        Transition(job.id, JobState.QUEUED, partial_output="", segments=()),
        Transition(job.id, JobState.LOADING),
        Transition(
            job.id,
            JobState.SUCCEEDED,
            result="Calling it.",
            output=Output(tool_calls=(call,), done_reason="stop"),
            segments=(second,),
            metrics=second,
        ),
    ]
    outcomes = batch(any_db, moves)
    assert [o.segments for o in outcomes if isinstance(o, Job)][:4] == [(), (first,), (first,), ()]
    done = any_db.get(job.id)
    assert done.segments == (second,) and done.metrics == second
    assert done.answer == "Calling it." and done.answer.tool_calls == (call,)
    assert done.to_dict()["output"] == {
        "tool_calls": [{"id": "call_1", "function": {"name": "get_weather",
                                                     "arguments": {"city": "Paris"}}}],
        "done_reason": "stop",
    }  # fmt: skip
