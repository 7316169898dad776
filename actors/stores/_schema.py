"""The SQLite job database's schema and its versioned migrations.

``PRAGMA user_version`` holds the version; :func:`migrate` brings an older file up to date
inside the opener's transaction and refuses a file from a newer gpulane.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeAlias

from actors.stores._pruning import set_incremental_vacuum
from protocol.enums import JobState
from protocol.errors import StoreError
from protocol.webhook import WebhookState

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate"]

Migration: TypeAlias = Callable[[sqlite3.Connection], None]

_V1_SCHEMA = (
    f"""CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s.value) for s in JobState)})),
        lane TEXT NOT NULL,
        caller TEXT NOT NULL,
        model TEXT NOT NULL,
        priority INTEGER NOT NULL,
        spec TEXT NOT NULL,
        retry_of TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        not_before REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        preemptions INTEGER NOT NULL DEFAULT 0,
        partial_output TEXT NOT NULL DEFAULT '',
        result TEXT,
        error TEXT,
        metrics TEXT
    )""",
    "CREATE INDEX jobs_by_state ON jobs (state, seq)",
    "CREATE INDEX jobs_by_caller ON jobs (caller, seq)",
    "CREATE INDEX jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL",
)


def _create_v1(conn: sqlite3.Connection) -> None:
    """Version 1: the jobs table and its indexes.

    Only state, caller and finish time are indexed: each index costs every commit a
    page. Lane and model have few distinct values, so a filter on them walks the
    sequence order and meets its matches early.
    """
    for statement in _V1_SCHEMA:
        conn.execute(statement)


def _answer_parts_v2(conn: sqlite3.Connection) -> None:
    """Version 2 (#14): ``output``, the answer besides its text (thinking, tool calls,
    logprobs, the backend's done reason, context), and ``segments``, the metrics of each
    call whose output is part of the answer; both JSON, NULL on the jobs of version 1."""
    conn.execute("ALTER TABLE jobs ADD COLUMN output TEXT")
    conn.execute("ALTER TABLE jobs ADD COLUMN segments TEXT")


def _incremental_vacuum_v3(conn: sqlite3.Connection) -> None:
    """Version 3 (#16): the file in ``auto_vacuum = INCREMENTAL`` mode, so each prune can
    give its free pages back (``_pruning.py``). SQLite applies the mode to a file that has
    tables only through a VACUUM, which cannot run inside this transaction: the opener
    runs it right after the commit (``finish_incremental_vacuum``), and again at the next
    open if it was cut short."""
    set_incremental_vacuum(conn)


_OUTBOX_STATES = tuple(s.value for s in WebhookState if s is not WebhookState.WAITING)
_V4_OUTBOX = (
    f"""CREATE TABLE webhook_outbox (
        job_seq INTEGER PRIMARY KEY,
        url TEXT NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in _OUTBOX_STATES)})),
        created_at REAL NOT NULL,
        next_at REAL,
        ended_at REAL,
        attempts TEXT NOT NULL DEFAULT '[]'
    )""",
    "CREATE INDEX webhook_outbox_pending ON webhook_outbox (next_at) WHERE state = 'pending'",
    """CREATE TRIGGER webhook_outbox_leaves_with_its_job AFTER DELETE ON jobs
    BEGIN DELETE FROM webhook_outbox WHERE job_seq = OLD.seq; END""",
)


def _webhook_outbox_v4(conn: sqlite3.Connection) -> None:
    """Version 4 (#16): the webhook outbox (``stores/_outbox.py``), one row per ended job
    that names a webhook: the URL, the body to post, the delivery's state, when it is next
    due, its attempts (JSON). A trigger deletes a job's row with the job, so pruning needs
    no second statement. The job's webhook URL stays in its spec (the jobs table is
    unchanged). Nothing here depends on version 3, so it applies to a file of version 2
    or 3 alike."""
    for statement in _V4_OUTBOX:
        conn.execute(statement)


def _where_it_ran_v5(conn: sqlite3.Connection) -> None:
    """Version 5 (#17): ``backend`` and ``slot``, where a job's last call ran (the backend's
    name and the slot's id, set by the slot's move to loading); NULL on older jobs and on
    jobs that never ran."""
    conn.execute("ALTER TABLE jobs ADD COLUMN backend TEXT")
    conn.execute("ALTER TABLE jobs ADD COLUMN slot TEXT")


def _leader_lease_v6(conn: sqlite3.Connection) -> None:
    """Version 6 (#18): PostgreSQL's leader lease (``_pg_schema``); one process owns a
    SQLite file, so there is nothing to add here, and both engines keep one numbering."""


# MIGRATIONS[i] turns a schema of version i into version i + 1; version 0 is an empty file.
MIGRATIONS: tuple[Migration, ...] = (
    _create_v1,
    _answer_parts_v2,
    _incremental_vacuum_v3,
    _webhook_outbox_v4,
    _where_it_ran_v5,
    _leader_lease_v6,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(
    conn: sqlite3.Connection, path: str, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Bring the schema up to ``len(migrations)`` inside the caller's transaction.

    Returns the version found. A file written by a newer gpulane is refused, not guessed at.
    """
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    target = len(migrations)
    if found > target:
        raise StoreError(
            f"job database {path} has schema version {found}, newer than the {target} this "
            "gpulane understands; upgrade gpulane or point store.path at another file"
        )
    for step in migrations[found:]:
        step(conn)
    if found != target:
        conn.execute(f"PRAGMA user_version = {target:d}")
    return found
