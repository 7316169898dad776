"""The ``[cluster]`` section (``protocol/cluster.py``): what it accepts, what it refuses by
name, and that none of it changes while running."""

from __future__ import annotations

import pytest

from actors.config import Config, ReloadRefusedError, check_reload, config_changes
from protocol import ValidationError
from protocol.cluster import ClusterSettings, ClusterView, Role


def test_the_defaults_replace_a_dead_leader_within_about_five_seconds() -> None:
    settings = ClusterSettings()
    assert (settings.lease_s, settings.poll_s) == (3.0, 0.5)
    assert settings.lease_s + settings.poll_s < 5.0


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"lease_s": 0.1}, "cluster.lease_s"),
        ({"lease_s": True}, "cluster.lease_s"),
        ({"poll_s": 0}, "cluster.poll_s"),
        ({"lease_s": 1.0, "poll_s": 1.0}, "cluster.poll_s"),
        ({"node": "has space"}, "cluster.node"),
        ({"node": "x" * 41}, "cluster.node"),
        ({"advertise_url": "10.0.0.7:11435"}, "cluster.advertise_url"),
    ],
)
def test_a_bad_cluster_setting_is_refused_naming_it(values: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Config.from_mapping({"cluster": values})
    assert refused.value.field == field


def test_a_cluster_setting_cannot_change_while_running() -> None:
    changes = config_changes(Config(), Config.from_mapping({"cluster": {"lease_s": 5}}))
    assert changes == ("cluster.lease_s",)
    with pytest.raises(ReloadRefusedError, match=r"cluster\.lease_s"):
        check_reload(changes, False, False)


def test_a_view_shows_who_leads_and_knows_when_nobody_does() -> None:
    nobody = ClusterView(node="gw-b", holder="gw-b#1", role=Role.FOLLOWER, token=4)
    assert not nobody.leader_known and nobody.to_dict()["leader"] is None
    led = ClusterView(
        node="gw-b", holder="gw-b#1", role=Role.FOLLOWER, token=5,
        leader_node="gw-a", leader_url="http://10.0.0.7:11435", lease_age_s=12.5,
    )  # fmt: skip
    assert led.leader_known
    assert led.to_dict()["leader"] == "gw-a" and led.to_dict()["lease_age_s"] == 12.5
