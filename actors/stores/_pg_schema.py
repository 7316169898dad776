"""The PostgreSQL job database's schema: the same versions (1..5) as SQLite's ``_schema.py``,
in PostgreSQL's dialect.

The version lives in a one-row table, ``gpulane_schema``; :func:`migrate` brings an older
database up to date inside the opener's transaction and refuses one from a newer gpulane.
Times are ``DOUBLE PRECISION`` (PostgreSQL's ``REAL`` is 4 bytes), JSON stays text so both
engines decode rows the same way (``_rows.job_from_row``), and ``seq`` comes from a
sequence, ``jobs_seq``, so other gateways can insert too (docs/architecture.md section 14).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from protocol.enums import JobState
from protocol.errors import StoreError
from protocol.webhook import WebhookState

__all__ = ["PG_MIGRATIONS", "migrate"]

_STATES = ", ".join(repr(s.value) for s in JobState)
_OUTBOX_STATES = ", ".join(repr(s.value) for s in WebhookState if s is not WebhookState.WAITING)

# PG_MIGRATIONS[i] turns a schema of version i into version i + 1, as ``_schema.MIGRATIONS``.
PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the jobs table and the same indexes as SQLite's (why only these: ``_schema._create_v1``).
    (
        "CREATE SEQUENCE jobs_seq",
        f"""CREATE TABLE jobs (
            seq BIGINT PRIMARY KEY DEFAULT nextval('jobs_seq'),
            id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL CHECK (state IN ({_STATES})),
            lane TEXT NOT NULL,
            caller TEXT NOT NULL,
            model TEXT NOT NULL,
            priority INTEGER NOT NULL,
            spec TEXT NOT NULL,
            retry_of TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            not_before DOUBLE PRECISION,
            attempts INTEGER NOT NULL DEFAULT 0,
            preemptions INTEGER NOT NULL DEFAULT 0,
            partial_output TEXT NOT NULL DEFAULT '',
            result TEXT,
            error TEXT,
            metrics TEXT
        )""",
        "ALTER SEQUENCE jobs_seq OWNED BY jobs.seq",
        "CREATE INDEX jobs_by_state ON jobs (state, seq)",
        "CREATE INDEX jobs_by_caller ON jobs (caller, seq)",
        "CREATE INDEX jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL",
    ),
    # 2 (#14): the answer besides its text, and each call's metrics (JSON text).
    (
        "ALTER TABLE jobs ADD COLUMN output TEXT",
        "ALTER TABLE jobs ADD COLUMN segments TEXT",
    ),
    # 3 (#16): SQLite's incremental vacuum; PostgreSQL's autovacuum does this job already.
    (),
    # 4 (#16): the webhook outbox (``_outbox.py``); a row leaves with its job by the foreign
    # key, as SQLite's trigger does it.
    (
        f"""CREATE TABLE webhook_outbox (
            job_seq BIGINT PRIMARY KEY REFERENCES jobs (seq) ON DELETE CASCADE,
            url TEXT NOT NULL,
            body BYTEA NOT NULL,
            state TEXT NOT NULL CHECK (state IN ({_OUTBOX_STATES})),
            created_at DOUBLE PRECISION NOT NULL,
            next_at DOUBLE PRECISION,
            ended_at DOUBLE PRECISION,
            attempts TEXT NOT NULL DEFAULT '[]'
        )""",
        "CREATE INDEX webhook_outbox_pending ON webhook_outbox (next_at) WHERE state = 'pending'",
    ),
    # 5 (#17): where a job's last call ran.
    (
        "ALTER TABLE jobs ADD COLUMN backend TEXT",
        "ALTER TABLE jobs ADD COLUMN slot TEXT",
    ),
)

_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS gpulane_schema (version INTEGER NOT NULL)"


def migrate(
    conn: psycopg.Connection[Any], name: str, migrations: Sequence[Sequence[str]] = PG_MIGRATIONS
) -> int:
    """Bring the schema up to ``len(migrations)`` inside the caller's transaction (a psycopg
    connection, ``%s`` marks); returns the version found. A database written by a newer
    gpulane is refused, not guessed at."""
    conn.execute(_VERSION_TABLE)
    row = conn.execute("SELECT version FROM gpulane_schema").fetchone()
    found = 0 if row is None else int(row[0])
    target = len(migrations)
    if found > target:
        raise StoreError(
            f"job database {name} has schema version {found}, newer than the {target} this "
            "gpulane understands; upgrade gpulane or point store.url at another database"
        )
    for step in migrations[found:]:
        for statement in step:
            conn.execute(statement)
    if row is None:
        conn.execute("INSERT INTO gpulane_schema (version) VALUES (%s)", (target,))
    elif found != target:
        conn.execute("UPDATE gpulane_schema SET version = %s", (target,))
    return found
