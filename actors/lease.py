"""The leader's lease in PostgreSQL: the SQL a LeaseKeeper runs and the fence a leader's store
checks (docs/architecture.md section 14). Thread-free; every function takes an autocommit
psycopg connection.

The lease is one row (``gpulane_lease``, schema version 6). Its ``token`` is the fencing
token: taking the lease adds one, so a leader that stalled past its lease finds its token
gone at its next write (:func:`check_fence`) or renewal (:func:`renew`). Times come from
the database's clock, so gateways on machines whose clocks disagree still agree on the
lease. Each gateway's sessions carry its holder id in ``application_name``
(:func:`session_name`): a lease whose holder has no session left (its process died) is
taken at once, without waiting for it to expire, and the new leader ends the old holder's
sessions, so a paused one cannot hold locks that the takeover would wait on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from protocol.cluster import LeaseHold, LeaseLostError

__all__ = [
    "LeaseRow",
    "check_fence",
    "read_lease",
    "release",
    "renew",
    "session_name",
    "try_acquire",
]

# PostgreSQL keeps 63 bytes of an application_name; a holder id fits with either prefix.
_NAME_BYTES = 63
# How long a takeover waits for a lock (the old holder's transactions are ended first).
_LOCK_TIMEOUT = "2s"
# How long ending one of the old holder's sessions may take (pg_terminate_backend's wait).
_TERMINATE_WAIT_MS = 1000

_LIVE_SESSION = (
    "EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = current_database() "
    "AND a.application_name = 'gpulane lease ' || l.holder)"
)
_READ = (
    "SELECT holder, node, url, token, "
    "EXTRACT(EPOCH FROM now() - acquired_at)::float8, "
    "EXTRACT(EPOCH FROM now() - renewed_at)::float8, "
    "EXTRACT(EPOCH FROM expires_at - now())::float8, "
    f"holder IS NOT NULL AND expires_at > now() AND {_LIVE_SESSION} "
    "FROM gpulane_lease l WHERE id = 1"
)
_TERMINATE = (
    "SELECT count(pg_terminate_backend(pid, %s)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name IN (%s, %s) "
    "AND pid <> pg_backend_pid()"
)
_TAKE = (
    "UPDATE gpulane_lease SET holder = %s, node = %s, url = %s, token = token + 1, "
    "acquired_at = now(), renewed_at = now(), expires_at = now() + make_interval(secs => %s) "
    "WHERE id = 1 AND token = %s RETURNING token"
)
_RENEW = (
    "UPDATE gpulane_lease SET renewed_at = now(), "
    "expires_at = now() + make_interval(secs => %s) "
    "WHERE id = 1 AND holder = %s AND token = %s RETURNING token"
)
_RELEASE = "UPDATE gpulane_lease SET expires_at = now() WHERE id = 1 AND holder = %s AND token = %s"
_FENCE = "SELECT 1 FROM gpulane_lease WHERE id = 1 AND holder = %s AND token = %s FOR SHARE"


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseRow:
    """The lease as read: who holds it, its token, its ages in seconds on the database's
    clock (None before anyone held it), and whether it is live (unexpired, its holder's
    lease session still connected)."""

    holder: str | None
    node: str | None
    url: str | None
    token: int
    age_s: float | None
    renewed_age_s: float | None
    expires_in_s: float | None
    live: bool


def session_name(role: str, holder: str) -> str:
    """The ``application_name`` of a gateway's ``role`` session ("lease", "store")."""
    name = f"gpulane {role} {holder}"
    if len(name.encode()) > _NAME_BYTES:
        raise ValueError(f"holder id {holder!r} is too long for an application_name")
    return name


def read_lease(conn: psycopg.Connection[Any]) -> LeaseRow:
    """The lease row as it is now."""
    row = conn.execute(_READ).fetchone()
    if row is None:
        raise LeaseLostError("the lease row is missing (schema version 6 creates it)")
    holder, node, url, token, age, renewed, expires, live = row
    return LeaseRow(holder, node, url, int(token), age, renewed, expires, bool(live))


def try_acquire(
    conn: psycopg.Connection[Any], holder: str, node: str, url: str, lease_s: float
) -> LeaseHold | None:
    """Take the lease if nobody holds a live one; answers the hold, or None (it is held).

    The old holder's sessions are ended first (it expired or is gone), so none of its
    transactions holds the lease row; then the row is taken only if its token is still
    the one read, so of two followers racing exactly one wins.
    """
    seen = read_lease(conn)
    if seen.live and seen.holder != holder:
        return None
    if seen.holder is not None and seen.holder != holder:
        conn.execute(
            _TERMINATE,
            (_TERMINATE_WAIT_MS, session_name("lease", seen.holder),
             session_name("store", seen.holder)),
        )  # fmt: skip
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
        row = conn.execute(_TAKE, (holder, node, url, lease_s, seen.token)).fetchone()
    return None if row is None else LeaseHold(holder, int(row[0]))


def renew(conn: psycopg.Connection[Any], hold: LeaseHold, lease_s: float) -> bool:
    """Push the lease's expiry ``lease_s`` past now; False if ``hold`` no longer holds it."""
    row = conn.execute(_RENEW, (lease_s, hold.holder, hold.token)).fetchone()
    return row is not None


def release(conn: psycopg.Connection[Any], hold: LeaseHold) -> None:
    """Give the lease up now (a clean stop), so a follower takes it at its next poll."""
    conn.execute(_RELEASE, (hold.holder, hold.token))


def check_fence(conn: psycopg.Connection[Any], hold: LeaseHold) -> None:
    """Inside a write transaction: lock the lease row for share if ``hold`` still holds it,
    so no takeover commits before this transaction ends; else raise LeaseLostError."""
    if conn.execute(_FENCE, (hold.holder, hold.token)).fetchone() is None:
        raise LeaseLostError(
            f"this gateway's lease (token {hold.token}) was taken over: another gateway "
            "leads now, and this one's dispatch-side writes are refused"
        )
