"""The webhook outbox: each ended job's delivery, written in the transaction that ends it.

Thread-free, on the JobDB's connection (docs/architecture.md section 6). A job that names
a webhook gets its outbox row (the URL, the body to post) in the same transaction
as its terminal state, so a crash can lose neither one without the other: a delivery is
never lost between the commit and the post (docs/operations.md, "Webhooks"). The
WebhookDelivery actor reads the pending rows and records each post here. The schema (and
the trigger that deletes a row with its job) is migration 4 in ``_schema.py``
(``_pg_schema.py`` on PostgreSQL). The SQL that differs between the engines is an
:class:`OutboxSQL`.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from actors.stores._rows import Connection
from protocol.errors import StoreError
from protocol.job import Job
from protocol.messages import RecordWebhookAttempt
from protocol.webhook import PendingDelivery, WebhookAttempt, WebhookState, WebhookStatus

__all__ = ["KEEPS_PENDING", "SQLITE_OUTBOX", "Outbox", "OutboxSQL", "webhook_body"]

# A prune's condition: a job whose delivery is still pending is kept (``jobs`` in scope).
KEEPS_PENDING = (
    "NOT EXISTS (SELECT 1 FROM webhook_outbox w WHERE w.job_seq = jobs.seq AND w.state = 'pending')"
)

# What the body says of the job: what a receiver acts on, not the prompt it sent.
_JOB_FIELDS = (
    "id", "seq", "state", "created_at", "started_at", "finished_at", "attempts",
    "preemptions", "result", "output", "error", "metrics",
)  # fmt: skip
_SPEC_FIELDS = ("kind", "model", "lane", "priority", "caller", "task_type", "task_id", "chain_id")

_INSERT = (
    "INSERT INTO webhook_outbox (job_seq, url, body, state, created_at, next_at) "
    "VALUES (?, ?, ?, 'pending', ?, ?)"
)


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxSQL:
    """The outbox's statements that differ between engines (``attempts`` is JSON text)."""

    begin: str  # starts the transaction of a recorded attempt
    record: str  # sets state, next_at, ended_at and appends an attempt (JSON text)
    read: str  # a pending delivery with its job's id, caller and state, and its attempts


SQLITE_OUTBOX = OutboxSQL(
    begin="BEGIN IMMEDIATE",
    record=(
        "UPDATE webhook_outbox SET state = ?, next_at = ?, ended_at = ?, "
        "attempts = json_insert(attempts, '$[#]', json(?)) "
        "WHERE job_seq = ? AND state = 'pending'"
    ),
    read=(
        "SELECT j.id, j.caller, j.state, w.url, w.body, w.created_at, "
        "json_array_length(w.attempts) FROM webhook_outbox w JOIN jobs j ON j.seq = w.job_seq "
        "WHERE w.job_seq = ? AND w.state = 'pending'"
    ),
)
_STATUS = "SELECT state, next_at, ended_at, attempts FROM webhook_outbox WHERE job_seq = ?"
_PENDING = (
    "SELECT job_seq, next_at FROM webhook_outbox WHERE state = 'pending' ORDER BY next_at, job_seq"
)


def webhook_body(job: Job) -> bytes:
    """The JSON a job's webhook posts: ``{"event": "job.<state>", "job": {...}}``, the job's
    outcome and how it is known (id, caller, model, task and chain ids), without its prompt."""
    whole = job.to_dict()
    spec = whole["spec"]
    summary = {name: whole[name] for name in _JOB_FIELDS}
    summary.update({name: spec[name] for name in _SPEC_FIELDS})
    return orjson.dumps({"event": f"job.{job.state.value}", "job": summary})


class Outbox:
    """The outbox of one open job database; ``error`` words a failure of the driver (one of
    ``errors``) as the database's StoreError."""

    def __init__(
        self,
        conn: Connection,
        error: Callable[[str, Exception], StoreError],
        *,
        errors: tuple[type[Exception], ...] = (sqlite3.Error,),
        sql: OutboxSQL = SQLITE_OUTBOX,
    ) -> None:
        self._conn = conn
        self._error = error
        self._errors = errors
        self._sql = sql

    def write_terminal(self, job: Job, update: str, params: Sequence[Any]) -> Job:
        """Apply ``update`` (the job's move into its terminal state) and write its delivery,
        both or neither, inside the open batch; returns the job with its delivery pending.

        A savepoint makes the pair one: a write in a batch fails alone (``JobDB``), so if
        the outbox row cannot be written the job's move is undone with it.
        """
        assert job.spec.webhook is not None and job.finished_at is not None
        body = webhook_body(job)  # before any SQL: a job that cannot be encoded writes nothing
        conn = self._conn
        conn.execute("SAVEPOINT webhook_outbox")
        try:
            conn.execute(update, params)
            conn.execute(
                _INSERT, (job.seq, job.spec.webhook, body, job.finished_at, job.finished_at)
            )
        except self._errors:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO webhook_outbox")
                conn.execute("RELEASE webhook_outbox")
            raise
        conn.execute("RELEASE webhook_outbox")
        status = WebhookStatus(job.spec.webhook, WebhookState.PENDING, (), job.finished_at)
        return job.replace(webhook=status)

    def attach(self, job: Job) -> Job:
        """``job`` with its delivery as the outbox has it (an ended job that names a webhook)."""
        if job.spec.webhook is None or not job.state.is_terminal:
            return job
        try:
            row = self._conn.execute(_STATUS, (job.seq,)).fetchone()
        except self._errors as exc:
            raise self._error("cannot read", exc) from exc
        if row is None:
            return job
        state, next_at, ended_at, attempts = row
        deliveries = tuple(WebhookAttempt.from_dict(a) for a in orjson.loads(attempts))
        status = WebhookStatus(job.spec.webhook, WebhookState(state), deliveries, next_at, ended_at)
        return job.replace(webhook=status)

    def pending(self) -> tuple[tuple[int, float], ...]:
        """Every pending delivery as (job sequence number, when its next post is due)."""
        try:
            rows = self._conn.execute(_PENDING).fetchall()
        except self._errors as exc:
            raise self._error("cannot read", exc) from exc
        return tuple((int(seq), float(due)) for seq, due in rows)

    def read(self, seq: int) -> PendingDelivery | None:
        """The delivery of job ``seq`` while it is pending, else None."""
        try:
            row = self._conn.execute(self._sql.read, (seq,)).fetchone()
        except self._errors as exc:
            raise self._error("cannot read", exc) from exc
        if row is None:
            return None
        job_id, caller, state, url, body, created_at, attempts = row
        return PendingDelivery(
            seq=seq,
            job_id=job_id,
            caller=caller,
            event=f"job.{state}",
            url=url,
            body=bytes(body),
            created_at=created_at,
            attempts=attempts,
        )

    def record(self, message: RecordWebhookAttempt) -> bool:
        """Add an attempt to a pending delivery and set its state, in a transaction of its
        own; False if the delivery was not pending (nothing changed)."""
        attempt = message.attempt
        ended = None if message.state is WebhookState.PENDING else attempt.at
        params = (
            message.state.value,
            message.next_attempt_at,
            ended,
            orjson.dumps(attempt.to_dict()).decode(),
            message.seq,
        )
        conn = self._conn
        try:
            conn.execute(self._sql.begin)
            changed = int(conn.execute(self._sql.record, params).rowcount)
            conn.execute("COMMIT")
        except self._errors as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._error("cannot record a webhook attempt", exc) from exc
        return changed == 1
