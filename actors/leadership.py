"""One gateway's part in a cluster on PostgreSQL: its LeaseKeeper and what it last read
(docs/architecture.md section 14).

``gpulane serve`` starts one that contends for the lease and starts its lane when it wins
(``actors.gateway.cluster_serve``); a GpuLane started on ``store.url`` without one starts
its own, which takes the lease at once or refuses, naming the gateway that leads.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Mapping
from typing import Any, cast

import pykka

from actors.backends.base import Backend, CancelToken, ChunkSink
from actors.config import Config
from actors.lease_keeper import (
    LeaseBoard,
    LeaseEvent,
    LeaseKeeper,
    StillLeads,
    TakeLease,
    holder_id,
    node_name,
)
from actors.runtime import Timers
from protocol.backend import BackendRequest
from protocol.cluster import ClusterView, LeaseHold, LeaseLost
from protocol.errors import BackendError

__all__ = ["LaneLease", "Lead", "Leadership", "advertised_url"]

_WILDCARDS = ("0.0.0.0", "::", "")
# How long a question to the keeper may take: a takeover waits up to about 2 s for locks.
_ASK_TIMEOUT_S = 15.0


def advertised_url(config: Config) -> str:
    """Where other gateways reach this one: ``cluster.advertise_url``, else the gateway's
    host and port (the host name when it listens on every address)."""
    gateway = config.gateway
    if config.cluster.advertise_url:
        return config.cluster.advertise_url.rstrip("/")
    host = socket.gethostname() if gateway.host in _WILDCARDS else gateway.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{gateway.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class Lead:
    """What a lane leads by: the hold its store's writes are fenced by, the view ``/status``
    shows, and ``leads()``, the local check every model call makes first."""

    hold: LeaseHold
    view: Callable[[], ClusterView]
    leads: Callable[[], bool]


class Leadership:
    """A running LeaseKeeper for this gateway, with its board; stop it to release the lease."""

    def __init__(self, keeper: pykka.ActorRef[Any], board: LeaseBoard) -> None:
        self._keeper = keeper
        self._board = board

    @classmethod
    def start(
        cls,
        config: Config,
        timers: Timers,
        events: Callable[[LeaseEvent], None],
        *,
        contend: bool,
    ) -> Leadership:
        """A keeper on ``config.store.url``: it contends for the lease every ``poll_s`` when
        ``contend`` is set, else it only keeps a lease taken with :meth:`take`."""
        node = node_name(config.cluster, config.gateway.port)
        holder = holder_id(node)
        board = LeaseBoard(node, holder)
        keeper = LeaseKeeper.start(
            url=config.store.url,
            settings=config.cluster,
            holder=holder,
            node=node,
            advertise_url=advertised_url(config),
            timers=timers,
            board=board,
            events=events,
            contend=contend,
        )
        return cls(keeper, board)

    def take(self) -> LeaseHold:
        """Take the lease now, or raise StoreError naming the gateway that leads."""
        hold = self._keeper.ask(TakeLease(), timeout=_ASK_TIMEOUT_S)
        assert isinstance(hold, LeaseHold)
        return hold

    def still_leads(self) -> bool:
        """Renew now: True while this gateway still holds the lease."""
        return bool(self._keeper.ask(StillLeads(), timeout=_ASK_TIMEOUT_S))

    def view(self) -> ClusterView:
        """What this gateway knows of the cluster, without asking the keeper."""
        return self._board.view()

    def lead(self, hold: LeaseHold) -> Lead:
        """What a lane leads by with ``hold``, which this keeper took."""
        return Lead(hold, self._board.view, self._board.leads)

    def stop(self) -> None:
        """Stop the keeper, which releases a lease it holds. Idempotent."""
        self._keeper.stop(block=True, timeout=_ASK_TIMEOUT_S)


class LaneLease:
    """What a GpuLane leads by on PostgreSQL (nothing on SQLite): the hold its store's
    writes are fenced by, the view ``/status`` shows, and the guard on its model calls."""

    def __init__(self, lead: Lead | None, own: Leadership | None = None) -> None:
        self.hold = None if lead is None else lead.hold
        self._lead = lead
        self._own = own  # a keeper the lane started itself, stopped with it

    @classmethod
    def for_lane(
        cls, config: Config, timers: Timers, given: Lead | None, on_lost: Callable[[str], None]
    ) -> LaneLease:
        """The lead ``given`` by a cluster member; else, on ``store.url``, a lease taken now
        by a keeper of the lane's own (StoreError naming the gateway that leads), whose
        loss ``on_lost`` hears with the reason."""
        if given is not None:
            return cls(given)
        if not config.store.url:
            return cls(None)

        def heard(event: LeaseEvent) -> None:
            if isinstance(event, LeaseLost):
                on_lost(event.reason)

        own = Leadership.start(config, timers, heard, contend=False)
        try:
            return cls(own.lead(own.take()), own)
        except BaseException:
            own.stop()
            raise

    def guard(self, backend: Backend) -> Backend:
        """``backend`` for the lane's slots: on PostgreSQL each call (and each load or
        unload) first checks that the lease is held by this gateway's clock, so a leader
        woken past its lease sends nothing more to a model server."""
        if self._lead is None:
            return backend
        return cast(Backend, _LeaseGuarded(backend, self._lead.leads))

    def status(self) -> Mapping[str, Any] | None:
        """The cluster as ``/status`` shows it; None on SQLite."""
        return None if self._lead is None else self._lead.view().to_dict()

    def stop(self) -> None:
        """Stop a keeper the lane started, releasing the lease for the next leader."""
        if self._own is not None:
            self._own.stop()


class _LeaseGuarded:
    """A backend whose GPU-driving calls refuse to start once the lease ran out locally;
    reads (the catalog, what is loaded) and everything else pass through."""

    def __init__(self, inner: Backend, leads: Callable[[], bool]) -> None:
        self._inner = inner
        self._leads = leads

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _check(self) -> None:
        if not self._leads():
            raise BackendError(
                "this gateway's lease ran out: it starts no more model calls (another "
                "gateway leads, or will)",
                transient=True,
            )

    def complete(self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken) -> Any:
        self._check()
        return self._inner.complete(request, on_chunk, cancel)

    def load(self, model: str, *args: Any, **options: Any) -> None:
        self._check()
        self._inner.load(model, *args, **options)

    def unload(self, model: str) -> None:
        self._check()
        self._inner.unload(model)
