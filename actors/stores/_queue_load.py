"""Reading a deep queue back from the job database, a chunk at a time, in serving order.

Thread-free, on the JobDB's connection. After a restart the arbiter rebuilds its ready
queues from the store; decoding 100,000 jobs (each spec validated again) takes seconds,
so the store hands them out in chunks (``protocol.messages.LoadQueue``), best first, and
the arbiter dispatches after the first one while the rest follow, one chunk per turn of
each mailbox (docs/architecture.md section 7, "Recovery").
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import Any

from actors.stores._rows import Connection
from protocol.enums import JobState, Lane

__all__ = ["QueueLoad", "admitted_rows"]

# The order the arbiter serves the queue in (actors/scheduling.py): internal before
# external, then priority, then a job coming back from a preemption, then age. Within a
# class the arbiter also weighs residency and fair share; those it decides among the jobs
# it has, and the oldest ones come first here.
_SERVING_ORDER = (
    "SELECT seq FROM jobs WHERE state = 'queued' "
    f"ORDER BY lane = '{Lane.EXTERNAL.value}', priority DESC, preemptions = 0, seq"
)
_OPEN_STATES = tuple(s.value for s in JobState if not s.is_terminal)
# Grouped by the database (``{}``: the engine's aggregate that joins ids with commas): ids
# are ULIDs, so a comma joins them safely.
_ADMITTED = (
    "SELECT caller, lane, {} FROM jobs "
    f"WHERE state IN ({', '.join('?' for _ in _OPEN_STATES)}) GROUP BY caller, lane"
)
# Sequence numbers per SELECT: well under SQLite's 32766 parameters (PostgreSQL's 65535).
_SEQS_PER_SELECT = 5000


class QueueLoad:
    """One load of the queue: the sequence numbers of the jobs queued at its start, in
    serving order (8 bytes each), handed out a chunk at a time."""

    def __init__(self, seqs: array.array[int]) -> None:
        self._seqs = seqs
        self._taken = 0

    @classmethod
    def begin(cls, conn: Connection) -> QueueLoad:
        """Note every queued job's sequence number, in serving order (the database sorts them)."""
        return cls(array.array("q", (row[0] for row in conn.execute(_SERVING_ORDER))))

    @property
    def remaining(self) -> int:
        """How many jobs of this load are left to hand out."""
        return len(self._seqs) - self._taken

    def take(self, conn: Connection, columns: str, chunk: int) -> list[Sequence[Any]]:
        """The rows (``columns``) of the next ``chunk`` jobs of the load, in its order.

        A job that is no longer queued is left out: nothing but the arbiter changes a queued
        job, and it knows only what it has loaded, but the store is the judge.
        """
        seqs = self._seqs[self._taken : self._taken + max(1, chunk)].tolist()
        self._taken += len(seqs)
        by_seq: dict[int, Sequence[Any]] = {}
        for start in range(0, len(seqs), _SEQS_PER_SELECT):
            part = seqs[start : start + _SEQS_PER_SELECT]
            marks = ", ".join("?" for _ in part)
            sql = f"SELECT {columns} FROM jobs WHERE state = 'queued' AND seq IN ({marks})"
            by_seq.update((row[0], row) for row in conn.execute(sql, part))
        return [by_seq[seq] for seq in seqs if seq in by_seq]


def admitted_rows(
    conn: Connection, aggregate_ids: str
) -> tuple[tuple[str, Lane, tuple[str, ...]], ...]:
    """The ids of every job that is not terminal, by caller and lane, from the columns alone;
    ``aggregate_ids`` is the engine's SQL that joins a group's ids with commas."""
    rows = conn.execute(_ADMITTED.format(aggregate_ids), _OPEN_STATES)
    return tuple((caller, Lane(lane), tuple(ids.split(","))) for caller, lane, ids in rows)
