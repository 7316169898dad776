"""What the tests of several gateways on one PostgreSQL database (test_follower.py,
test_limits_across_gateways.py) share: a leader and followers served on loopback.

The leader is real: a GpuLane on a FakeGpu whose store is the test's database, behind a
GatewayServer. Each follower is ``create_follower_app`` behind another GatewayServer, its
view of the cluster a ``Views`` the test sets (in ``gpulane serve`` it is the lease
keeper's). Importable by bare name from the modules beside it (pytest puts their folder
on ``sys.path``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from gateway_kit import ADMIN, ALICE, KEYS, bearer

from actors import Config, GpuLane
from actors.config import GatewaySettings
from actors.gateway import GatewayServer, create_app
from actors.gateway.follower import create_follower_app
from actors.stores import PgJobReader
from actors.testing import FakeGpu
from protocol import Limits, StoreSettings
from protocol.cluster import ClusterSettings, ClusterView, Role

LEASE_S = 2.5  # the followers' cluster.lease_s: Retry-After is 3
TIMEOUT_S = 10.0


@dataclasses.dataclass
class Leader:
    """The leader's lane on the test database, its fake GPU and its gateway."""

    lane: GpuLane
    gpu: FakeGpu
    server: GatewayServer

    @property
    def url(self) -> str:
        return self.server.url


@contextmanager
def running_leader(database: str, limits: Limits | None = None) -> Iterator[Leader]:
    """A leader on ``database`` with the kit's API keys; ``limits`` (default: none at all)
    are what its RateLimiter admits."""
    gpu = FakeGpu()
    config = Config(
        store=StoreSettings(url=database),
        gateway=GatewaySettings(api_keys=KEYS),
        limits=limits or Limits.off(),
    )
    with GpuLane.start(config, gpu=gpu) as lane, GatewayServer(create_app(lane)) as server:
        yield Leader(lane, gpu, server)


def view_of(leader_url: str | None, node: str = "follower-1") -> ClusterView:
    """A follower's view: ``leader_url`` leads (None: nobody does, a failover)."""
    known = leader_url is not None
    return ClusterView(
        node=node, holder=f"{node}-holder", role=Role.FOLLOWER, token=7,
        leader_node="leader-1" if known else None, leader_url=leader_url,
        lease_age_s=12.5 if known else None, renewed_age_s=0.25 if known else None,
        expires_in_s=2.25 if known else None,
    )  # fmt: skip


@dataclasses.dataclass
class Views:
    """The view a follower's app reads: what the test set last."""

    current: ClusterView

    def __call__(self) -> ClusterView:
        return self.current


@dataclasses.dataclass
class Follower:
    """A follower's app on loopback, the view it reads and its reader."""

    server: GatewayServer
    views: Views
    reader: PgJobReader

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, key: str | None = ALICE) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers=bearer(key) if key else {}, timeout=TIMEOUT_S
        )

    def metric(self, sample: str) -> float:
        """The value of one sample line of the follower's /metrics."""
        with self.client(ADMIN) as http:
            text = http.get("/metrics").text
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        raise AssertionError(f"no sample {sample} in:\n{text}")


@contextmanager
def running_follower(
    database: str, view: ClusterView, transport: httpx.AsyncBaseTransport | None = None
) -> Iterator[Follower]:
    """A follower on ``database`` seeing ``view`` (``transport``: the network to the
    leader, tests), with the kit's API keys and ``LEASE_S``."""
    views = Views(view)
    reader = PgJobReader(database)
    app = create_follower_app(
        views, reader, GatewaySettings(api_keys=KEYS), transport=transport,
        cluster=ClusterSettings(lease_s=LEASE_S),
    )  # fmt: skip
    try:
        with GatewayServer(app) as server:
            yield Follower(server, views, reader)
    finally:
        reader.close()
