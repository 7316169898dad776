"""The leader's lease and its fence on a real PostgreSQL (``actors/lease.py``, the schema's
``gpulane_fence`` trigger, ``PgJobDB.open(lease=...)``): who may take the lease, how a
takeover ends the old holder's sessions, and that a store whose lease was taken over
writes nothing more, by any path (a batch, pruning, recovery, or a transaction it had
open). Expiry is set in the row rather than waited for: no test waits on the clock.

Each test has a database of its own (``postgres_kit.fresh_database``); they skip naming the
missing server, and fail under CI.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from job_store_helpers import make_spec
from postgres_kit import fresh_database

from actors.lease import read_lease, release, renew, session_name, try_acquire
from actors.runtime import ManualClock
from actors.stores import BatchOutcome, PgJobDB, WriteMessage
from actors.stores._pg_schema import migrate
from actors.testing import wait_until
from protocol import Job, JobState
from protocol.cluster import LeaseHold, LeaseLostError
from protocol.messages import InsertJob, Transition


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as made:
        yield made


def lease_session(url: str, holder: str) -> psycopg.Connection[Any]:
    """A connection as a LeaseKeeper opens it: named for its holder, the schema migrated."""
    conn = psycopg.connect(url, autocommit=True, application_name=session_name("lease", holder))
    with conn.transaction():
        migrate(conn, "test")
    return conn


def expire(url: str) -> None:
    """Make the lease run out now, as a paused leader's would."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE gpulane_lease SET expires_at = now() - interval '1 second'")


def batch(db: PgJobDB, writes: list[WriteMessage]) -> list[BatchOutcome]:
    it = iter(writes)
    return db.write_batch(lambda: next(it, None))


def leading_store(url: str) -> tuple[LeaseHold, PgJobDB, Job]:
    """Gateway a's lease, its store fenced by it, and a job that store wrote."""
    hold = try_acquire(lease_session(url, "a#1"), "a#1", "a", "http://a:1", 3.0)
    assert hold is not None
    db = PgJobDB.open(url, ManualClock(), lease=hold)
    (job,) = batch(db, [InsertJob(make_spec())])
    assert isinstance(job, Job)
    return hold, db, job


def row_of(url: str, job: Job) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT state, updated_at FROM jobs WHERE id = %s", (job.id,)).fetchone()
    assert row is not None
    return tuple(row)


def test_the_first_gateway_takes_a_free_lease_and_a_second_cannot_take_it_while_it_lives(
    url: str,
) -> None:
    a, b = lease_session(url, "a#1"), lease_session(url, "b#1")
    assert read_lease(a).holder is None and read_lease(a).token == 0
    hold = try_acquire(a, "a#1", "a", "http://a:1", 3.0)
    assert hold == LeaseHold("a#1", 1)
    assert try_acquire(b, "b#1", "b", "http://b:1", 3.0) is None
    seen = read_lease(b)
    assert (seen.holder, seen.node, seen.url, seen.token, seen.live) == (
        "a#1", "a", "http://a:1", 1, True,
    )  # fmt: skip
    assert seen.expires_in_s is not None and 0 < seen.expires_in_s <= 3.0
    assert renew(a, hold, 3.0), "the holder renews its own lease"


def test_a_lease_whose_holder_has_no_session_left_is_taken_at_once_with_the_next_token(
    url: str,
) -> None:
    a, b = lease_session(url, "a#1"), lease_session(url, "b#1")
    assert try_acquire(a, "a#1", "a", "http://a:1", 3.0) is not None
    a.close()  # the process died: its session ends although the lease has not run out
    wait_until(lambda: not read_lease(b).live, what="the server to see the session end")
    assert try_acquire(b, "b#1", "b", "http://b:1", 3.0) == LeaseHold("b#1", 2)


def test_an_expired_lease_is_taken_over_ending_the_old_holders_sessions_and_its_renewal(
    url: str,
) -> None:
    a, b = lease_session(url, "a#1"), lease_session(url, "b#1")
    old = try_acquire(a, "a#1", "a", "http://a:1", 3.0)
    assert old is not None
    expire(url)
    assert try_acquire(b, "b#1", "b", "http://b:1", 3.0) == LeaseHold("b#1", 2)
    with pytest.raises(psycopg.OperationalError):
        renew(a, old, 3.0)  # its session was ended by the takeover
    again = lease_session(url, "a#1")
    assert not renew(again, old, 3.0), "a reconnected old holder finds its token gone"


def test_a_released_lease_is_free_for_the_next_gateway(url: str) -> None:
    a, b = lease_session(url, "a#1"), lease_session(url, "b#1")
    hold = try_acquire(a, "a#1", "a", "http://a:1", 3.0)
    assert hold is not None
    release(a, hold)
    assert not read_lease(b).live
    assert try_acquire(b, "b#1", "b", "http://b:1", 3.0) == LeaseHold("b#1", 2)


def test_a_store_whose_lease_was_taken_over_writes_nothing_by_any_path(url: str) -> None:
    _, db, job = leading_store(url)
    # Another gateway takes the lease without ending this store's session (the fence, not
    # the ended session, must stop it).
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("UPDATE gpulane_lease SET holder = 'b#1', token = token + 1")
    before = row_of(url, job)
    (moved,) = batch(db, [Transition(job.id, JobState.LOADING)])
    assert isinstance(moved, LeaseLostError) and "taken over" in str(moved)
    (inserted,) = batch(db, [InsertJob(make_spec())])
    assert isinstance(inserted, LeaseLostError)
    with pytest.raises(LeaseLostError):
        db.recover()
    with pytest.raises(LeaseLostError):
        db.prune(0, 10)
    assert row_of(url, job) == before
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (1,)


def test_a_store_cannot_open_on_a_lease_already_taken_over(url: str) -> None:
    a = lease_session(url, "a#1")
    hold = try_acquire(a, "a#1", "a", "http://a:1", 3.0)
    assert hold is not None
    expire(url)
    assert try_acquire(lease_session(url, "b#1"), "b#1", "b", "http://b:1", 3.0) is not None
    with pytest.raises(LeaseLostError, match="token 1"):
        PgJobDB.open(url, ManualClock(), lease=hold)


def test_a_transaction_the_old_leader_had_open_cannot_commit_after_the_takeover(url: str) -> None:
    hold, _, job = leading_store(url)
    expire(url)  # first: a lease runs out by the clock, which no lock holds up
    # The old leader's store is paused inside a write: its transaction holds the lease row
    # for share, which would make a takeover wait for it.
    stalled = psycopg.connect(
        url, autocommit=True, application_name=session_name("store", hold.holder)
    )
    stalled.execute("SELECT set_config('gpulane.holder', %s, false)", (hold.holder,))
    stalled.execute("SELECT set_config('gpulane.token', %s, false)", (str(hold.token),))
    stalled.execute("BEGIN")
    stalled.execute("UPDATE jobs SET state = 'loading' WHERE id = %s", (job.id,))
    assert try_acquire(lease_session(url, "b#1"), "b#1", "b", "http://b:1", 3.0) is not None
    with pytest.raises(psycopg.OperationalError):
        stalled.execute("COMMIT")
    assert row_of(url, job)[0] == "queued"
