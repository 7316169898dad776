"""Which gateway leads, on the live views (issue 18, "Operations"): ``GET /status``'s picture
carries the lane's ``cluster`` (the leader's URL withheld from a viewer without a key, as a
backend's is), ``gpulane top`` draws its line, and the status page its strip in headless
Chromium; a gateway on SQLite shows none of it on ``/status``, the page or ``/metrics``.

The lane is ``test_backend_surfaces``' stub with a ``ClusterView.to_dict()`` added under
``"cluster"``, as ``GpuLane.status()`` has it on PostgreSQL; the SQLite checks run a real
gateway, and the last test a real gateway on a lane that leads a PostgreSQL database of its
own (``postgres_kit.fresh_database``; it skips naming the missing server, and fails in CI)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import httpx
import pytest
from gateway_kit import ADMIN, ALICE, KEYS, running_stack
from postgres_kit import fresh_database
from rich.console import Console
from test_backend_surfaces import StubLane, _run_here, page_server
from test_views import cell, needs_chromium, render_in_chromium

from actors import Config
from actors.config import GatewaySettings
from actors.gateway import GatewayServer, create_app
from actors.gateway.auth import Caller
from actors.gateway.watch import LaneWatch, view_for
from actors.runtime import ManualClock
from actors.system import GpuLane
from actors.testing import FakeGpu
from actors.top import render, run_top
from protocol import Limits, StoreSettings
from protocol.cluster import ClusterSettings, ClusterView, Role

OPS = Caller("ops", admin=True)
LEADER_URL = "http://10.0.0.7:11435"


def view(role: Role, *, leader: str | None = "gw-a", takeovers: int = 0) -> Mapping[str, Any]:
    """A ClusterView as ``/status`` shows it: gw-a's as the leader, gw-b's as a follower; no
    leader while a failover is under way."""
    return ClusterView(
        node="gw-a" if role is Role.LEADER else "gw-b", holder="h#01", role=role, token=7,
        leader_node=leader, leader_url=LEADER_URL if leader else None,
        lease_age_s=12.3 if leader else None, renewed_age_s=0.4 if leader else None,
        expires_in_s=2.6 if leader else None, takeovers=takeovers,
    ).to_dict()  # fmt: skip


class ClusterLane(StubLane):
    """The two-backend stub lane on PostgreSQL: its status carries ``cluster``."""

    def __init__(self, cluster: Mapping[str, Any]) -> None:
        super().__init__()
        self.cluster = cluster

    def status(self) -> Mapping[str, Any]:
        return MappingProxyType({**super().status(), "cluster": self.cluster})


def picture_of(lane: StubLane, viewer: Caller | None = OPS) -> dict[str, Any]:
    """The live views' picture of ``lane`` as ``viewer`` sees it (None: no key)."""
    watch = LaneWatch(cast(GpuLane, lane), max_age=0.0)
    return view_for(asyncio.run(watch.picture(_run_here)), viewer)


# --- GET /status's picture and gpulane top ---------------------------------------------------


def test_the_picture_carries_the_lanes_cluster_view_for_a_key_holder() -> None:
    lane = ClusterLane(view(Role.LEADER, takeovers=1))
    assert picture_of(lane)["cluster"] == lane.cluster
    assert picture_of(lane, Caller("alice"))["cluster"]["leader_url"] == LEADER_URL


def test_a_viewer_without_a_key_sees_who_leads_but_not_the_leaders_address() -> None:
    anonymous = picture_of(ClusterLane(view(Role.FOLLOWER)), None)
    assert anonymous["cluster"] == {**view(Role.FOLLOWER), "leader_url": None}
    assert "10.0.0.7" not in json.dumps(anonymous)


def test_top_draws_the_followers_cluster_line_from_the_picture() -> None:
    console = Console(record=True, width=200)
    console.print(render(picture_of(ClusterLane(view(Role.FOLLOWER)))))
    assert (
        f"cluster  gw-b follower of gw-a ({LEADER_URL}) · lease 12.3s · renewed 0.4s ago · token 7"
        in console.export_text()
    )


# --- the status page in a real browser ------------------------------------------------------


def page_of(picture: Mapping[str, Any], tmp_path: Path) -> str:
    """The status page's DOM in headless Chromium once its script drew ``picture``."""
    with page_server(picture) as url:
        return render_in_chromium(url, tmp_path)


@needs_chromium
def test_the_status_page_shows_this_gateway_leads_in_chromium(tmp_path: Path) -> None:
    dom = page_of(picture_of(ClusterLane(view(Role.LEADER, takeovers=2))), tmp_path)
    assert cell(dom, "cluster-role") == "leader"
    assert 'id="cluster-role" class="pill good"' in dom
    assert cell(dom, "cluster-leader") == "leader gw-a (this gateway)"
    assert cell(dom, "cluster-lease") == (
        " \u00b7 lease 12.3 s \u00b7 renewed 0.4 s ago \u00b7 token 7 \u00b7 takeovers 2"
    )


@needs_chromium
def test_the_status_page_on_a_follower_names_the_leader_and_its_url_in_chromium(
    tmp_path: Path,
) -> None:
    dom = page_of(picture_of(ClusterLane(view(Role.FOLLOWER))), tmp_path)
    assert cell(dom, "cluster-role") == "follower"
    assert cell(dom, "cluster-leader") == f"gw-b follower of gw-a ({LEADER_URL})"
    assert cell(dom, "cluster-lease").endswith("token 7"), "no takeovers: not said"


@needs_chromium
def test_the_status_page_shows_a_failover_in_red_in_chromium(tmp_path: Path) -> None:
    dom = page_of(picture_of(ClusterLane(view(Role.FOLLOWER, leader=None)), None), tmp_path)
    assert 'id="cluster-role" class="pill bad"' in dom
    assert cell(dom, "cluster-leader") == "gw-b \u00b7 no leader: failover under way"
    assert 'id="cluster-lease"' not in dom


@needs_chromium
def test_the_status_page_of_a_follower_without_the_leaders_picture_says_why_in_chromium(
    tmp_path: Path,
) -> None:
    """A follower's ``/status`` while nobody leads is its cluster view alone
    (``actors.gateway.follower``): the page shows that and hides the lane's figures."""
    alone = {"cluster": view(Role.FOLLOWER, leader=None), "leader_reachable": False}
    dom = page_of(alone, tmp_path)
    assert cell(dom, "state") == "no leader" and 'class="pill bad"' in dom
    assert cell(dom, "alert-leader") == (
        "no leader: nothing is dispatched until a gateway takes the lease"
    )
    assert cell(dom, "cluster-leader") == "gw-b \u00b7 no leader: failover under way"
    assert '<div class="stats" id="stats" hidden="">' in dom and "<main hidden=" in dom
    assert cell(dom, "error") == "", "the script drew the picture without failing"


# --- a gateway on SQLite --------------------------------------------------------------------


@pytest.mark.parametrize("key", [ADMIN, None])
def test_a_gateway_on_sqlite_has_no_cluster_on_status_or_metrics(
    tmp_path: Path, key: str | None
) -> None:
    with running_stack(tmp_path) as stack, stack.client(key) as http:
        picture = http.get("/status").json()
        with stack.client(ALICE) as alice:
            metrics = alice.get("/metrics").text
    assert "cluster" not in picture and picture["queued"] == 0
    assert "gpulane_cluster" not in metrics and "gpulane_queue_depth" in metrics


@needs_chromium
def test_the_status_page_on_sqlite_has_an_empty_cluster_strip_in_chromium(
    tmp_path: Path,
) -> None:
    dom = page_of(picture_of(StubLane()), tmp_path)
    assert cell(dom, "cluster") == "" and cell(dom, "b-east-state") == "up"


# --- a real lane on PostgreSQL --------------------------------------------------------------


@pytest.fixture
def leader() -> Iterator[str]:
    """A gateway on a lane that leads a fresh PostgreSQL database as node gw-a; its URL. The
    lane runs on a ManualClock, so its lease keeper renews only when a test moves it."""
    settings = GatewaySettings(api_keys=KEYS)
    clock = ManualClock()
    with fresh_database() as url:
        config = Config(
            store=StoreSettings(url=url), limits=Limits.off(), gateway=settings,
            cluster=ClusterSettings(node="gw-a"),
        )  # fmt: skip
        with (
            GpuLane.start(config, gpu=FakeGpu(clock), clock=clock) as lane,
            GatewayServer(create_app(lane, settings)) as server,
        ):
            yield server.url


def test_a_gateway_leading_postgresql_shows_it_leads_on_status_top_and_metrics(
    leader: str,
) -> None:
    with httpx.Client(base_url=leader, headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
        cluster = admin.get("/status").json()["cluster"]
        metrics = admin.get("/metrics").text
    anonymous = httpx.get(leader + "/status").json()["cluster"]
    assert (cluster["node"], cluster["role"], cluster["leader"], cluster["token"]) == (
        "gw-a", "leader", "gw-a", 1,
    )  # fmt: skip
    assert cluster["leader_url"].startswith("http://") and anonymous["leader_url"] is None
    assert cluster["lease_age_s"] >= 0.0 and cluster["renewed_age_s"] >= 0.0
    assert cluster["takeovers"] == 1, "the lane took the lease at its start"
    for line in (
        'gpulane_cluster_role{role="leader"} 1.0',
        'gpulane_cluster_role{role="follower"} 0.0',
        "gpulane_cluster_lease_token 1.0",
        "gpulane_cluster_takeovers_total 1.0",
    ):
        assert line in metrics, line
    assert re.search(r"^gpulane_cluster_lease_age_seconds \d", metrics, re.MULTILINE), metrics
    console = Console(record=True, width=200)
    run_top(leader, ADMIN, once=True, console=console)
    line = re.search(r"^cluster .*$", console.export_text(), re.MULTILINE)
    assert line, console.export_text()
    assert re.fullmatch(
        r"cluster  leader gw-a \(this gateway\) · lease [\d.]+s · renewed [\d.]+s ago"
        r" · token 1 · takeovers 1",
        line.group(0).rstrip(),
    ), line.group(0)
