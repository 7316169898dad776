"""The LeaseKeeper actor: holds, renews or contends for the leader's lease on a connection of
its own (docs/architecture.md section 14).

A leader renews every ``cluster.lease_s / 3`` seconds; a follower reads the lease every
``cluster.poll_s`` and, when ``contend`` is set, takes it once it is not live. The keeper
tells ``events`` a :class:`LeaseAcquired` or :class:`LeaseLost` (the host starts or stops
its lane on another thread: the keeper must go on renewing meanwhile) and publishes what it
read on a :class:`LeaseBoard`, which the gateway reads on every request without asking the
actor. Its own deadline is on the monotonic clock from the start of the last renewal that
succeeded, so it gives the lease up locally no later than the database lets it expire.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pykka
import structlog

from actors.lease import LeaseRow, read_lease, release, renew, session_name, try_acquire
from actors.runtime import TimerHandle, Timers
from actors.stores._pg_schema import migrate
from actors.stores._postgres import CONNECT_TIMEOUT_S, explain, redact
from protocol.cluster import (
    ClusterSettings,
    ClusterView,
    LeaseAcquired,
    LeaseHold,
    LeaseLost,
    Role,
)
from protocol.errors import StoreError

__all__ = [
    "LeaseBoard",
    "LeaseEvent",
    "LeaseKeeper",
    "StillLeads",
    "TakeLease",
    "holder_id",
    "node_name",
]

log = structlog.get_logger(__name__)

LeaseEvent = LeaseAcquired | LeaseLost


def node_name(settings: ClusterSettings, port: int) -> str:
    """This gateway's node name: ``cluster.node``, else the host name and the port."""
    return settings.node or f"{socket.gethostname()[:30]}:{port}"


def holder_id(node: str) -> str:
    """A holder id for one run of a gateway: its node name and a random tag, so a restarted
    gateway is a new holder."""
    return f"{node}#{secrets.token_hex(4)}"


@dataclasses.dataclass(frozen=True, slots=True)
class TakeLease:
    """Ask: try to take the lease now; answers the LeaseHold, or raises StoreError naming
    the live holder."""


@dataclasses.dataclass(frozen=True, slots=True)
class StillLeads:
    """Ask: renew a held lease now; answers whether this gateway still holds it."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Tick:
    """The keeper's timer: renew, or read and contend."""


class LeaseBoard:
    """The latest ClusterView, replaced whole by the keeper; :meth:`view` ages it to now.
    Also the local deadline of a held lease, which :meth:`leads` checks on every model call
    a leader starts, so a leader woken past its lease starts none (a process stopped with
    SIGSTOP finds the monotonic clock moved on)."""

    def __init__(self, node: str, holder: str) -> None:
        self._lock = threading.Lock()
        self._view = ClusterView(node=node, holder=holder, role=Role.FOLLOWER, token=0)
        self._read_at = time.monotonic()
        self._until = 0.0  # monotonic; 0: no lease held

    def hold_until(self, deadline: float) -> None:
        """The lease is held until ``deadline`` on the monotonic clock (0: not held)."""
        self._until = deadline

    def leads(self) -> bool:
        """This gateway holds the lease now, by its own clock."""
        return time.monotonic() < self._until

    def publish(self, view: ClusterView) -> None:
        """Show ``view``, read now."""
        with self._lock:
            self._view, self._read_at = view, time.monotonic()

    def view(self) -> ClusterView:
        """The last view, its ages moved on by the time since it was read."""
        with self._lock:
            view, elapsed = self._view, time.monotonic() - self._read_at

        def later(seconds: float | None, sign: float = 1.0) -> float | None:
            return None if seconds is None else round(seconds + sign * elapsed, 3)

        return dataclasses.replace(
            view,
            lease_age_s=later(view.lease_age_s),
            renewed_age_s=later(view.renewed_age_s),
            expires_in_s=later(view.expires_in_s, -1.0),
        )


class LeaseKeeper(pykka.ThreadingActor):
    """Owns this gateway's lease connection and its hold on the lease, if any."""

    def __init__(
        self,
        *,
        url: str,
        settings: ClusterSettings,
        holder: str,
        node: str,
        advertise_url: str,
        timers: Timers,
        board: LeaseBoard,
        events: Callable[[LeaseEvent], None],
        contend: bool = True,
    ) -> None:
        super().__init__()
        self._url, self._name = url, redact(url)
        self._settings = settings
        self._holder, self._node, self._advertise = holder, node, advertise_url
        self._timers = timers
        self._board = board
        self._events = events
        self._contend = contend
        self._conn: psycopg.Connection[Any] | None = None
        self._hold: LeaseHold | None = None
        self._deadline = 0.0  # monotonic: when this keeper stops counting itself the leader
        self._timer: TimerHandle | None = None
        self._takeovers = 0

    def on_start(self) -> None:
        """Read the lease at once, then on the timer."""
        self.actor_ref.tell(_Tick())

    def on_stop(self) -> None:
        """Give a held lease up (a follower takes it at its next poll) and close."""
        if self._timer is not None:
            self._timer.cancel()
        self._board.hold_until(0.0)
        if self._hold is not None and self._conn is not None:
            try:
                release(self._conn, self._hold)
                log.info("lease_released", token=self._hold.token)
            except psycopg.Error as exc:
                log.warning("lease_release_failed", error=explain(exc))
        if self._conn is not None:
            self._conn.close()

    def on_receive(self, message: Any) -> Any:
        """A tick renews or contends; TakeLease tries once, now; StillLeads renews now."""
        if isinstance(message, _Tick):
            self._tick()
            return None
        if isinstance(message, TakeLease):
            return self._take_now()
        if isinstance(message, StillLeads):
            if self._hold is not None:
                self._renew(self._hold)
            return self._hold is not None
        raise TypeError(f"LeaseKeeper cannot handle {type(message).__name__}")

    # --- the timer ----------------------------------------------------------------------

    def _tick(self) -> None:
        try:
            if self._hold is not None:
                self._renew(self._hold)
            else:
                self._read_and_contend()
        finally:
            every = self._settings.lease_s / 3 if self._hold else self._settings.poll_s
            self._timer = self._timers.send_after(every, self.actor_ref, _Tick())

    def _renew(self, hold: LeaseHold) -> None:
        started = time.monotonic()
        try:
            kept = renew(self._connection(), hold, self._settings.lease_s)
        except (psycopg.Error, StoreError) as exc:
            self._drop_connection()
            if time.monotonic() >= self._deadline:
                self._lost(hold, f"could not renew it before it ran out: {exc}")
            else:
                log.warning("lease_renewal_failed", error=str(exc), token=hold.token)
            return
        if not kept:
            self._lost(hold, "another gateway took it over")
            return
        self._deadline = started + self._settings.lease_s
        self._board.hold_until(self._deadline)
        self._publish_safely()

    def _read_and_contend(self) -> None:
        started = time.monotonic()
        try:
            conn = self._connection()
            row = read_lease(conn)
            if self._contend and not row.live:
                hold = try_acquire(
                    conn, self._holder, self._node, self._advertise, self._settings.lease_s
                )
                if hold is not None:
                    self._acquired(hold, started)
                    return
            self._publish(row)
        except (psycopg.Error, StoreError) as exc:
            self._drop_connection()
            log.warning("lease_read_failed", error=str(exc))

    def _take_now(self) -> LeaseHold:
        """TakeLease: the hold, or StoreError naming who holds a live lease."""
        if self._hold is not None:
            return self._hold
        started = time.monotonic()
        try:
            conn = self._connection()
            hold = try_acquire(
                conn, self._holder, self._node, self._advertise, self._settings.lease_s
            )
            row = read_lease(conn) if hold is None else None
        except psycopg.Error as exc:
            self._drop_connection()
            raise StoreError(f"cannot take the lease on {self._name}: {explain(exc)}") from exc
        if hold is None:
            assert row is not None
            raise StoreError(
                f"job database {self._name} is led by another gateway ({row.node}, "
                f"{row.url or 'no URL'}, lease token {row.token}): one gateway at a time "
                "dispatches; run this one as a follower (gpulane serve) or stop the other"
            )
        self._acquired(hold, started, tell=False)
        return hold

    # --- holding and losing ---------------------------------------------------------

    def _acquired(self, hold: LeaseHold, started: float, *, tell: bool = True) -> None:
        self._hold = hold
        self._deadline = started + self._settings.lease_s
        self._board.hold_until(self._deadline)
        self._takeovers += 1
        log.info("lease_acquired", node=self._node, token=hold.token)
        self._publish_safely()
        if tell:
            self._events(LeaseAcquired(hold))

    def _lost(self, hold: LeaseHold, reason: str) -> None:
        self._hold = None
        self._board.hold_until(0.0)
        log.error("lease_lost", node=self._node, token=hold.token, reason=reason)
        self._publish_safely()
        self._events(LeaseLost(hold, reason))

    def _publish_safely(self) -> None:
        """Publish the row as read now; on a failed read keep the last view but the role."""
        try:
            self._publish(read_lease(self._connection()))
        except (psycopg.Error, StoreError) as exc:
            self._drop_connection()
            log.warning("lease_read_failed", error=str(exc))
            view = self._board.view()
            role = Role.LEADER if self._hold else Role.FOLLOWER
            self._board.publish(dataclasses.replace(view, role=role))

    def _publish(self, row: LeaseRow) -> None:
        live = row.live
        self._board.publish(
            ClusterView(
                node=self._node,
                holder=self._holder,
                role=Role.LEADER if self._hold else Role.FOLLOWER,
                token=row.token,
                leader_node=row.node if live else None,
                leader_url=(row.url or None) if live else None,
                lease_age_s=row.age_s if live else None,
                renewed_age_s=row.renewed_age_s if live else None,
                expires_in_s=row.expires_in_s if live else None,
                takeovers=self._takeovers,
            )
        )

    # --- the connection -------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        """The keeper's connection, opened (and the schema brought up to date) if needed."""
        if self._conn is None:
            statement_ms = int(self._settings.lease_s * 1000)
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=session_name("lease", self._holder),
                options=f"-c statement_timeout={statement_ms}",
            )
            try:
                with conn.transaction():
                    migrate(conn, self._name)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
