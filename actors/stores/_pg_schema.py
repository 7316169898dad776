"""The PostgreSQL job database's schema: the same versions (1..6) as SQLite's ``_schema.py``,
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

__all__ = ["FENCED_SQLSTATE", "MIGRATION_LOCK_KEY", "PG_MIGRATIONS", "migrate"]

_STATES = ", ".join(repr(s.value) for s in JobState)
_OUTBOX_STATES = ", ".join(repr(s.value) for s in WebhookState if s is not WebhookState.WAITING)

# The SQLSTATE of a write the fence refused (a class no PostgreSQL error uses).
FENCED_SQLSTATE = "GL001"

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
    # 6 (#18): the leader's lease, one row (``actors/lease.py``); token 0 was never held.
    (
        """CREATE TABLE gpulane_lease (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            holder TEXT,
            node TEXT,
            url TEXT,
            token BIGINT NOT NULL,
            acquired_at TIMESTAMPTZ,
            renewed_at TIMESTAMPTZ,
            expires_at TIMESTAMPTZ
        )""",
        "INSERT INTO gpulane_lease (id, token) VALUES (1, 0)",
        # The fence: a session that names a lease holder (the leader's store, set at open)
        # writes jobs and deliveries only while that holder's token holds the lease, and
        # locks the row for share until its transaction ends, so no takeover commits
        # in between (docs/architecture.md section 14). Other sessions are not fenced.
        f"""CREATE FUNCTION gpulane_fence() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            me TEXT := current_setting('gpulane.holder', true);
        BEGIN
            IF me IS NULL OR me = '' THEN
                RETURN NULL;
            END IF;
            PERFORM 1 FROM gpulane_lease WHERE id = 1 AND holder = me
                AND token = current_setting('gpulane.token')::BIGINT FOR SHARE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'lease token % of % was taken over by another gateway',
                    current_setting('gpulane.token'), me USING ERRCODE = '{FENCED_SQLSTATE}';
            END IF;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER jobs_fenced BEFORE INSERT OR UPDATE OR DELETE ON jobs "
        "FOR EACH STATEMENT EXECUTE FUNCTION gpulane_fence()",
        "CREATE TRIGGER webhook_outbox_fenced BEFORE INSERT OR UPDATE OR DELETE "
        "ON webhook_outbox FOR EACH STATEMENT EXECUTE FUNCTION gpulane_fence()",
    ),
)

# The advisory lock a migration holds until its transaction ends.
MIGRATION_LOCK_KEY = int.from_bytes(b"gpl-migr", "big")
_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS gpulane_schema (version INTEGER NOT NULL)"


def migrate(
    conn: psycopg.Connection[Any], name: str, migrations: Sequence[Sequence[str]] = PG_MIGRATIONS
) -> int:
    """Bring the schema up to ``len(migrations)`` inside the caller's transaction (a psycopg
    connection, ``%s`` marks); returns the version found. A database written by a newer
    gpulane is refused, not guessed at. Gateways starting together take turns: a
    transaction-level advisory lock serialises their migrations."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
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
