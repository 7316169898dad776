"""Which gateway leads, drawn from ``ClusterView.to_dict()`` (issue 18, "Operations"): the
status view carries it under ``"cluster"``, ``gpulane top`` says it on a line under its
header and ``/metrics`` exports it as ``gpulane_cluster_*``; on SQLite (no cluster) none of
them says anything of it. The views are built from real ``ClusterView`` values, so the keys
are the ones ``protocol.cluster`` gives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from rich.console import Console
from test_status_view import T0, host, tracker, up_since

from actors.gateway.metrics import GatewayMetrics, cluster_metrics
from actors.status_view import lane_status
from actors.swap_tally import SwapTally
from actors.top import describe_cluster, render
from protocol.cluster import ClusterView, Role

LEADER_URL = "http://10.0.0.7:11435"


def leader_view(**changes: Any) -> Mapping[str, Any]:
    """gw-a's view of itself as the leader: token 7, lease held 12.3 s, renewed 0.4 s ago."""
    fields: dict[str, Any] = {
        "node": "gw-a", "holder": "gw-a-01J", "role": Role.LEADER, "token": 7,
        "leader_node": "gw-a", "leader_url": LEADER_URL, "lease_age_s": 12.3,
        "renewed_age_s": 0.4, "expires_in_s": 2.6, "takeovers": 0,
    }  # fmt: skip
    return ClusterView(**{**fields, **changes}).to_dict()


def follower_view() -> Mapping[str, Any]:
    """gw-b's view: a follower of gw-a."""
    return leader_view(node="gw-b", holder="gw-b-01J", role=Role.FOLLOWER)


def failover_view() -> Mapping[str, Any]:
    """gw-b's view while nobody holds a live lease."""
    return leader_view(
        node="gw-b", holder="gw-b-01J", role=Role.FOLLOWER, leader_node=None, leader_url=None,
        lease_age_s=None, renewed_age_s=None, expires_in_s=None,
    )  # fmt: skip


def status_of(cluster: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """``lane_status`` over an idle lane on one backend, with ``cluster`` when given."""
    return lane_status(
        queue={"paused": False, "queued": 0, "depth": {}, "counters": {}},
        slots={}, trackers={"local": tracker("local", SwapTally(), up_since(T0), T0)},
        hosts={"local": host()}, admission={"queued_by_caller": {}, "rejections": {}},
        jobs={}, facade_counters={}, supervision=None, cluster=cluster,
    )  # fmt: skip


# --- the status view ------------------------------------------------------------------------


def test_the_status_carries_the_cluster_view_as_given_and_read_only() -> None:
    status = status_of(leader_view())
    assert status["cluster"] == leader_view()
    with pytest.raises(TypeError):
        status["cluster"]["token"] = 8  # type: ignore[index]


def test_the_status_has_no_cluster_key_when_the_lane_is_on_sqlite() -> None:
    assert "cluster" not in status_of(None)


# --- gpulane top ------------------------------------------------------------------------------


def test_top_says_this_gateway_leads_with_its_leases_age_renewal_and_token() -> None:
    assert describe_cluster(leader_view()) == (
        "cluster  leader gw-a (this gateway) · lease 12.3s · renewed 0.4s ago · token 7"
    )


def test_top_on_a_follower_names_the_leader_and_where_requests_are_forwarded() -> None:
    lease = "lease 12.3s · renewed 0.4s ago · token 7"
    assert (
        describe_cluster(follower_view())
        == f"cluster  gw-b follower of gw-a ({LEADER_URL}) · {lease}"
    )


def test_top_leaves_out_the_leaders_url_a_viewer_without_a_key_may_not_see() -> None:
    hidden = {**follower_view(), "leader_url": None}
    assert describe_cluster(hidden).startswith("cluster  gw-b follower of gw-a · lease 12.3s")


def test_top_says_a_failover_is_under_way_while_nobody_leads() -> None:
    assert describe_cluster(failover_view()) == (
        "cluster  gw-b follower · no leader: failover under way"
    )


def test_top_counts_the_leases_this_gateway_took_once_it_took_one() -> None:
    line = describe_cluster(leader_view(takeovers=2, lease_age_s=95.0))
    assert line.endswith("· lease 1m35s · renewed 0.4s ago · token 7 · takeovers 2"), line


def picture(**extra: Any) -> dict[str, Any]:
    """The smallest ``/status`` picture ``render`` draws (one idle backend), plus ``extra``."""
    return {
        "at": 1_000.0, "paused": False, "queued": 0, "slots": [], "resident_models": [],
        "callers": [], "depth": {"external": {"normal": 0}},
        "jobs": {"queued": 0, "loading": 0, "running": 0, "succeeded": 0, "failed": 0},
        "counters": {
            "submitted": 0, "dispatched": 0, "dispatched_cold": 0, "swaps": 0, "preemptions": 0,
            "retries_requested": 0, "cancel_requests": 0, "cancelled_queued": 0,
        },
        "loading_s": 0.0, "busy_s": 0.0, "overhead_ratio": None, "swaps_per_hour": 0.0,
        "health": {}, "backends": [], "rejections": {}, "alerts": [], "events": [],
        "viewer": {"caller": "ops", "admin": True}, **extra,
    }  # fmt: skip


def frame_of(shown: Mapping[str, Any]) -> list[str]:
    """The lines ``gpulane top`` prints for ``shown``, wide enough that none wraps."""
    console = Console(record=True, width=200)
    console.print(render(shown, source="http://gw-a:11435"))
    return console.export_text().splitlines()


def test_top_draws_the_cluster_line_right_under_its_header() -> None:
    lines = frame_of(picture(cluster=follower_view()))
    assert lines[0].startswith("gpulane  http://gw-a:11435")
    assert lines[1].startswith("cluster  gw-b follower of gw-a"), lines[:3]


def test_top_on_sqlite_draws_no_cluster_line() -> None:
    lines = frame_of(picture())
    assert not any(line.startswith("cluster") for line in lines), lines[:3]


def test_top_on_a_follower_during_a_failover_draws_its_cluster_line_and_why_alone() -> None:
    lines = frame_of({"cluster": failover_view(), "leader_reachable": False})
    assert lines == [
        "gpulane  http://gw-a:11435   NO LEADER ",
        "cluster  gw-b follower · no leader: failover under way",
        "nothing is dispatched until a gateway takes the lease",
    ]


def test_top_on_a_follower_that_cannot_reach_the_leader_says_so() -> None:
    lines = frame_of({"cluster": follower_view(), "leader_reachable": False})
    assert lines[0].endswith(" LEADER UNREACHABLE ")
    assert lines[1].startswith(f"cluster  gw-b follower of gw-a ({LEADER_URL}) · lease 12.3s")
    assert lines[2] == "this gateway cannot reach the leader gw-a for its status"


# --- /metrics --------------------------------------------------------------------------------


def exposition(cluster: Mapping[str, Any]) -> str:
    """The gateway's ``/metrics`` text for a lane whose status carries ``cluster``."""
    status = status_of(cluster)
    return GatewayMetrics(lambda: status).render().decode()


def test_metrics_on_the_leader_give_its_role_the_leases_age_renewal_token_and_takeovers() -> None:
    text = exposition(leader_view(takeovers=1))
    for line in (
        'gpulane_cluster_role{role="leader"} 1.0',
        'gpulane_cluster_role{role="follower"} 0.0',
        "gpulane_cluster_lease_age_seconds 12.3",
        "gpulane_cluster_lease_renewed_age_seconds 0.4",
        "gpulane_cluster_lease_token 7.0",
        "gpulane_cluster_takeovers_total 1.0",
        "# HELP gpulane_cluster_role 1 for this gateway's role in the cluster, 0 for the other",
        "# TYPE gpulane_cluster_takeovers_total counter",
    ):
        assert line in text, line


def test_metrics_on_a_follower_set_the_follower_role() -> None:
    text = exposition(follower_view())
    assert 'gpulane_cluster_role{role="leader"} 0.0' in text
    assert 'gpulane_cluster_role{role="follower"} 1.0' in text


def test_metrics_during_a_failover_have_no_lease_age_but_keep_the_token() -> None:
    text = exposition(failover_view())
    samples = [line for line in text.splitlines() if line.startswith("gpulane_cluster")]
    assert samples == [
        'gpulane_cluster_role{role="leader"} 0.0', 'gpulane_cluster_role{role="follower"} 1.0',
        "gpulane_cluster_lease_token 7.0", "gpulane_cluster_takeovers_total 0.0",
    ]  # fmt: skip
    assert "# TYPE gpulane_cluster_lease_age_seconds gauge" in text, "the family stays"
    assert "gpulane_cluster_lease_token 7.0" in text


def test_metrics_on_sqlite_have_no_cluster_family() -> None:
    assert "gpulane_cluster" not in exposition(None)


def test_the_cluster_families_are_the_same_from_a_followers_own_view() -> None:
    names = [family.name for family in cluster_metrics(follower_view())]
    assert names == [
        "gpulane_cluster_role", "gpulane_cluster_lease_age_seconds",
        "gpulane_cluster_lease_renewed_age_seconds", "gpulane_cluster_lease_token",
        "gpulane_cluster_takeovers",
    ]  # fmt: skip
