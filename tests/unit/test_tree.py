"""The lane's supervision tree is one declared value: its shape is checked without a thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from actors.alerts import Alerting
from actors.config import Config
from actors.runtime import ManualClock, RestartType, StableRefs, Strategy, Timers, WhileRestarting
from actors.sinks import SinkRegistry
from actors.tree import (
    CHILD_ORDER,
    DEFAULT_FACTORIES,
    WATCHERS,
    LaneWiring,
    SlotWiring,
    SupervisionSettings,
    lane_tree,
)
from protocol import ValidationError


def wiring(slot_ids: tuple[str, ...]) -> LaneWiring:
    clock = ManualClock()
    timers = Timers(clock)  # never started: the tree only declares
    return LaneWiring(
        refs=StableRefs(),
        slot_ids=slot_ids,
        sinks=SinkRegistry(),
        clock=clock,
        timers=timers,
        config=Config,
        paused=lambda: False,
        listener=lambda job: None,
        backend=None,
        alerting=Alerting(Config().alerts, clock, timers, lambda: None),
    )


def never_started(slot: SlotWiring) -> Any:
    raise AssertionError("declaring the tree must not start a slot")


SLOTS = {"gpu0": never_started, "gpu1": never_started, "cloud0": never_started}


def test_the_root_is_rest_for_one_over_the_core_children_the_gpus_then_the_watchers() -> None:
    before = threading.active_count()
    settings = SupervisionSettings(intensity=7, period_s=12.0, shutdown_s=4.0, slot_join_s=2.0)
    root = lane_tree(wiring(tuple(SLOTS)), settings, DEFAULT_FACTORIES, SLOTS)
    assert (root.name, root.strategy) == ("gpulane", Strategy.REST_FOR_ONE)
    assert (root.intensity, root.period_s) == (7, 12.0)
    assert tuple(child.id for child in root.children) == (*CHILD_ORDER, "gpus", *WATCHERS)
    assert WATCHERS == ("webhooks", "alerter"), "the alerter last: its crash restarts no other"
    for child in (*root.children[:4], *root.children[5:]):
        assert child.tree is None
        assert child.restart is RestartType.PERMANENT
        assert child.while_restarting is WhileRestarting.HOLD
        assert child.shutdown_s == 4.0
    assert threading.active_count() == before, "nothing was started"


def test_the_gpus_supervisor_is_one_for_one_over_every_slot_in_order() -> None:
    settings = SupervisionSettings(shutdown_s=4.0, slot_join_s=2.0)
    root = lane_tree(wiring(tuple(SLOTS)), settings, DEFAULT_FACTORIES, SLOTS)
    gpus = root.children[len(CHILD_ORDER)]
    assert gpus.tree is not None
    assert gpus.tree.strategy is Strategy.ONE_FOR_ONE
    assert tuple(slot.id for slot in gpus.tree.children) == ("gpu0", "gpu1", "cloud0")
    assert all(slot.while_restarting is WhileRestarting.HOLD for slot in gpus.tree.children)
    assert gpus.shutdown_s == 4.0 * (len(SLOTS) + 1), "room to stop every slot in turn"


def test_a_tree_without_a_factory_for_a_core_child_is_refused_by_name() -> None:
    factories = {k: v for k, v in DEFAULT_FACTORIES.items() if k != "residency"}
    with pytest.raises(ValidationError, match="residency"):
        lane_tree(wiring(("gpu0",)), SupervisionSettings(), factories, {"gpu0": never_started})
