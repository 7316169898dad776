"""Read-only access to a gpulane PostgreSQL job database, for a gateway that follows
(docs/architecture.md section 14): it runs no lane and no JobStore, yet answers ``GET
/jobs/{ref}`` and ``GET /jobs`` from the database the leader writes.

One connection under a lock, not a pool: a follower's reads are a handful of indexed
selects (by id, by seq, a list with a LIMIT) that take well under a millisecond in the
server, so queueing them costs little, and a connection made on the caller's thread brings
its failure back with its cause (a wrong password, no server), which a pool's background
connect turns into a bare time-out. The session is read-only
(``default_transaction_read_only``): the leader is the one writer of the queue. A
connection the server ended while it sat idle (a restart) is replaced once, at the next
read, which then runs again: every read is safe to repeat.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from actors.stores._base import SELECT_BY_ID, SELECT_BY_SEQ, list_query
from actors.stores._outbox import Outbox
from actors.stores._postgres import CONNECT_TIMEOUT_S, PG_OUTBOX, Adapted, explain, redact
from actors.stores._rows import job_from_row
from protocol.errors import JobNotFoundError, StoreError
from protocol.job import Job
from protocol.messages import ListJobs

__all__ = ["PgJobReader"]

T = TypeVar("T")

APPLICATION_NAME = "gpulane follower reader"  # how pg_stat_activity names its session


class PgJobReader:
    """The jobs of the PostgreSQL database at ``url``, as the leader's store answers them
    (``EngineBase.get``, ``get_by_seq``, ``list_jobs``: the same rows, decoded by
    ``job_from_row``, each ended job with its webhook delivery). Thread-safe; blocking, so
    an event loop calls it from a worker thread. Errors are StoreErrors naming the database
    without its password."""

    def __init__(self, url: str, *, connect_timeout_s: int = CONNECT_TIMEOUT_S) -> None:
        self.name = redact(url)  # what errors name the database by
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def get(self, ref: str | int) -> Job:
        """The job with this id (a str) or sequence number (an int); JobNotFoundError when
        there is none."""
        jobs = self._read(SELECT_BY_SEQ if isinstance(ref, int) else SELECT_BY_ID, (ref,))
        if not jobs:
            raise JobNotFoundError(ref)
        return jobs[0]

    def list_jobs(self, query: ListJobs) -> tuple[Job, ...]:
        """Jobs matching every filter in ``query``, newest first unless ``oldest_first``:
        the leader's store's query (``_base.list_query``)."""
        select = list_query(query)
        return () if select is None else self._read(*select)

    def ping(self) -> None:
        """Ask the server ``SELECT 1``; a StoreError naming the database when it cannot."""
        self._run(lambda conn: conn.execute("SELECT 1"))

    def close(self) -> None:
        """Close the connection (a later read opens another)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- helpers --------------------------------------------------------------------

    def _read(self, sql: str, params: tuple[Any, ...]) -> tuple[Job, ...]:
        """The jobs of ``sql``'s rows (``?`` marks), each ended one with its delivery."""

        def read(conn: Adapted) -> tuple[Job, ...]:
            rows = conn.execute(sql, params).fetchall()
            outbox = Outbox(conn, self._error, errors=(psycopg.Error,), sql=PG_OUTBOX)
            return tuple(outbox.attach(job_from_row(row)) for row in rows)

        return self._run(read)

    def _run(self, work: Callable[[Adapted], T]) -> T:
        """``work`` on the connection, opened if need be; once more on a new connection
        when the server had ended the one kept from before."""
        with self._lock:
            kept = self._conn is not None and not self._conn.closed
            try:
                return work(Adapted(self._connection()))
            except psycopg.Error as exc:
                if not (kept and self._conn is not None and self._conn.closed):
                    raise self._error("cannot read", exc) from exc
            try:
                return work(Adapted(self._connection()))
            except psycopg.Error as exc:
                raise self._error("cannot read", exc) from exc

    def _connection(self) -> psycopg.Connection[Any]:
        """The open connection, or a new read-only one (under the lock)."""
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=self._connect_timeout_s,
                application_name=APPLICATION_NAME,
            )
            try:
                conn.execute("SET default_transaction_read_only = on")
            except psycopg.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _error(self, what: str, exc: Exception) -> StoreError:
        """The StoreError for a failure of the driver, worded as the leader's store words it."""
        error = StoreError(f"job database {self.name}: {what}: {explain(exc)}")
        error.__cause__ = exc
        return error
