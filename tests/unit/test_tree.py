"""The lane's supervision tree is one declared value: its shape is checked without a thread,
with one backend (the ids a one-GPU lane always had) and with three."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest

from actors.alerts import Alerting
from actors.config import BackendSettings, Config
from actors.hosts import slot_id_for, tracker_id_for
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


def wiring(
    slot_ids: tuple[str, ...],
    config: Config | None = None,
    slot_backends: dict[str, str] | None = None,
) -> LaneWiring:
    clock = ManualClock()
    timers = Timers(clock)  # never started: the tree only declares
    return LaneWiring(
        refs=StableRefs(),
        slot_ids=slot_ids,
        sinks=SinkRegistry(),
        clock=clock,
        timers=timers,
        config=lambda: config or Config(),
        paused=lambda: False,
        listener=lambda job: None,
        alerting=Alerting(Config().alerts, clock, timers, lambda: None),
        cloud_slot_ids=frozenset(s for s in slot_ids if s.startswith("cloud")),
        slot_backends=slot_backends or {},
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


THREE = Config(
    backends=(
        BackendSettings(name="a100", slots=2, models=("llama3.2", "qwen2.5:7b")),
        BackendSettings(name="rtx", url="http://10.0.0.2:11434", models=("llama3.2",)),
        BackendSettings(name="mac", kind="openai", url="http://10.0.0.3:8080"),
    )
)


def test_three_backends_give_a_tracker_each_before_the_arbiter_and_their_slots_in_order() -> None:
    before = threading.active_count()
    slot_backends = {
        slot_id_for(host.name, i): host.name for host in THREE.hosts for i in range(host.slots)
    }
    slots = {slot_id: never_started for slot_id in (*slot_backends, "cloud0")}
    root = lane_tree(
        wiring(tuple(slots), THREE, slot_backends), SupervisionSettings(), DEFAULT_FACTORIES, slots
    )
    trackers = ("residency.a100", "residency.rtx", "residency.mac")
    assert tuple(tracker_id_for(host.name) for host in THREE.hosts) == trackers
    assert tuple(child.id for child in root.children) == (
        "store", "limiter", *trackers, "arbiter", "gpus", *WATCHERS,
    )  # fmt: skip
    gpus = root.children[len(CHILD_ORDER) + 2].tree
    assert gpus is not None
    assert tuple(slot.id for slot in gpus.children) == (
        "a100.gpu0", "a100.gpu1", "rtx.gpu0", "mac.gpu0", "cloud0",
    )  # fmt: skip
    assert CHILD_ORDER == ("store", "limiter", "residency", "arbiter"), "the factory keys"
    assert threading.active_count() == before, "nothing was started"


def test_the_residency_factory_is_called_once_per_backend_with_that_backends_wiring() -> None:
    seen: list[tuple[str, object]] = []

    def residency(lane: LaneWiring) -> Any:
        seen.append((lane.backend_name, lane.backend))
        return "tracker"

    clients = {"a100": object(), "rtx": object(), "mac": None}
    lane = dataclasses.replace(wiring(("a100.gpu0",), THREE), backends=clients)
    root = lane_tree(
        lane,
        SupervisionSettings(),
        {**DEFAULT_FACTORIES, "residency": residency},
        {"a100.gpu0": never_started},
    )
    for child in root.children[2:5]:
        assert child.factory() == "tracker"
    assert seen == [(name, clients[name]) for name in ("a100", "rtx", "mac")]


def test_each_slot_is_wired_to_its_backends_tracker_and_a_cloud_slot_to_none() -> None:
    wired: list[SlotWiring] = []
    slot_backends = {"a100.gpu0": "a100", "rtx.gpu0": "rtx"}
    slots = {slot_id: wired.append for slot_id in (*slot_backends, "cloud0")}
    lane = wiring(tuple(slots), THREE, slot_backends)
    for child_id in ("store", "arbiter", "residency.a100", "residency.rtx"):
        lane.refs.declare(child_id, WhileRestarting.HOLD, 1)  # as the supervisors would
    root = lane_tree(lane, SupervisionSettings(), DEFAULT_FACTORIES, slots)  # type: ignore[arg-type]
    gpus = root.children[len(CHILD_ORDER) + 2].tree
    assert gpus is not None
    for slot in gpus.children:
        slot.factory()
    assert [(w.slot_id, w.backend) for w in wired] == [
        ("a100.gpu0", "a100"), ("rtx.gpu0", "rtx"), ("cloud0", "cloud"),
    ]  # fmt: skip
    refs = [w.residency for w in wired]
    assert refs[0] is lane.refs.ref_for("residency.a100")
    assert refs[1] is lane.refs.ref_for("residency.rtx")
    assert refs[2] is None
