"""The SQLite job database's schema and its versioned migrations.

``PRAGMA user_version`` holds the version; :func:`migrate` brings an older file up to date
inside the opener's transaction and refuses a file from a newer gpulane.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeAlias

from protocol.enums import JobState
from protocol.errors import StoreError

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


# MIGRATIONS[i] turns a schema of version i into version i + 1; version 0 is an empty file.
MIGRATIONS: tuple[Migration, ...] = (_create_v1, _answer_parts_v2)
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
