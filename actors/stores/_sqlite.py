"""The SQLite job database: plain, thread-free code that the JobStore actor drives.

Everything here runs on whichever thread calls it; the actor guarantees that only
one thread does at a time. Tests use it directly, without an actor.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any, ClassVar

from ulid import ULID

from actors.runtime import Clock
from actors.stores._base import EngineBase, check_seconds
from actors.stores._files import check_edges, check_location, explain, sync_mode
from actors.stores._outbox import Outbox
from actors.stores._pruning import finish_incremental_vacuum, prune_batch
from actors.stores._rows import BatchOutcome, WriteMessage, is_volatile, to_json
from actors.stores._schema import migrate
from protocol.enums import JobState
from protocol.errors import GpulaneError, StoreError
from protocol.job import Job
from protocol.messages import InsertJob
from protocol.spec import JobSpec

__all__ = ["BUSY_TIMEOUT_S", "JobDB"]

# How long opening waits for a lock held by someone else before calling the file locked.
BUSY_TIMEOUT_S = 1.0


_INSERT = (
    "INSERT INTO jobs (seq, id, state, lane, caller, model, priority, spec, retry_of, "
    "created_at, updated_at) VALUES "
)
_ROW = "(?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)"
# Rows per INSERT statement: 10 parameters each, well under SQLite's 32766.
_ROWS_PER_INSERT = 500


class JobDB(EngineBase):
    """One open SQLite job database: schema checked, WAL on, the file locked to this
    connection.

    ``locking_mode=EXCLUSIVE`` keeps the file locked for as long as it is open, so a
    second store on the same file fails at start instead of sharing it, and nothing else
    can write it: the jobs in memory (``_base.EngineBase``) stay true.
    """

    _errors: ClassVar[tuple[type[Exception], ...]] = (sqlite3.Error,)
    _begin: ClassVar[str] = "BEGIN IMMEDIATE"
    _aggregate_ids: ClassVar[str] = "group_concat(id, ',')"
    _conn: sqlite3.Connection

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        clock: Clock,
        *,
        synchronous: str = "FULL",
        vacuumed_s: float | None = None,
    ) -> None:
        super().__init__(conn, path, clock, Outbox(conn, self._store_error))
        self.vacuumed_s = vacuumed_s
        # Only a FULL store has an fsync to save on a batch of volatile writes.
        self._relax_volatile = sync_mode(synchronous) == "FULL"
        self._next_seq = self._load_next_seq()

    @classmethod
    def open(
        cls,
        path: str,
        clock: Clock,
        *,
        synchronous: str = "FULL",
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> JobDB:
        """Open or create the database at ``path``; raise StoreError naming the file and cause."""
        check_location(path)
        try:
            conn = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open job database {path}: {explain(exc)}") from exc
        try:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"job database {path}: cannot switch to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {sync_mode(synchronous)}")
            conn.execute("BEGIN IMMEDIATE")
            check_edges(conn, path)
            migrate(conn, path)
            conn.execute("COMMIT")
            started = time.monotonic()
            vacuumed_s = time.monotonic() - started if finish_incremental_vacuum(conn) else None
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot use job database {path}: {explain(exc)}") from exc
        try:
            return cls(conn, path, clock, synchronous=synchronous, vacuumed_s=vacuumed_s)
        except StoreError:
            conn.close()
            raise

    def close(self) -> None:
        """Close the connection (and release the file lock)."""
        self._conn.close()

    # --- writes ---------------------------------------------------------------------

    def write_batch(
        self, take: Callable[[], WriteMessage | None], *, volatile: bool = False
    ) -> list[BatchOutcome]:
        """Apply the writes ``take`` hands out, in one transaction, and commit once.

        With ``volatile``, ``take`` hands out only volatile writes (:func:`is_volatile`;
        any other fails alone with a StoreError) and a FULL store commits the batch at
        ``synchronous=NORMAL``: no fsync, and the level is FULL again right after. This
        is sound in WAL mode: the commit appends its frames to the WAL unsynced, and
        the next FULL commit syncs the whole file, these frames included, before it
        answers anyone; recovery replays frames in order and stops at the first torn
        one, so a power cut can lose only a tail of volatile commits, never an
        acknowledged durable write. NORMAL, not OFF: at NORMAL SQLite still syncs the
        database file after a checkpoint and the WAL header when the log restarts; at
        OFF a checkpoint this commit ran could leave the database file unsynced while
        the WAL frames it copied get overwritten, losing durable rows. SQLite refuses
        to change the level inside a transaction, hence a batch of its own.

        ``take`` returns the next write or None when none is waiting; it is asked
        again after each bulk INSERT, since more writes arrive while SQLite works.
        Returns one outcome per write taken: the Job, or the error for that write
        alone. If the commit fails, every write that had succeeded gets the StoreError
        instead, and nothing of the batch is kept.

        Inserts are prepared as they come and written together by one multi-row INSERT:
        each statement lets go of the GIL, and under load winning it back costs more
        than the statement itself. No caller knows a buffered job's id before the
        commit, so no other write in the batch can depend on one.

        A write fails alone without a savepoint: every check happens before its SQL,
        each Transition is one UPDATE, and SQLite undoes a failed statement by itself.
        If a multi-row INSERT fails, its rows are retried one by one so only the bad
        one fails.

        Should anything else go wrong mid-batch (a bug), the batch is rolled back before
        the error propagates, so the connection is never left inside a transaction.
        """
        relaxed = volatile and self._relax_volatile
        if relaxed:
            self._set_synchronous("NORMAL")
        try:
            return self._write_batch(take, volatile=volatile, relaxed=relaxed)
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
                self._forget_batch()
            raise
        finally:
            if relaxed:
                self._set_synchronous("FULL")

    def _set_synchronous(self, level: str) -> None:
        """Set the connection's synchronous level (outside a transaction)."""
        try:
            self._conn.execute(f"PRAGMA synchronous = {level}")
        except sqlite3.Error as exc:
            raise self._store_error(f"cannot set synchronous={level}", exc) from exc

    def _write_batch(
        self, take: Callable[[], WriteMessage | None], *, volatile: bool, relaxed: bool
    ) -> list[BatchOutcome]:
        """The batch itself, at whatever synchronous level the caller set (``relaxed``: NORMAL)."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = self._store_error("cannot start a write", exc)
            return [] if take() is None else [error]
        outcomes: list[BatchOutcome] = []
        rows: list[tuple[int, tuple[Any, ...]]] = []  # (index in outcomes, INSERT parameters)
        while True:
            message = take()
            if message is None:
                if not rows:
                    break
                self._insert_rows(rows, outcomes)
                rows = []
                if not self._conn.in_transaction:
                    lost = next(o for o in outcomes if isinstance(o, StoreError))
                    return self._abandon(outcomes, lost)
                continue
            try:
                if volatile and not is_volatile(message):
                    raise StoreError("a durable write cannot join a volatile batch (a bug)")
                if isinstance(message, InsertJob):
                    job, row = self._prepare_insert(message.spec, message.retry_of)
                    rows.append((len(outcomes), row))
                else:
                    job = self._transition(message)
                outcomes.append(job)
            except GpulaneError as exc:
                outcomes.append(exc)
            except (TypeError, ValueError) as exc:  # encoding, before any SQL of this write
                outcomes.append(StoreError(f"cannot encode {type(message).__name__}: {exc}"))
            except sqlite3.Error as exc:
                error = self._store_error("cannot write", exc)
                outcomes.append(error)
                if not self._conn.in_transaction:  # SQLite rolled the whole batch back
                    return self._abandon(outcomes, error)
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            error = self._store_error("cannot commit", exc)
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            return self._abandon(outcomes, error)
        self._committed(outcomes, relaxed=relaxed)
        return outcomes

    def _forget_batch(self) -> None:
        """Drop the rolled-back batch's staged jobs; sequence numbers reload from the file."""
        super()._forget_batch()
        self._next_seq = self._load_next_seq()

    def _prepare_insert(self, spec: JobSpec, retry_of: str | None) -> tuple[Job, tuple[Any, ...]]:
        """A new queued job with a fresh ULID and the next sequence number, and its row."""
        self._check_retry_of(retry_of)
        spec_json = to_json(spec.to_dict())  # first: a spec that cannot be encoded uses no seq
        now = self._clock.now()
        job_id = str(ULID.from_timestamp(now))
        seq = self._next_seq
        self._next_seq += 1
        row = (
            seq,
            job_id,
            spec.lane.value,
            spec.caller,
            spec.model,
            int(spec.priority),
            spec_json,
            retry_of,
            now,
            now,
        )
        job = Job(
            id=job_id, seq=seq, spec=spec, state=JobState.QUEUED, created_at=now, updated_at=now
        )
        return job, row

    def _insert_rows(
        self, rows: list[tuple[int, tuple[Any, ...]]], outcomes: list[BatchOutcome]
    ) -> None:
        """Write prepared rows with as few statements as possible; mark the ones that fail."""
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            params = [value for _, row in chunk for value in row]
            try:
                self._conn.execute(_INSERT + ", ".join([_ROW] * len(chunk)), params)
            except sqlite3.Error as exc:
                if not self._conn.in_transaction:  # the whole batch is gone
                    error = self._store_error("cannot write", exc)
                    for index, _ in rows:
                        outcomes[index] = error
                    return
                self._insert_one_by_one(chunk, outcomes)
                if not self._conn.in_transaction:
                    return

    def _insert_one_by_one(
        self, rows: list[tuple[int, tuple[Any, ...]]], outcomes: list[BatchOutcome]
    ) -> None:
        """The slow path after a bulk INSERT failed: find the rows that fail on their own."""
        for index, row in rows:
            try:
                self._conn.execute(_INSERT + _ROW, row)
            except sqlite3.Error as exc:
                outcomes[index] = self._store_error("cannot write", exc)
                if not self._conn.in_transaction:
                    return

    def prune(self, older_than_s: float, limit: int) -> int:
        """Delete up to ``limit`` terminal jobs that finished more than ``older_than_s``
        seconds ago, oldest first, and give the freed pages back (``_pruning.py``)."""
        check_seconds(older_than_s)
        try:
            return prune_batch(self._conn, self._clock.now() - older_than_s, limit, self._counts)
        except sqlite3.Error as exc:
            raise self._store_error("cannot prune", exc) from exc

    # --- what it says of itself -------------------------------------------------------

    def schema_version(self) -> int:
        """The schema version stored in the file."""
        return int(self._read_one("PRAGMA user_version")[0])

    def durability(self) -> tuple[str, str]:
        """The journal and synchronous modes in force on the connection, e.g. ("wal", "FULL")."""
        journal = str(self._read_one("PRAGMA journal_mode")[0]).lower()
        level = int(self._read_one("PRAGMA synchronous")[0])
        return journal, {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[level]

    # --- helpers --------------------------------------------------------------------

    def _load_next_seq(self) -> int:
        """One past the highest sequence number ever used (AUTOINCREMENT remembers it).

        The store owns the file (exclusive lock), so counting in memory is safe.
        """
        row = self._read_one("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'")
        return 1 if row is None else int(row[0]) + 1

    def _explain(self, exc: Exception) -> str:
        return explain(exc) if isinstance(exc, sqlite3.Error) else str(exc)
