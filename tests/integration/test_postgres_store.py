"""What only the PostgreSQL engine does (``actors/stores/_postgres.py``): the advisory lock
that refuses a second store, a store whose connection the server killed, volatile commits
with ``synchronous_commit`` off, savepoints around inserts, its migrations, errors that name
the database without its password, and a GpuLane on ``store.url`` whose queue survives a
restart. The tests the engines share run on both in the store suite (``store_engines``).

Each test has a database of its own (``postgres_kit.fresh_database``); they skip naming the
missing server, and fail under CI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from job_store_helpers import make_spec
from postgres_kit import fresh_database, redact

from actors import Config, GpuLane
from actors.runtime import ManualClock
from actors.stores import SCHEMA_VERSION, BatchOutcome, PgJobDB, WriteMessage, _postgres
from actors.stores._pg_schema import PG_MIGRATIONS, migrate
from actors.testing import FakeCall, FakeGpu, quiesce
from protocol import Job, JobState, Limits, StoreError, StoreSettings
from protocol.messages import InsertJob, StoreSnapshot, Transition


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as made:
        yield made


def batch(db: PgJobDB, writes: list[WriteMessage], *, volatile: bool = False) -> list[BatchOutcome]:
    it = iter(writes)
    return db.write_batch(lambda: next(it, None), volatile=volatile)


def password_of(url: str) -> str:
    password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    assert password, "postgres_kit gives every test database a role with a password"
    return str(password)


def test_a_second_store_on_the_same_database_is_refused_naming_it_without_its_password(
    url: str,
) -> None:
    first = PgJobDB.open(url, ManualClock())
    try:
        (job,) = batch(first, [InsertJob(make_spec())])
        with pytest.raises(StoreError, match="in use by another gpulane store") as refused:
            PgJobDB.open(url, ManualClock())
        message = str(refused.value)
        assert _postgres.redact(url) in message and password_of(url) not in message
        assert "gpulane job store" in message, "it names the session that holds the lock"
        assert first.get(job.id) == job, "the first store is unharmed"  # type: ignore[union-attr]
    finally:
        first.close()
    PgJobDB.open(url, ManualClock()).close()  # closing released the lock


def test_a_store_whose_connection_the_server_killed_fails_its_writes_and_a_new_one_recovers(
    url: str,
) -> None:
    clock = ManualClock()
    db = PgJobDB.open(url, clock)
    (job,) = batch(db, [InsertJob(make_spec())])
    assert isinstance(job, Job)
    batch(db, [Transition(job.id, JobState.LOADING), Transition(job.id, JobState.RUNNING)])
    pid = db._conn.raw.info.backend_pid
    with psycopg.connect(url, autocommit=True) as admin:  # as a crash or a failover would
        (ended,) = admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()
    assert ended
    (lost,) = batch(db, [InsertJob(make_spec(2))])
    assert isinstance(lost, StoreError) and "ended by an administrator" in str(lost)
    assert password_of(url) not in str(lost)
    db.close()
    clock.advance(5)
    again = PgJobDB.open(url, clock)  # the dead session's lock went with it
    try:
        recovery = again.recover()
        assert (recovery.requeued, recovery.queued) == (1, 1)
        back = again.get(job.id)
        assert (back.state, back.attempts) == (JobState.QUEUED, 0), "the crash charges nothing"
        assert again.count_by_state()["queued"] == 1
    finally:
        again.close()


class CommitRecorder:
    """Wraps the engine's connection; notes ``synchronous_commit`` in force at each COMMIT."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.levels: list[str] = []

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self.levels.append(self._conn.execute("SHOW synchronous_commit").fetchone()[0])
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_only_a_volatile_batch_commits_with_synchronous_commit_off_and_for_itself_alone(
    url: str,
) -> None:
    db = PgJobDB.open(url, ManualClock())
    try:
        recorder = CommitRecorder(db._conn)
        db._conn = recorder  # type: ignore[assignment]
        (job,) = batch(db, [InsertJob(make_spec())])
        assert isinstance(job, Job)
        moves: list[WriteMessage] = [
            Transition(job.id, JobState.LOADING),
            Transition(job.id, JobState.RUNNING),
        ]
        assert all(isinstance(o, Job) for o in batch(db, moves, volatile=True))
        batch(db, [Transition(job.id, JobState.SUCCEEDED, result="ok")])
        db._conn = recorder._conn
        assert recorder.levels == ["on", "off", "on"]
        assert (db.commits, db.volatile_commits) == (3, 1)
        assert db.durability() == ("wal", "on"), "SET LOCAL ended with its transaction"
        refused = batch(db, [InsertJob(make_spec(2))], volatile=True)
        assert isinstance(refused[0], StoreError) and "volatile batch" in str(refused[0])
    finally:
        db.close()


def test_an_insert_whose_id_clashes_fails_alone_and_the_rest_of_the_batch_commits(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class SameId:
        @staticmethod
        def from_timestamp(_: float) -> str:
            return "01HZZZZZZZZZZZZZZZZZZZZZZZ"

    db = PgJobDB.open(url, ManualClock())
    try:
        (before,) = batch(db, [InsertJob(make_spec(0))])
        assert isinstance(before, Job)
        monkeypatch.setattr(_postgres, "ULID", SameId)
        first, clash = batch(
            db,
            [
                InsertJob(make_spec(1)),
                InsertJob(make_spec(2)),
                Transition(before.id, JobState.CANCELLED),
            ],
        )[:2]
        assert isinstance(first, Job) and first.seq > before.seq
        assert isinstance(clash, StoreError) and "duplicate key" in str(clash)
        assert db.get(first.id) == first and db.get(before.id).state is JobState.CANCELLED
        assert db.count_by_state()["queued"] == 1
    finally:
        db.close()


def test_a_database_of_version_one_is_migrated_and_its_jobs_read_back(url: str) -> None:
    spec = make_spec()
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        assert migrate(conn, "test", PG_MIGRATIONS[:1]) == 0
        conn.execute(
            "INSERT INTO jobs (id, state, lane, caller, model, priority, spec, created_at, "
            "updated_at) VALUES ('01OLD', 'queued', 'external', 'alice', 'llama3.2', 1, %s, 1, 1)",
            (json.dumps(spec.to_dict()),),
        )
    db = PgJobDB.open(url, ManualClock())
    try:
        assert db.schema_version() == SCHEMA_VERSION == len(PG_MIGRATIONS) == 6
        (old,) = db.queued_jobs()
        assert (old.id, old.spec, old.backend, old.segments) == ("01OLD", spec, None, ())
        (after,) = batch(db, [InsertJob(make_spec(1))])
        assert isinstance(after, Job) and after.seq == old.seq + 1
    finally:
        db.close()


def test_a_database_from_a_newer_gpulane_is_refused(url: str) -> None:
    PgJobDB.open(url, ManualClock()).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE gpulane_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer than the 6"):
        PgJobDB.open(url, ManualClock())


def test_a_wrong_password_or_no_server_is_refused_naming_the_database_and_the_cause(
    url: str,
) -> None:
    wrong = url.replace(password_of(url), "not-the-password")
    with pytest.raises(StoreError, match="authentication failed") as refused:
        PgJobDB.open(wrong, ManualClock())
    assert redact(wrong).replace(":***", "") in str(refused.value)
    assert "not-the-password" not in str(refused.value)
    nowhere = "postgresql://someone:secret@127.0.0.1:1/jobs"  # port 1: nothing listens
    with pytest.raises(StoreError, match="the connection to the server failed") as refused:
        PgJobDB.open(nowhere, ManualClock(), connect_timeout_s=2)
    assert "postgresql://someone@127.0.0.1:1/jobs" in str(refused.value)
    assert "secret" not in str(refused.value)


def test_a_lane_on_postgres_runs_jobs_and_its_queue_survives_a_restart(url: str) -> None:
    clock = ManualClock()
    config = Config(store=StoreSettings(url=url), limits=Limits.off())
    first = FakeGpu(clock)
    with GpuLane.start(config, gpu=first, clock=clock) as lane:
        ids = [lane.submit(make_spec(n), detach=True).job_id for n in range(4)]
        first.next_call().finish("one")
        started = first.next_call()  # left running when the lane stops
        assert lane.ref_for("store").ask(StoreSnapshot())["path"] == _postgres.redact(url)
    assert started.request.messages[-1].content == "question 1"
    ran: list[str] = []

    def finish(call: FakeCall) -> None:
        ran.append(call.request.messages[-1].content)
        call.finish("ok")

    with GpuLane.start(config, gpu=FakeGpu(clock, script=finish), clock=clock) as lane:
        quiesce()
        assert ran == ["question 1", "question 2", "question 3"]
        assert [lane.get(job_id).state for job_id in ids] == [JobState.SUCCEEDED] * 4
        assert lane.get(ids[0]).result == "one"


class SpoiledRead:
    """Wraps the engine's connection; a read of a job by id runs a statement that fails in
    the server, spoiling the open transaction as a real failure there would."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("SELECT") and sql.endswith("WHERE id = ?"):
            return self._conn.execute("SELECT 1 / 0")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_batch_whose_transaction_a_failed_read_spoiled_fails_whole_and_commits_nothing(
    url: str,
) -> None:
    db = PgJobDB.open(url, ManualClock())
    try:
        (done,) = batch(db, [InsertJob(make_spec(0))])
        assert isinstance(done, Job)
        batch(db, [Transition(done.id, JobState.CANCELLED)])  # ended: no longer in memory
        real = db._conn
        db._conn = SpoiledRead(real)  # type: ignore[assignment]
        writes: list[WriteMessage] = [
            InsertJob(make_spec(1)),
            Transition(done.id, JobState.QUEUED),
            InsertJob(make_spec(2)),
        ]
        it = iter(writes)
        outcomes = db.write_batch(lambda: next(it, None))
        db._conn = real
        assert len(outcomes) == 2 and all(isinstance(o, StoreError) for o in outcomes)
        assert "division by zero" in str(outcomes[1]) and outcomes[0] is outcomes[1]
        assert next(it) == writes[2], "the batch stopped taking writes"
        assert db.count_by_state()["queued"] == 0 and db.queued_jobs() == ()
        (after,) = batch(db, [InsertJob(make_spec(3))])
        assert isinstance(after, Job), "the next batch writes"
    finally:
        db.close()
