"""Several gateways on one PostgreSQL database: the ``[cluster]`` settings, the lease a
leader holds, and what a gateway knows of the cluster (docs/architecture.md section 14).

Plain immutable values; the lease's SQL is ``actors.lease`` and its keeper
``actors.lease_keeper``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Mapping
from typing import Any

from protocol.errors import StoreError, ValidationError

__all__ = [
    "ClusterSettings",
    "ClusterView",
    "LeaseAcquired",
    "LeaseHold",
    "LeaseLost",
    "LeaseLostError",
    "Role",
]

_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}$")


class Role(enum.StrEnum):
    """What a gateway on PostgreSQL is now: the leader dispatches, a follower forwards."""

    LEADER = "leader"
    FOLLOWER = "follower"


class LeaseLostError(StoreError):
    """This gateway no longer holds the leader's lease: its dispatch-side writes are refused
    (the fencing token moved on, docs/architecture.md section 14)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterSettings:
    """How gateways on one PostgreSQL database (``store.url``) choose their leader.

    The leader renews its lease every ``lease_s / 3`` seconds; a follower tries to take it
    every ``poll_s`` seconds and does once it expired (or its holder's sessions are gone),
    so a dead leader is replaced within about ``lease_s + poll_s`` plus the new lane's start
    (default under 5 s). ``node`` names this gateway (default: the host name and port);
    ``advertise_url`` is where the other gateways reach it to forward requests (default:
    ``http://<gateway.host>:<gateway.port>``).
    """

    lease_s: float = 3.0
    poll_s: float = 0.5
    node: str = ""
    advertise_url: str = ""

    def __post_init__(self) -> None:
        for name, low in (("lease_s", 0.3), ("poll_s", 0.01)):
            seconds = getattr(self, name)
            if (
                not isinstance(seconds, (int, float))
                or isinstance(seconds, bool)
                or not low <= seconds < math.inf
            ):
                raise ValidationError(
                    f"cluster.{name}",
                    f"must be a number of seconds, {low} or more, got {seconds!r}",
                )
        if self.poll_s >= self.lease_s:
            raise ValidationError(
                "cluster.poll_s",
                f"must be less than cluster.lease_s ({self.lease_s}), got {self.poll_s!r}",
            )
        if self.node and not (isinstance(self.node, str) and _NODE.match(self.node)):
            raise ValidationError(
                "cluster.node",
                f"is not a node name: {self.node!r}",
                allowed="1 to 40 letters, digits, '_', '.', ':' or '-', not starting with a sign",
            )
        if self.advertise_url and not (
            isinstance(self.advertise_url, str)
            and self.advertise_url.startswith(("http://", "https://"))
        ):
            raise ValidationError(
                "cluster.advertise_url",
                f"must be an http:// or https:// URL, got {self.advertise_url!r}",
            )


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseHold:
    """A lease this process holds: its holder id and the fencing token every dispatch-side
    write of its store checks."""

    holder: str
    token: int


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseAcquired:
    """The lease keeper took the lease: this gateway leads, its writes fenced by ``hold``."""

    hold: LeaseHold


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseLost:
    """The lease keeper no longer holds ``hold``: another gateway took it, or it could not be
    renewed before it ran out (``reason`` says which). The lane must stop dispatching."""

    hold: LeaseHold
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterView:
    """What one gateway knows of the cluster, as of its lease keeper's last read.

    ``leader_*`` describe the lease's holder (None: nobody holds a live lease, a failover
    is under way); ``lease_age_s`` is how long the leader has held it, ``renewed_age_s``
    how long ago it last renewed, both on the database's clock.
    """

    node: str
    holder: str
    role: Role
    token: int
    leader_node: str | None = None
    leader_url: str | None = None
    lease_age_s: float | None = None
    renewed_age_s: float | None = None
    expires_in_s: float | None = None
    takeovers: int = 0  # leases this gateway has taken since it started

    @property
    def leader_known(self) -> bool:
        """A live leader exists (this gateway or another)."""
        return self.leader_url is not None

    def to_dict(self) -> Mapping[str, Any]:
        """The view as ``/status`` shows it."""
        return {
            "node": self.node,
            "role": self.role.value,
            "token": self.token,
            "leader": self.leader_node,
            "leader_url": self.leader_url,
            "lease_age_s": self.lease_age_s,
            "renewed_age_s": self.renewed_age_s,
            "expires_in_s": self.expires_in_s,
            "takeovers": self.takeovers,
        }
