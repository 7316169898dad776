"""Pruning the SQLite job database and giving its free pages back to the file system.

Thread-free, on the JobDB's connection (docs/architecture.md section 6; docs/operations.md,
"Pruning"). Terminal jobs that finished before a cutoff go in bounded batches, oldest
first, and each batch ends with ``PRAGMA incremental_vacuum``, so the file shrinks as it
is pruned instead of only keeping its free pages for later rows. That needs the file in
``auto_vacuum = INCREMENTAL`` mode (schema version 3), which an existing file reaches only
through one VACUUM: :func:`finish_incremental_vacuum` runs it.
"""

from __future__ import annotations

import sqlite3

from actors.stores._counts import StateCounts
from actors.stores._outbox import KEEPS_PENDING
from protocol.enums import TERMINAL_STATES

__all__ = ["INCREMENTAL", "finish_incremental_vacuum", "prune_batch", "set_incremental_vacuum"]

INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL

_TERMINAL_VALUES = tuple(sorted(s.value for s in TERMINAL_STATES))
# ``+state``: a terminal job is the only one with a finish time, and the unary plus keeps
# SQLite on the finish-time index (oldest first, no sort) instead of the state index,
# which would sort every terminal job for each batch. A job whose webhook delivery is
# still pending is kept (``_outbox.KEEPS_PENDING``, one lookup of its outbox row).
_PRUNABLE = (
    "SELECT seq FROM jobs WHERE finished_at < ? "
    f"AND +state IN ({', '.join(repr(v) for v in _TERMINAL_VALUES)}) "
    f"AND {KEEPS_PENDING} ORDER BY finished_at LIMIT ?"
)
_DELETE = f"DELETE FROM jobs WHERE seq IN ({_PRUNABLE})"


def set_incremental_vacuum(conn: sqlite3.Connection) -> None:
    """Ask for ``auto_vacuum = INCREMENTAL``: on a file that has tables already, SQLite
    records it only at the next VACUUM (:func:`finish_incremental_vacuum`)."""
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")


def finish_incremental_vacuum(conn: sqlite3.Connection) -> bool:
    """Make the file incremental if it is not yet: one VACUUM, outside any transaction.

    VACUUM rewrites the whole file (in WAL mode, through the WAL), so it takes about as
    long as copying the file twice and needs that much free disk for a moment; the WAL
    is truncated after it. It runs once per file: on the first open by a gpulane with
    schema version 3, or again on the next open if that one was cut short (the version
    is committed first, so the file's own header is the judge). True if it ran.
    """
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == INCREMENTAL:
        return False
    set_incremental_vacuum(conn)  # the request lasts only as long as the connection
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return True


def prune_batch(conn: sqlite3.Connection, cutoff: float, limit: int, counts: StateCounts) -> int:
    """Delete up to ``limit`` terminal jobs that finished before ``cutoff``, oldest first,
    in a transaction of its own, then give the file's free pages back; returns how many.
    ``counts`` loses the deleted jobs as soon as their DELETE commits, before the vacuum.

    ``PRAGMA incremental_vacuum`` frees one page per step of its statement, and Python's
    ``execute`` steps a statement without columns only once, so it runs through
    ``executescript``, which steps it to the end (and would first commit an open
    transaction: there is none here).
    """
    deleted = [row[0] for row in conn.execute(_DELETE + " RETURNING state", (cutoff, limit))]
    counts.deleted(deleted)
    if deleted:
        conn.executescript("PRAGMA incremental_vacuum")
    return len(deleted)
