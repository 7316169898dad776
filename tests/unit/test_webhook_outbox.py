"""The webhook outbox in the thread-free job database: a delivery is written with the job's
end or not at all, its attempts are recorded, pruning keeps it while it is pending, and
the schema reaches it from older files (migration 4). The tests on ``db`` run on both
engines (``store_engines``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from job_store_helpers import make_spec
from store_engines import StoreEngine

from actors.runtime import ManualClock
from actors.stores import (
    MIGRATIONS,
    SCHEMA_VERSION,
    BatchOutcome,
    JobDB,
    PgJobDB,
    WriteMessage,
    migrate,
)
from protocol import Job, JobSpec, JobState, StoreError
from protocol.messages import InsertJob, ListJobs, RecordWebhookAttempt, Transition
from protocol.webhook import PendingDelivery, WebhookAttempt, WebhookState

URL = "https://hooks.example.com/gpulane"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(engine_home: str, tmp_path: Path, clock: ManualClock) -> Iterator[JobDB | PgJobDB]:
    opened = StoreEngine.in_home(engine_home, tmp_path).open(clock)
    yield opened
    opened.close()


def batch(db: JobDB | PgJobDB, writes: Iterable[WriteMessage]) -> list[BatchOutcome]:
    it = iter(writes)
    return db.write_batch(lambda: next(it, None))


def hooked(n: int = 0) -> JobSpec:
    return make_spec(n).replace(webhook=URL)


def inserted(db: JobDB | PgJobDB, spec: JobSpec) -> Job:
    job = batch(db, [InsertJob(spec)])[0]
    assert isinstance(job, Job)
    return job


def succeed(db: JobDB | PgJobDB, job: Job, text: str = "the answer") -> Job:
    batch(db, [Transition(job.id, JobState.LOADING), Transition(job.id, JobState.RUNNING)])
    ended = batch(db, [Transition(job.id, JobState.SUCCEEDED, result=text)])[0]
    assert isinstance(ended, Job)
    return ended


def test_a_job_that_ends_gets_its_pending_delivery_in_the_same_commit(
    db: JobDB | PgJobDB, clock: ManualClock
) -> None:
    job = inserted(db, hooked())
    batch(db, [Transition(job.id, JobState.LOADING), Transition(job.id, JobState.RUNNING)])
    commits = db.commits
    clock.advance(3)
    ended = batch(db, [Transition(job.id, JobState.SUCCEEDED, result="the answer")])[0]
    assert isinstance(ended, Job)
    assert db.commits == commits + 1, "the delivery took no commit of its own"
    assert ended.webhook is not None
    assert (ended.webhook.state, ended.webhook.next_attempt_at) == (
        WebhookState.PENDING, clock.now(),
    )  # fmt: skip
    delivery = db.outbox.read(ended.seq)
    assert isinstance(delivery, PendingDelivery)
    assert (delivery.job_id, delivery.caller, delivery.event, delivery.url, delivery.attempts) == (
        job.id, "alice", "job.succeeded", URL, 0,
    )  # fmt: skip
    body = json.loads(delivery.body)
    assert body["event"] == "job.succeeded"
    assert {k: body["job"][k] for k in ("id", "seq", "state", "result", "caller", "model")} == {
        "id": job.id, "seq": job.seq, "state": "succeeded", "result": "the answer",
        "caller": "alice", "model": "llama3.2",
    }  # fmt: skip
    assert "messages" not in body["job"], "the body reports the outcome, not the prompt"
    assert db.outbox.pending() == ((ended.seq, clock.now()),)


def test_a_job_without_a_webhook_writes_nothing_to_the_outbox(db: JobDB | PgJobDB) -> None:
    ended = succeed(db, inserted(db, make_spec()))
    assert ended.webhook is None
    assert db.outbox.pending() == ()
    assert db.outbox.read(ended.seq) is None


def test_failed_and_cancelled_jobs_get_a_delivery_with_their_event(db: JobDB | PgJobDB) -> None:
    failing = inserted(db, hooked(1))
    batch(db, [Transition(failing.id, JobState.LOADING)])
    batch(db, [Transition(failing.id, JobState.FAILED, error="model not found")])
    cancelled = inserted(db, hooked(2))
    batch(db, [Transition(cancelled.id, JobState.CANCELLED)])
    failed_delivery = db.outbox.read(failing.seq)
    cancelled_delivery = db.outbox.read(cancelled.seq)
    assert failed_delivery is not None and cancelled_delivery is not None
    assert failed_delivery.event == "job.failed"
    assert json.loads(failed_delivery.body)["job"]["error"] == "model not found"
    assert cancelled_delivery.event == "job.cancelled"


def test_when_the_delivery_cannot_be_written_the_jobs_end_fails_with_it_and_the_batch_goes_on(
    db: JobDB | PgJobDB,
) -> None:
    job = inserted(db, hooked())
    batch(db, [Transition(job.id, JobState.LOADING), Transition(job.id, JobState.RUNNING)])
    # A row already in the outbox under the job's number makes the delivery's INSERT fail.
    db._conn.execute(
        "INSERT INTO webhook_outbox (job_seq, url, body, state, created_at) "
        "VALUES (?, 'x', ?, 'delivered', 0)",
        (job.seq, b""),
    )
    other = inserted(db, make_spec(9))
    outcomes = batch(
        db,
        [
            Transition(job.id, JobState.SUCCEEDED, result="lost"),
            Transition(other.id, JobState.CANCELLED),
        ],
    )
    assert isinstance(outcomes[0], StoreError)
    assert isinstance(outcomes[1], Job) and outcomes[1].state is JobState.CANCELLED
    kept = db.get(job.id)
    assert (kept.state, kept.result) == (JobState.RUNNING, None), "the move was undone too"
    row = db._conn.execute("SELECT state FROM jobs WHERE seq = ?", (job.seq,)).fetchone()
    assert row == ("running",)


def test_each_attempt_is_recorded_and_the_job_shows_them_all(
    db: JobDB | PgJobDB, clock: ManualClock
) -> None:
    ended = succeed(db, inserted(db, hooked()))
    first = WebhookAttempt(at=clock.now(), status=500, error="HTTP 500", seconds=0.01)
    due = clock.now() + 5
    assert db.outbox.record(RecordWebhookAttempt(ended.seq, first, WebhookState.PENDING, due))
    delivery = db.outbox.read(ended.seq)
    assert delivery is not None and delivery.attempts == 1
    assert db.outbox.pending() == ((ended.seq, due),)
    second = WebhookAttempt(at=due, status=200, seconds=0.02)
    assert db.outbox.record(RecordWebhookAttempt(ended.seq, second, WebhookState.DELIVERED))
    assert db.outbox.read(ended.seq) is None, "a delivered one is no longer pending"
    assert db.outbox.pending() == ()
    assert not db.outbox.record(RecordWebhookAttempt(ended.seq, second, WebhookState.DELIVERED))
    for shown in (
        db.get(ended.id),
        db.get_by_seq(ended.seq),
        db.list_jobs(ListJobs(limit=5))[0],
    ):
        assert shown.webhook is not None
        assert shown.webhook.state is WebhookState.DELIVERED
        assert shown.webhook.deliveries == (first, second)
        assert (shown.webhook.next_attempt_at, shown.webhook.ended_at) == (None, due)


def test_pending_deliveries_come_soonest_due_first(db: JobDB | PgJobDB, clock: ManualClock) -> None:
    early, late = (succeed(db, inserted(db, hooked(n))) for n in (1, 2))
    attempt = WebhookAttempt(at=clock.now(), status=503)
    db.outbox.record(RecordWebhookAttempt(early.seq, attempt, WebhookState.PENDING, 1e10))
    assert [seq for seq, _ in db.outbox.pending()] == [late.seq, early.seq]


def test_pruning_keeps_a_job_whose_delivery_is_pending_and_takes_a_delivered_one_with_its_row(
    db: JobDB | PgJobDB, clock: ManualClock
) -> None:
    waiting, done = (succeed(db, inserted(db, hooked(n))) for n in (1, 2))
    attempt = WebhookAttempt(at=clock.now(), status=200)
    db.outbox.record(RecordWebhookAttempt(done.seq, attempt, WebhookState.DELIVERED))
    clock.advance(100)
    assert db.prune(10, 100) == 1
    assert [job.id for job in db.list_jobs(ListJobs(limit=5))] == [waiting.id]
    rows = db._conn.execute("SELECT job_seq FROM webhook_outbox").fetchall()
    assert rows == [(waiting.seq,)], "the delivered job's row went with it"
    db.outbox.record(RecordWebhookAttempt(waiting.seq, attempt, WebhookState.FAILED))
    assert db.prune(10, 100) == 1
    assert db._conn.execute("SELECT COUNT(*) FROM webhook_outbox").fetchone() == (0,)


@pytest.mark.parametrize("version", [2, 3])
def test_a_file_of_version_two_or_three_is_migrated_to_the_outbox(
    tmp_path: Path, clock: ManualClock, version: int
) -> None:
    path = str(tmp_path / f"v{version}.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    migrate(conn, path, MIGRATIONS[:version])
    spec = json.dumps(make_spec().to_dict())
    conn.execute(
        "INSERT INTO jobs (id, state, lane, caller, model, priority, spec, created_at, "
        "updated_at) VALUES ('01OLD', 'queued', 'external', 'alice', 'llama3.2', 1, ?, 1, 1)",
        (spec,),
    )
    conn.execute("COMMIT")
    conn.close()
    db = JobDB.open(path, clock)
    try:
        assert db.schema_version() == SCHEMA_VERSION == 6
        assert db.queued_jobs()[0].id == "01OLD"
        ended = succeed(db, inserted(db, hooked()))
        assert [seq for seq, _ in db.outbox.pending()] == [ended.seq]
    finally:
        db.close()
