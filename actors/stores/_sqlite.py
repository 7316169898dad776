"""The SQLite job database: plain, thread-free code that the JobStore actor drives.

Everything here runs on whichever thread calls it; the actor guarantees that only
one thread does at a time. Tests use it directly, without an actor.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ulid import ULID

from actors.runtime import Clock
from actors.stores._counts import StateCounts
from actors.stores._files import check_edges, check_location, explain, sync_mode
from actors.stores._outbox import Outbox
from actors.stores._pruning import finish_incremental_vacuum, prune_batch
from actors.stores._queue_load import QueueLoad, admitted_rows
from actors.stores._rows import (
    BatchOutcome,
    Recovery,
    WriteMessage,
    is_volatile,
    job_from_row,
    moved,
    to_json,
    update_params,
)
from actors.stores._schema import migrate
from protocol.enums import TERMINAL_STATES, JobState, Lane
from protocol.errors import (
    GpulaneError,
    IllegalTransitionError,
    JobNotFoundError,
    StoreError,
    ValidationError,
)
from protocol.job import Job
from protocol.lifecycle import check_transition
from protocol.messages import InsertJob, LaneStats, ListJobs, QueueChunk, Transition
from protocol.spec import JobSpec

__all__ = ["BUSY_TIMEOUT_S", "JobDB"]

# How long opening waits for a lock held by someone else before calling the file locked.
BUSY_TIMEOUT_S = 1.0


_ACTIVE_VALUES = (JobState.LOADING.value, JobState.RUNNING.value)

_COLUMNS = (
    "seq, id, state, spec, created_at, updated_at, started_at, finished_at, not_before, "
    "attempts, preemptions, partial_output, result, error, metrics, output, segments, "
    "backend, slot"
)
_INSERT = (
    "INSERT INTO jobs (seq, id, state, lane, caller, model, priority, spec, retry_of, "
    "created_at, updated_at) VALUES "
)
_ROW = "(?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)"
# Rows per INSERT statement: 10 parameters each, well under SQLite's 32766.
_ROWS_PER_INSERT = 500
_UPDATE = (
    "UPDATE jobs SET state = ?, updated_at = ?, started_at = ?, finished_at = ?, "
    "not_before = ?, attempts = ?, preemptions = ?, partial_output = ?, result = ?, "
    "error = ?, metrics = ?, output = ?, segments = ?, backend = ?, slot = ? WHERE seq = ?"
)
_SELECT_BY_ID = f"SELECT {_COLUMNS} FROM jobs WHERE id = ?"
_SELECT_BY_SEQ = f"SELECT {_COLUMNS} FROM jobs WHERE seq = ?"


class JobDB:
    """One open job database: schema checked, WAL on, the file locked to this connection.

    ``locking_mode=EXCLUSIVE`` keeps the file locked for as long as it is open, so a
    second store on the same file fails at start instead of sharing it.

    Because nothing else can write the file, the jobs that are not yet terminal are also
    kept in memory as committed (``_live``): a transition reads the job it moves from
    there instead of reading and re-validating its row (two thirds of a transition's
    cost). A batch's changes are staged and join ``_live`` only when it commits. For the
    same reason the jobs per state are counted once at open and then kept as commits land
    (``_counts.py``), so a status read does not walk the state index.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        clock: Clock,
        *,
        synchronous: str = "FULL",
        vacuumed_s: float | None = None,
    ) -> None:
        self._conn = conn
        self.path = path
        self.vacuumed_s = vacuumed_s  # how long open's one VACUUM took, if it ran one
        self._load: QueueLoad | None = None  # the queue being handed to the arbiter
        self._clock = clock
        # Only a FULL store has an fsync to save on a batch of volatile writes.
        self._relax_volatile = sync_mode(synchronous) == "FULL"
        self.commits = 0
        self.volatile_commits = 0
        self.writes = 0
        self.largest_batch = 0
        self._live: dict[str, Job] = {}  # committed jobs not yet terminal, by id
        self._staged: dict[str, Job] = {}  # the open batch's transitions, until it commits
        self._moved: dict[str, JobState] = {}  # their jobs' committed states before the batch
        self._next_seq = self._load_next_seq()
        self._counts = StateCounts(
            self._read_all("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        )
        self.outbox = Outbox(conn, self._store_error)  # webhook deliveries (#16)

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
        self._keep_live(outcomes)
        self.commits += 1
        self.volatile_commits += relaxed
        self.writes += len(outcomes)
        self.largest_batch = max(self.largest_batch, len(outcomes))
        return outcomes

    def _abandon(self, outcomes: list[BatchOutcome], error: StoreError) -> list[BatchOutcome]:
        """The batch is rolled back: its successes become ``error``."""
        self._forget_batch()
        return [error if isinstance(o, Job) else o for o in outcomes]

    def _forget_batch(self) -> None:
        """Drop the rolled-back batch's staged jobs; sequence numbers reload from the file."""
        self._staged.clear()
        self._moved.clear()
        self._next_seq = self._load_next_seq()

    def _keep_live(self, outcomes: list[BatchOutcome]) -> None:
        """After a commit: the batch's jobs, in order, become the live copies (or leave),
        and the counts per state take the batch in (a Job not moved is an insert)."""
        moved = self._moved
        self._counts.committed(
            sum(isinstance(o, Job) and o.id not in moved for o in outcomes),
            [(before, self._staged[job_id].state) for job_id, before in moved.items()],
        )
        self._staged.clear()
        self._moved.clear()
        for outcome in outcomes:
            if not isinstance(outcome, Job):
                continue
            if outcome.state in TERMINAL_STATES:
                self._live.pop(outcome.id, None)
            else:
                self._live[outcome.id] = outcome

    def _prepare_insert(self, spec: JobSpec, retry_of: str | None) -> tuple[Job, tuple[Any, ...]]:
        """A new queued job with a fresh ULID and the next sequence number, and its row."""
        if retry_of is not None and self._find_seq(retry_of) is None:
            raise ValidationError("retry_of", f"no job {retry_of!r} to retry")
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

    def _transition(self, message: Transition) -> Job:
        """Move a job to ``message.target`` and record what came with the move (``_rows.moved``
        says what changes). ``not_before`` may be non-None only on a move to queued, the one
        state where it means anything; ``result`` and ``output`` only on a move to
        succeeded. A job that names a webhook gets its outbox row with its terminal move.
        """
        target = message.target
        if message.not_before is not None and target is not JobState.QUEUED:
            raise ValidationError("not_before", "may be set only on a move to queued")
        for name in ("result", "output"):
            if getattr(message, name) is not None and target is not JobState.SUCCEEDED:
                raise ValidationError(name, "may be set only on a move to succeeded")
        job = self._staged.get(message.job_id) or self.get(message.job_id)
        if message.expected is not None and job.state not in message.expected:
            raise IllegalTransitionError(job.id, job.state.value, target.value)
        check_transition(job.id, job.state, target)
        changed = moved(job, message, self._clock.now())
        params = update_params(changed)
        if target.is_terminal and changed.spec.webhook is not None:
            changed = self.outbox.write_terminal(changed, _UPDATE, params)
        else:
            self._conn.execute(_UPDATE, params)
        self._staged[changed.id] = changed
        self._moved.setdefault(changed.id, job.state)
        return changed

    def recover(self) -> Recovery:
        """Put jobs a crash left in loading or running back in the queue, charging nothing."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            requeued = self._conn.execute(
                "UPDATE jobs SET state = 'queued', updated_at = ? WHERE state IN (?, ?)",
                (self._clock.now(), *_ACTIVE_VALUES),
            ).rowcount
            queued = self._conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued'"
            ).fetchone()[0]
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise self._store_error("cannot recover jobs", exc) from exc
        self._live.clear()  # their states changed under the copies
        self._counts.recovered(int(queued))
        return Recovery(requeued=requeued, queued=int(queued))

    def prune(self, older_than_s: float, limit: int) -> int:
        """Delete up to ``limit`` terminal jobs that finished more than ``older_than_s``
        seconds ago, oldest first, and give the freed pages back (``_pruning.py``)."""
        if (
            not isinstance(older_than_s, (int, float))
            or isinstance(older_than_s, bool)
            or not 0 <= older_than_s < math.inf
        ):
            raise ValidationError(
                "older_than_s", f"must be a number of seconds, 0 or more, got {older_than_s!r}"
            )
        try:
            return prune_batch(self._conn, self._clock.now() - older_than_s, limit, self._counts)
        except sqlite3.Error as exc:
            raise self._store_error("cannot prune", exc) from exc

    # --- reads ----------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job with this id, or JobNotFoundError."""
        live = self._live.get(job_id)
        if live is not None:
            return live
        row = self._read_one(_SELECT_BY_ID, job_id)
        if row is None:
            raise JobNotFoundError(job_id)
        return self.outbox.attach(job_from_row(row))

    def get_by_seq(self, seq: int) -> Job:
        """The job with this sequence number, or JobNotFoundError."""
        row = self._read_one(_SELECT_BY_SEQ, seq)
        if row is None:
            raise JobNotFoundError(seq)
        return self.outbox.attach(job_from_row(row))

    def list_jobs(self, query: ListJobs) -> tuple[Job, ...]:
        """Jobs matching every filter in ``query``, newest first unless ``oldest_first``."""
        if not isinstance(query.limit, int) or isinstance(query.limit, bool) or query.limit < 1:
            raise ValidationError("limit", f"must be an integer of 1 or more, got {query.limit!r}")
        if query.states is not None and not query.states:
            return ()
        where: list[str] = []
        params: list[Any] = []
        if query.states is not None:
            where.append(f"state IN ({', '.join('?' for _ in query.states)})")
            params.extend(sorted(s.value for s in query.states))
        for column, value in (
            ("lane", None if query.lane is None else query.lane.value),
            ("caller", query.caller),
            ("model", query.model),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq {'ASC' if query.oldest_first else 'DESC'} LIMIT ?"
        params.append(query.limit)
        return tuple(self.outbox.attach(job_from_row(row)) for row in self._read_all(sql, params))

    def count_by_state(self) -> Mapping[str, int]:
        """The number of jobs in each state, every state present: kept in memory, O(1)."""
        return self._counts.snapshot()

    def lane_stats(self) -> tuple[LaneStats, ...]:
        """Average wait (start - creation) and run (finish - start) of finished jobs, per lane."""
        rows = {
            row[0]: row
            for row in self._read_all(
                "SELECT lane, COUNT(*), AVG(started_at - created_at), "
                "AVG(finished_at - started_at) FROM jobs WHERE finished_at IS NOT NULL "
                "GROUP BY lane"
            )
        }
        stats = []
        for lane in Lane:
            _, finished, wait, run = rows.get(lane.value, (lane.value, 0, None, None))
            stats.append(LaneStats(lane=lane, finished=finished, avg_wait_s=wait, avg_run_s=run))
        return tuple(stats)

    def queued_jobs(self) -> tuple[Job, ...]:
        """Every queued job in sequence order."""
        rows = self._read_all(
            f"SELECT {_COLUMNS} FROM jobs WHERE state = 'queued' ORDER BY seq", ()
        )
        return tuple(job_from_row(row) for row in rows)

    def load_queue(self, chunk: int, *, first: bool) -> QueueChunk:
        """The next ``chunk`` queued jobs in serving order (``_queue_load.py``); ``first``
        begins a new load. Asking for more with no load begun is a ValidationError."""
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise ValidationError("chunk", f"must be an integer of 1 or more, got {chunk!r}")
        try:
            if first:
                self._load = QueueLoad.begin(self._conn)
            load = self._load
            if load is None:
                raise ValidationError(
                    "first", "no load of the queue has begun", allowed="first=True to begin one"
                )
            jobs = tuple(job_from_row(row) for row in load.take(self._conn, _COLUMNS, chunk))
        except sqlite3.Error as exc:
            raise self._store_error("cannot read", exc) from exc
        if not load.remaining:
            self._load = None
        return QueueChunk(jobs, load.remaining)

    def admitted(self) -> tuple[tuple[str, Lane, tuple[str, ...]], ...]:
        """The ids of every job that is not terminal, by (caller, lane), from the columns."""
        try:
            return admitted_rows(self._conn)
        except sqlite3.Error as exc:
            raise self._store_error("cannot read", exc) from exc

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

    def _find_seq(self, job_id: str) -> int | None:
        row = self._conn.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else int(row[0])

    def _read_one(self, sql: str, *params: Any) -> Any:
        try:
            return self._conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise self._store_error("cannot read", exc) from exc

    def _read_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._store_error("cannot read", exc) from exc

    def _store_error(self, what: str, exc: sqlite3.Error) -> StoreError:
        error = StoreError(f"job database {self.path}: {what}: {explain(exc)}")
        error.__cause__ = exc
        return error
