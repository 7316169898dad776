"""The PostgreSQL job database (``store.url``): plain, thread-free code that the JobStore
actor drives, with the same surface as SQLite's ``JobDB`` (docs/architecture.md section 14).

One psycopg connection, in autocommit mode with explicit transactions, does everything: the
actor is one thread, so a pool would only add connections. The store owns the database
alone, so the jobs kept in memory (``_base.EngineBase``) stay true: a leader among several
gateways by its lease, every write fenced by the lease's token (``actors/lease.py``, the
schema's ``gpulane_fence`` trigger); a store on its own by a session-level advisory lock
that refuses a second store, as SQLite's exclusive file lock does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from ulid import ULID

from actors.lease import check_fence, session_name
from actors.runtime import Clock
from actors.stores._base import EngineBase, check_seconds
from actors.stores._outbox import KEEPS_PENDING, Outbox, OutboxSQL
from actors.stores._pg_schema import FENCED_SQLSTATE, migrate
from actors.stores._rows import BatchOutcome, WriteMessage, is_volatile, to_json
from protocol.cluster import LeaseHold, LeaseLostError
from protocol.enums import TERMINAL_STATES, JobState
from protocol.errors import GpulaneError, StoreError
from protocol.job import Job
from protocol.messages import InsertJob
from protocol.spec import JobSpec

__all__ = [
    "CONNECT_TIMEOUT_S",
    "LOCK_KEY",
    "PG_OUTBOX",
    "Adapted",
    "PgJobDB",
    "explain",
    "redact",
]

# How long opening waits for the server before calling it unreachable.
CONNECT_TIMEOUT_S = 5
# The advisory lock a store holds on its database (advisory locks are per database).
LOCK_KEY = int.from_bytes(b"gpulane", "big")

# A row of ``_numbered_insert``: its place in submit order, then 9 parameters (``_values``).
_ROW = "({}, %s, %s, %s, %s, %s::integer, %s, %s::text, %s::float8, %s::float8)"
# Rows per INSERT statement: 9 parameters each, well under PostgreSQL's 65535.
_ROWS_PER_INSERT = 500
_TERMINAL_VALUES = ", ".join(repr(s.value) for s in sorted(TERMINAL_STATES, key=str))
_PRUNE = (
    "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE finished_at < %s "
    f"AND state IN ({_TERMINAL_VALUES}) AND {KEEPS_PENDING} ORDER BY finished_at LIMIT %s) "
    "RETURNING state"
)
# The webhook outbox's statements on PostgreSQL (the store's and the follower's reader's).
PG_OUTBOX = OutboxSQL(
    begin="BEGIN",
    record=(
        "UPDATE webhook_outbox SET state = ?, next_at = ?, ended_at = ?, "
        "attempts = (attempts::jsonb || jsonb_build_array(?::jsonb))::text "
        "WHERE job_seq = ? AND state = 'pending'"
    ),
    read=(
        "SELECT j.id, j.caller, j.state, w.url, w.body, w.created_at, "
        "jsonb_array_length(w.attempts::jsonb) FROM webhook_outbox w "
        "JOIN jobs j ON j.seq = w.job_seq WHERE w.job_seq = ? AND w.state = 'pending'"
    ),
)

# The outcome of an insert prepared but not yet written.
_NOT_YET = StoreError("an insert of the batch was not written (a bug if anyone sees this)")
# An insert prepared before its sequence number is known: (index in the batch's outcomes,
# spec, id, time, retry_of, the spec as JSON).
_Pending = tuple[int, JobSpec, str, float, str | None, str]

_CAUSES = {
    "28P01": "authentication failed (check the user and password in store.url)",
    "28000": "the server refused the login (check the user in store.url and pg_hba.conf)",
    "3D000": "the database does not exist (create it, or fix the name in store.url)",
    "42501": "permission denied (the role in store.url needs to own the database)",
    "53100": "the server's disk is full",
    "57P01": "the server was shut down or the connection was ended by an administrator",
    "57P03": "the server is starting up or shutting down",
}


def redact(url: str) -> str:
    """``url`` as errors and the snapshot name it: user, host, port and database, never the
    password (also not one given as a query parameter)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(an unreadable URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


def explain(exc: Exception) -> str:
    """psycopg's error on one line, with the likely cause where its SQLSTATE tells it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None) or ""
    cause = _CAUSES.get(sqlstate)
    if cause is None and (sqlstate.startswith("08") or isinstance(exc, psycopg.OperationalError)):
        cause = "the connection to the server failed or was lost"
    return f"{cause} ({text})" if cause else text


class Adapted:
    """psycopg's connection as the shared code uses sqlite3's: ``?`` marks (``%`` is
    escaped), and ``in_transaction`` while a transaction is open, also one a failed
    statement has spoiled (it still needs its ROLLBACK)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    @property
    def in_transaction(self) -> bool:
        status = self.raw.info.transaction_status
        return status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    @property
    def usable(self) -> bool:
        """A transaction is open and no statement has spoiled it."""
        return self.raw.info.transaction_status is TransactionStatus.INTRANS

    def execute(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor[Any]:
        return self.raw.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(parameters))


class PgJobDB(EngineBase):
    """One open PostgreSQL job database: schema checked and migrated, the advisory lock held.

    Group commit as SQLite's: one transaction per batch. Unlike SQLite, a failed statement
    spoils PostgreSQL's whole transaction, so a bulk INSERT after other writes runs under a
    savepoint (a row that fails, such as a clashing id, fails alone), as does a terminal
    move with its webhook delivery (``_outbox``); a bulk INSERT that is the transaction's
    first write runs without one, and if it fails the transaction begins again, which
    undoes nothing else. Any other statement that fails spoils the batch, which then fails
    whole (a plain transition fails in SQL only by losing the server). Sequence numbers
    come from ``jobs_seq``, drawn by the INSERT itself in submit order; a failed statement
    or a rolled-back batch leaves a gap, as PostgreSQL's sequences do.
    """

    _errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)
    _begin: ClassVar[str] = "BEGIN"
    _aggregate_ids: ClassVar[str] = "string_agg(id, ',' ORDER BY seq)"
    _conn: Adapted

    def __init__(self, conn: psycopg.Connection[Any], name: str, clock: Clock) -> None:
        adapted = Adapted(conn)
        outbox = Outbox(adapted, self._store_error, errors=self._errors, sql=PG_OUTBOX)
        super().__init__(adapted, name, clock, outbox)

    @classmethod
    def open(
        cls,
        url: str,
        clock: Clock,
        *,
        lease: LeaseHold | None = None,
        connect_timeout_s: int = CONNECT_TIMEOUT_S,
    ) -> PgJobDB:
        """Connect, create or migrate the schema, and own the database: with ``lease`` (a
        leader among several gateways) every write is fenced by its token, and a lease
        already taken over raises LeaseLostError; without, the store's advisory lock
        refuses a second store. Raise StoreError naming the database (without its
        password) and the cause."""
        name = redact(url)
        try:
            conn = psycopg.connect(
                url,
                autocommit=True,
                connect_timeout=connect_timeout_s,
                application_name=(
                    "gpulane job store" if lease is None else session_name("store", lease.holder)
                ),
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot open job database {name}: {explain(exc)}") from exc
        try:
            if lease is None:
                _lock(conn, name)
            with conn.transaction():
                migrate(conn, name)
            if lease is not None:
                _fence(conn, lease)
            return cls(conn, name, clock)
        except StoreError:
            conn.close()
            raise
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"cannot use job database {name}: {explain(exc)}") from exc

    def close(self) -> None:
        """Close the connection, which releases the advisory lock."""
        self._conn.raw.close()

    def _explain(self, exc: Exception) -> str:
        return explain(exc)

    def _store_error(self, what: str, exc: Exception) -> StoreError:
        """StoreError naming the database; LeaseLostError when the fence refused the write."""
        if getattr(exc, "sqlstate", None) != FENCED_SQLSTATE:
            return super()._store_error(what, exc)
        diag = getattr(exc, "diag", None)
        error = LeaseLostError(
            f"job database {self.path}: {what}: {getattr(diag, 'message_primary', exc)}; "
            "this gateway no longer leads and makes no more writes"
        )
        error.__cause__ = exc
        return error

    # --- writes ---------------------------------------------------------------------

    def write_batch(
        self, take: Callable[[], WriteMessage | None], *, volatile: bool = False
    ) -> list[BatchOutcome]:
        """Apply the writes ``take`` hands out, in one transaction, and commit once: the
        contract of ``JobDB.write_batch``.

        With ``volatile`` the batch commits with ``SET LOCAL synchronous_commit = off``: the
        commit answers before its WAL record is flushed. PostgreSQL flushes WAL in order,
        so a crash loses at most a tail of such commits, never a durable one acknowledged
        after them; and recovery puts loading and running jobs back to queued anyway.
        """
        try:
            return self._write_batch(take, volatile=volatile)
        except BaseException:
            if self._conn.in_transaction:
                self._rollback()
                self._forget_batch()
            raise

    def _write_batch(
        self, take: Callable[[], WriteMessage | None], *, volatile: bool
    ) -> list[BatchOutcome]:
        try:
            self._conn.execute("BEGIN")
            if volatile:
                self._conn.execute("SET LOCAL synchronous_commit = off")
        except psycopg.Error as exc:
            self._rollback()
            error = self._store_error("cannot start a write", exc)
            return [] if take() is None else [error]
        outcomes: list[BatchOutcome] = []
        pending: list[_Pending] = []
        while True:
            message = take()
            if message is None:
                if not pending:
                    break
                self._insert(pending, outcomes)
                pending = []
                if not self._conn.usable:
                    lost = next(
                        o for o in outcomes if isinstance(o, StoreError) and o is not _NOT_YET
                    )
                    return self._give_up(outcomes, lost)
                continue
            try:
                if volatile and not is_volatile(message):
                    raise StoreError("a durable write cannot join a volatile batch (a bug)")
                if isinstance(message, InsertJob):
                    pending.append(self._prepare_insert(len(outcomes), message))
                    outcomes.append(_NOT_YET)  # replaced by _insert, or by _give_up
                else:
                    outcomes.append(self._transition(message))
            except GpulaneError as exc:  # a read of the job that failed is a StoreError too
                outcomes.append(exc)
            except (TypeError, ValueError) as exc:  # encoding, before any SQL of this write
                outcomes.append(StoreError(f"cannot encode {type(message).__name__}: {exc}"))
            except psycopg.Error as exc:
                outcomes.append(self._store_error("cannot write", exc))
            if not self._conn.usable:  # a failure no savepoint undid: the batch is spoiled
                return self._give_up(outcomes, self._spoiled(outcomes))
        try:
            # PostgreSQL answers COMMIT of a spoiled transaction with a silent ROLLBACK, so
            # the checks above keep a spoiled batch from ever reaching it.
            self._conn.execute("COMMIT")
        except psycopg.Error as exc:
            return self._give_up(outcomes, self._store_error("cannot commit", exc))
        self._committed(outcomes, relaxed=volatile)
        return outcomes

    def _spoiled(self, outcomes: list[BatchOutcome]) -> StoreError:
        """The error that spoiled the batch: the last write's, when it is the store's."""
        last = outcomes[-1]
        if isinstance(last, StoreError):
            return last
        return StoreError(f"job database {self.path}: cannot write: the transaction failed")

    def _give_up(self, outcomes: list[BatchOutcome], error: StoreError) -> list[BatchOutcome]:
        """Roll the batch back; its successes, and its inserts not yet written, become
        ``error``."""
        self._rollback()
        return self._abandon([error if o is _NOT_YET else o for o in outcomes], error)

    def _rollback(self) -> None:
        """End a spoiled or failed transaction. On a lost connection there is nothing to
        end: the server rolled it back, and the write's own error says why."""
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except psycopg.OperationalError:
                pass

    def _prepare_insert(self, index: int, message: InsertJob) -> _Pending:
        """What an insert needs but its sequence number; the spec encoded first, so a spec
        that cannot be encoded takes no number."""
        self._check_retry_of(message.retry_of)
        spec_json = to_json(message.spec.to_dict())
        now = self._clock.now()
        return (
            index,
            message.spec,
            str(ULID.from_timestamp(now)),
            now,
            message.retry_of,
            spec_json,
        )

    def _insert(self, pending: list[_Pending], outcomes: list[BatchOutcome]) -> None:
        """Write the prepared inserts, a bulk INSERT per ``_ROWS_PER_INSERT`` that numbers
        them itself (one round trip); a chunk that fails is tried row by row, each under a
        savepoint. A chunk that is the transaction's first write (a batch of submits) runs
        without a savepoint, two round trips fewer; if it fails, the transaction is begun
        again before the rows are tried."""
        for start in range(0, len(pending), _ROWS_PER_INSERT):
            chunk = pending[start : start + _ROWS_PER_INSERT]
            first = all(o is _NOT_YET for o in outcomes)
            try:
                self._write_rows(chunk, outcomes, savepoint=not first)
                continue
            except psycopg.Error as exc:
                error = exc
            if first:
                self._rollback()
                try:
                    self._conn.execute("BEGIN")
                except psycopg.Error as exc:
                    error = exc
            if not self._conn.usable:
                self._fail_all(pending, outcomes, self._store_error("cannot write", error))
                return
            for item in chunk:
                try:
                    self._write_rows([item], outcomes, savepoint=True)
                except psycopg.Error as row_exc:
                    outcomes[item[0]] = self._store_error("cannot write", row_exc)
                    if not self._conn.usable:
                        return

    def _write_rows(
        self, chunk: list[_Pending], outcomes: list[BatchOutcome], *, savepoint: bool
    ) -> None:
        """Insert ``chunk`` in one statement; each row's Job goes to its place in
        ``outcomes`` once the statement succeeded."""
        sql = _numbered_insert(len(chunk))
        params = [value for item in chunk for value in _values(item)]
        if savepoint:
            rows = self._in_savepoint(sql, params)
        else:
            rows = self._conn.raw.execute(sql, params).fetchall()
        seqs: dict[str, int] = dict(rows)
        for index, spec, job_id, now, _, _ in chunk:
            outcomes[index] = Job(
                id=job_id, seq=seqs[job_id], spec=spec, state=JobState.QUEUED,
                created_at=now, updated_at=now,
            )  # fmt: skip

    def _in_savepoint(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Run ``sql`` so that its failure undoes only itself (the transaction stays usable
        unless the connection is lost); return its rows."""
        raw = self._conn.raw
        raw.execute("SAVEPOINT bulk_insert")
        try:
            rows = raw.execute(sql, params).fetchall()
        except psycopg.Error:
            if self._conn.in_transaction:
                raw.execute("ROLLBACK TO SAVEPOINT bulk_insert")
            raise
        raw.execute("RELEASE SAVEPOINT bulk_insert")
        return rows

    def _fail_all(
        self, pending: list[_Pending], outcomes: list[BatchOutcome], error: StoreError
    ) -> None:
        for index, *_ in pending:
            outcomes[index] = error

    def prune(self, older_than_s: float, limit: int) -> int:
        """Delete up to ``limit`` terminal jobs that finished more than ``older_than_s``
        seconds ago, oldest first, in a transaction of its own; autovacuum reclaims the
        space (no VACUUM here: it would hold the store)."""
        check_seconds(older_than_s)
        cutoff = self._clock.now() - older_than_s
        try:
            deleted = [row[0] for row in self._conn.raw.execute(_PRUNE, (cutoff, limit))]
        except psycopg.Error as exc:
            raise self._store_error("cannot prune", exc) from exc
        self._counts.deleted(deleted)
        return len(deleted)

    # --- what it says of itself -------------------------------------------------------

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        return int(self._read_one("SELECT version FROM gpulane_schema")[0])

    def durability(self) -> tuple[str, str]:
        """("wal", the server's ``synchronous_commit``, e.g. "on") for durable batches."""
        return "wal", str(self._read_one("SHOW synchronous_commit")[0])


@functools.cache
def _numbered_insert(rows: int) -> str:
    """The INSERT of ``rows`` prepared inserts, numbered from ``jobs_seq`` by the statement
    itself in submit order: the n-th smallest number drawn goes to the n-th row, whatever
    order nextval ran in. It returns (id, seq) per row."""
    values = ", ".join(_ROW.format(place) for place in range(1, rows + 1))
    return (
        f"WITH drawn AS (SELECT nextval('jobs_seq') AS seq FROM generate_series(1, {rows})), "
        "numbered AS (SELECT seq, row_number() OVER (ORDER BY seq) AS place FROM drawn) "
        "INSERT INTO jobs (seq, id, state, lane, caller, model, priority, spec, retry_of, "
        "created_at, updated_at) SELECT numbered.seq, v.id, 'queued', v.lane, v.caller, "
        "v.model, v.priority, v.spec, v.retry_of, v.created_at, v.updated_at FROM numbered "
        f"JOIN (VALUES {values}) AS v (place, id, lane, caller, model, priority, spec, "
        "retry_of, created_at, updated_at) USING (place) RETURNING id, seq"
    )


def _values(item: _Pending) -> tuple[Any, ...]:
    """A prepared insert's parameters in ``_ROW``."""
    _, spec, job_id, now, retry_of, spec_json = item
    return (job_id, spec.lane.value, spec.caller, spec.model, int(spec.priority), spec_json,
            retry_of, now, now)  # fmt: skip


def _fence(conn: psycopg.Connection[Any], lease: LeaseHold) -> None:
    """Name the lease in the session, so the schema's fence checks every write; refuse a
    lease already taken over."""
    conn.execute("SELECT set_config('gpulane.holder', %s, false)", (lease.holder,))
    conn.execute("SELECT set_config('gpulane.token', %s, false)", (str(lease.token),))
    with conn.transaction():
        check_fence(conn, lease)


def _lock(conn: psycopg.Connection[Any], name: str) -> None:
    """Take the store's advisory lock for the session, or refuse naming who holds it."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
    if row is not None and row[0]:
        return
    holder = conn.execute(
        "SELECT l.pid, a.application_name, a.client_addr FROM pg_locks l "
        "LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
        "AND l.granted AND l.database = (SELECT oid FROM pg_database "
        "WHERE datname = current_database()) "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
        (LOCK_KEY,),
    ).fetchone()
    who = "" if holder is None else f" (server process {holder[0]}, {holder[1] or 'unnamed'})"
    raise StoreError(
        f"job database {name} is in use by another gpulane store{who}: one store owns a "
        "database; stop the other gateway or point store.url at another database"
    )
