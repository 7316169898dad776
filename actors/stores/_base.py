"""What both job database engines do the same way: the jobs kept in memory, transitions,
recovery, and every read (docs/architecture.md sections 6 and 14).

Thread-free. An engine (``_sqlite.JobDB``, ``_postgres.PgJobDB``) subclasses
:class:`EngineBase` and brings its connection, its batch writer, pruning and what it says
about itself. The SQL here is written with ``?`` marks; the PostgreSQL engine's connection
adapter turns them into its own.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from actors.runtime import Clock
from actors.stores._counts import StateCounts
from actors.stores._outbox import Outbox
from actors.stores._queue_load import QueueLoad, admitted_rows
from actors.stores._rows import (
    BatchOutcome,
    Connection,
    Recovery,
    job_from_row,
    moved,
    update_params,
)
from protocol.enums import TERMINAL_STATES, JobState, Lane
from protocol.errors import IllegalTransitionError, JobNotFoundError, StoreError, ValidationError
from protocol.job import Job
from protocol.lifecycle import check_transition
from protocol.messages import LaneStats, ListJobs, QueueChunk, Transition

__all__ = [
    "COLUMNS",
    "SELECT_BY_ID",
    "SELECT_BY_SEQ",
    "UPDATE",
    "EngineBase",
    "check_seconds",
    "list_query",
]


_ACTIVE_VALUES = (JobState.LOADING.value, JobState.RUNNING.value)

COLUMNS = (
    "seq, id, state, spec, created_at, updated_at, started_at, finished_at, not_before, "
    "attempts, preemptions, partial_output, result, error, metrics, output, segments, "
    "backend, slot"
)
UPDATE = (
    "UPDATE jobs SET state = ?, updated_at = ?, started_at = ?, finished_at = ?, "
    "not_before = ?, attempts = ?, preemptions = ?, partial_output = ?, result = ?, "
    "error = ?, metrics = ?, output = ?, segments = ?, backend = ?, slot = ? WHERE seq = ?"
)
SELECT_BY_ID = f"SELECT {COLUMNS} FROM jobs WHERE id = ?"
SELECT_BY_SEQ = f"SELECT {COLUMNS} FROM jobs WHERE seq = ?"


def check_seconds(older_than_s: Any) -> None:
    """Refuse a prune age that is not a number of seconds, 0 or more."""
    if (
        not isinstance(older_than_s, (int, float))
        or isinstance(older_than_s, bool)
        or not 0 <= older_than_s < math.inf
    ):
        raise ValidationError(
            "older_than_s", f"must be a number of seconds, 0 or more, got {older_than_s!r}"
        )


def list_query(query: ListJobs) -> tuple[str, tuple[Any, ...]] | None:
    """The select (``?`` marks) and its parameters for the jobs ``query`` asks for, or None
    when no job can match (an empty set of states): one query for every reader of the
    jobs. A ``limit`` that is not an integer of 1 or more is a ValidationError."""
    limit = query.limit
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValidationError("limit", f"must be an integer of 1 or more, got {limit!r}")
    if query.states is not None and not query.states:
        return None
    where: list[str] = []
    params: list[Any] = []
    if query.states is not None:
        where.append(f"state IN ({', '.join('?' for _ in query.states)})")
        params.extend(sorted(state.value for state in query.states))
    for column, value in (
        ("lane", None if query.lane is None else query.lane.value),
        ("caller", query.caller),
        ("model", query.model),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = f"SELECT {COLUMNS} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY seq {'ASC' if query.oldest_first else 'DESC'} LIMIT ?"
    return sql, (*params, limit)


class EngineBase(abc.ABC):
    """One open job database that only this object writes (the engine makes sure).

    Because nothing else writes it, the jobs that are not yet terminal are also kept in
    memory as committed (``_live``): a transition reads the job it moves from there
    instead of reading and re-validating its row (two thirds of a transition's cost). A
    batch's changes are staged and join ``_live`` only when it commits. For the same
    reason the jobs per state are counted once at open and then kept as commits land
    (``_counts.py``), so a status read does not walk the state index.
    """

    _errors: ClassVar[tuple[type[Exception], ...]]  # the driver's errors
    _begin: ClassVar[str]  # the statement that starts a write transaction
    _aggregate_ids: ClassVar[str]  # the aggregate that joins ids with commas

    def __init__(self, conn: Connection, path: str, clock: Clock, outbox: Outbox) -> None:
        self._conn = conn
        self.path = path  # what errors and the snapshot name the database by
        self.vacuumed_s: float | None = None  # how long open's one VACUUM took, if it ran one
        self._load: QueueLoad | None = None  # the queue being handed to the arbiter
        self._clock = clock
        self.commits = 0
        self.volatile_commits = 0
        self.writes = 0
        self.largest_batch = 0
        self._live: dict[str, Job] = {}  # committed jobs not yet terminal, by id
        self._staged: dict[str, Job] = {}  # the open batch's transitions, until it commits
        self._moved: dict[str, JobState] = {}  # their jobs' committed states before the batch
        self._counts = StateCounts(
            self._read_all("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        )
        self.outbox = outbox  # webhook deliveries (#16)

    @abc.abstractmethod
    def _explain(self, exc: Exception) -> str:
        """The driver's error in words, with its likely cause where known (each engine's)."""

    # --- the batch's bookkeeping ------------------------------------------------------

    def _committed(self, outcomes: list[BatchOutcome], *, relaxed: bool) -> None:
        """A batch committed: its jobs go live and the counters move."""
        self._keep_live(outcomes)
        self.commits += 1
        self.volatile_commits += relaxed
        self.writes += len(outcomes)
        self.largest_batch = max(self.largest_batch, len(outcomes))

    def _abandon(self, outcomes: list[BatchOutcome], error: StoreError) -> list[BatchOutcome]:
        """The batch is rolled back: its successes become ``error``."""
        self._forget_batch()
        return [error if isinstance(o, Job) else o for o in outcomes]

    def _forget_batch(self) -> None:
        """Drop the rolled-back batch's staged jobs."""
        self._staged.clear()
        self._moved.clear()

    def _keep_live(self, outcomes: list[BatchOutcome]) -> None:
        """After a commit: the batch's jobs, in order, become the live copies (or leave),
        and the counts per state take the batch in (a Job not moved is an insert)."""
        moved_before = self._moved
        self._counts.committed(
            sum(isinstance(o, Job) and o.id not in moved_before for o in outcomes),
            [(before, self._staged[job_id].state) for job_id, before in moved_before.items()],
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

    def _check_retry_of(self, retry_of: str | None) -> None:
        """Refuse a retry of a job that does not exist."""
        if retry_of is not None and self._find_seq(retry_of) is None:
            raise ValidationError("retry_of", f"no job {retry_of!r} to retry")

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
            changed = self.outbox.write_terminal(changed, UPDATE, params)
        else:
            self._conn.execute(UPDATE, params)
        self._staged[changed.id] = changed
        self._moved.setdefault(changed.id, job.state)
        return changed

    def recover(self) -> Recovery:
        """Put jobs a crash left in loading or running back in the queue, charging nothing."""
        try:
            self._conn.execute(self._begin)
            requeued = self._conn.execute(
                "UPDATE jobs SET state = 'queued', updated_at = ? WHERE state IN (?, ?)",
                (self._clock.now(), *_ACTIVE_VALUES),
            ).rowcount
            queued = self._conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued'"
            ).fetchone()[0]
            self._conn.execute("COMMIT")
        except self._errors as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise self._store_error("cannot recover jobs", exc) from exc
        self._live.clear()  # their states changed under the copies
        self._counts.recovered(int(queued))
        return Recovery(requeued=requeued, queued=int(queued))

    # --- reads ----------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job with this id, or JobNotFoundError."""
        live = self._live.get(job_id)
        if live is not None:
            return live
        row = self._read_one(SELECT_BY_ID, job_id)
        if row is None:
            raise JobNotFoundError(job_id)
        return self.outbox.attach(job_from_row(row))

    def get_by_seq(self, seq: int) -> Job:
        """The job with this sequence number, or JobNotFoundError."""
        row = self._read_one(SELECT_BY_SEQ, seq)
        if row is None:
            raise JobNotFoundError(seq)
        return self.outbox.attach(job_from_row(row))

    def list_jobs(self, query: ListJobs) -> tuple[Job, ...]:
        """Jobs matching every filter in ``query``, newest first unless ``oldest_first``."""
        select = list_query(query)
        if select is None:
            return ()
        rows = self._read_all(*select)
        return tuple(self.outbox.attach(job_from_row(row)) for row in rows)

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
        rows = self._read_all(f"SELECT {COLUMNS} FROM jobs WHERE state = 'queued' ORDER BY seq")
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
            jobs = tuple(job_from_row(row) for row in load.take(self._conn, COLUMNS, chunk))
        except self._errors as exc:
            raise self._store_error("cannot read", exc) from exc
        if not load.remaining:
            self._load = None
        return QueueChunk(jobs, load.remaining)

    def admitted(self) -> tuple[tuple[str, Lane, tuple[str, ...]], ...]:
        """The ids of every job that is not terminal, by (caller, lane), from the columns."""
        try:
            return admitted_rows(self._conn, self._aggregate_ids)
        except self._errors as exc:
            raise self._store_error("cannot read", exc) from exc

    # --- helpers --------------------------------------------------------------------

    def _find_seq(self, job_id: str) -> int | None:
        row = self._conn.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else int(row[0])

    def _read_one(self, sql: str, *params: Any) -> Any:
        try:
            return self._conn.execute(sql, params).fetchone()
        except self._errors as exc:
            raise self._store_error("cannot read", exc) from exc

    def _read_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(self._conn.execute(sql, params).fetchall())
        except self._errors as exc:
            raise self._store_error("cannot read", exc) from exc

    def _store_error(self, what: str, exc: Exception) -> StoreError:
        error = StoreError(f"job database {self.path}: {what}: {self._explain(exc)}")
        error.__cause__ = exc
        return error
