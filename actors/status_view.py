"""The status view: ``GpuLane.status()`` assembled from the actors' own snapshots.

Each actor answers for what it owns (the arbiter its queue, each slot its call, each
backend's tracker that backend's resident models, catalog, swap tally and health, the
limiter its admissions, the store its counts; the facade's ``Alerting`` what is firing);
this module joins those answers into one read-only mapping for hosts, ``/status``,
``gpulane top`` and the status page. ``status["backends"]`` shows each backend;
``status["swaps"]`` and ``status["residency"]`` are totals over them, with the keys one
tracker's snapshot has, so a reader written for one backend reads several. On
PostgreSQL ``status["cluster"]`` is this gateway's ``ClusterView.to_dict()`` (its node and
role, the leader, the lease's token and age, its takeovers; docs/architecture.md section 14);
on SQLite the key is absent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import pykka
import structlog

from actors.config import CLOUD_BACKEND
from actors.runtime import (
    ChildSnapshot,
    ChildState,
    ChildUnavailableError,
    ExitReason,
    GetSnapshot,
    StableRef,
    SupervisorSnapshot,
)
from actors.swap_tally import total_of
from protocol import SystemStoppedError
from protocol.messages import SlotSnapshot

__all__ = [
    "all_started",
    "lane_status",
    "residency_total",
    "root_snapshot",
    "slot_placeholder",
    "slot_status",
    "supervision_view",
    "wait_until_started",
]

log = structlog.get_logger(__name__)


def lane_status(
    *,
    queue: Mapping[str, Any],
    slots: Mapping[str, Mapping[str, Any]],
    trackers: Mapping[str, Mapping[str, Any]],
    hosts: Mapping[str, Mapping[str, Any]],
    admission: Mapping[str, Any],
    jobs: Mapping[str, int],
    facade_counters: Mapping[str, Any],
    supervision: SupervisorSnapshot | None,
    alerts: Sequence[Mapping[str, Any]] = (),
    cluster: Mapping[str, Any] | None = None,
) -> Mapping[str, Any]:
    """Queue depth per lane and priority, the slots' calls, each backend, resident models,
    swaps, backend health, counters, the supervision tree and the alerts firing
    (``Alerting.firing()``), as one read-only mapping; ``cluster`` (``ClusterView.to_dict()``,
    PostgreSQL only) under ``"cluster"`` when given, no such key otherwise.

    ``trackers`` is each backend's tracker snapshot by name, ``hosts`` each backend's
    ``kind``, ``url``, ``labels`` and ``slots`` (its slot ids), both in config order.
    ``counters["swaps"]`` and ``counters["loading_s"]`` are the trackers' swap tallies (a
    model that was not resident became resident), not the arbiter's guess at dispatch,
    which is ``counters["dispatched_cold"]``."""
    residency = residency_total(trackers)
    swaps: Mapping[str, Any] = residency["swaps"]
    counters: dict[str, Any] = dict(facade_counters)
    counters.update(queue["counters"])
    counters["swaps"] = swaps["swaps"]
    counters["loading_s"] = swaps["loading_s"]
    slot_backend = {slot_id: name for name, host in hosts.items() for slot_id in host["slots"]}
    return MappingProxyType(
        {
            "paused": queue["paused"],
            "queued": queue["queued"],
            "depth": queue["depth"],
            "slots": MappingProxyType(
                {
                    slot_id: MappingProxyType(
                        {"backend": slot_backend.get(slot_id, CLOUD_BACKEND), **slot}
                    )
                    for slot_id, slot in slots.items()
                }
            ),
            "backends": MappingProxyType(
                {name: _backend_view(host, trackers[name]) for name, host in hosts.items()}
            ),
            "resident_models": tuple(  # loaded, or being loaded by a running call
                sorted(
                    set(residency["resident"])
                    | {s["model_key"] for s in slots.values() if s["job_id"]}
                )
            ),
            "residency": residency,
            "swaps": swaps,
            "health": residency["health"],
            "admission": admission,
            "jobs": jobs,
            "counters": MappingProxyType(counters),
            "supervision": supervision_view(supervision),
            "alerts": tuple(alerts),
            **({} if cluster is None else {"cluster": MappingProxyType(dict(cluster))}),
        }
    )


def _backend_view(host: Mapping[str, Any], tracked: Mapping[str, Any]) -> Mapping[str, Any]:
    """One backend as ``status["backends"]`` shows it: its settings, slots and tracker."""
    (health,) = tracked["health"].values()
    return MappingProxyType(
        {
            "kind": host["kind"],
            "url": host["url"],
            "labels": tuple(host["labels"]),
            "slots": tuple(host["slots"]),
            "state": health["state"],
            "health": health,
            "resident": tracked["resident"],
            "catalog": tracked["catalog"],
            "swaps": tracked["swaps"],
        }
    )


def residency_total(trackers: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    """The trackers' snapshots (by backend name) as one, with one tracker's keys: the
    resident models, slots, polls, catalogs, counters and health of all of them, the swap
    tallies summed (``actors.swap_tally.total_of``); ``"backends"`` keeps each one's."""
    if len(trackers) == 1:
        (only,) = trackers.values()
        return MappingProxyType({**only, "backends": MappingProxyType(dict(trackers))})
    each = tuple(trackers.values())
    counters: dict[str, Any] = {}
    for tracked in each:
        for name, value in tracked["counters"].items():
            counters[name] = counters.get(name, 0) + value
    polled_at = [t["polled_at"] for t in each if t["polled_at"] is not None]
    catalogs = [t["catalog"] for t in each if t["catalog"] is not None]
    return MappingProxyType(
        {
            "backend": None,  # the total is no one backend's
            "resident": tuple(sorted({key for t in each for key in t["resident"]})),
            "catalog": tuple(sorted({m for c in catalogs for m in c})) if catalogs else None,
            "slots": MappingProxyType({s: key for t in each for s, key in t["slots"].items()}),
            "polled": MappingProxyType({k: v for t in each for k, v in t["polled"].items()}),
            "polled_at": max(polled_at, default=None),
            "pinned": each[0]["pinned"],  # every tracker pins as [residency] says
            "counters": MappingProxyType(counters),
            "swaps": total_of(t["swaps"] for t in each),
            "health": MappingProxyType({n: h for t in each for n, h in t["health"].items()}),
            "backends": MappingProxyType(dict(trackers)),
        }
    )


def slot_status(ref: StableRef, timeout: float, state_if_gone: str) -> Mapping[str, Any]:
    """A slot's own snapshot, or a placeholder in ``state_if_gone`` while it cannot answer
    (``restarting``, or ``stopped`` once the lane is)."""
    try:
        snapshot: Mapping[str, Any] = ref.ask(SlotSnapshot(), timeout=timeout)
    except ChildUnavailableError as error:
        log.debug("slot_status_unavailable", slot=ref.child_id, error=str(error))
        return slot_placeholder(ref.child_id, state_if_gone)
    return MappingProxyType({**snapshot, "state": "running"})


def root_snapshot(root: pykka.ActorRef[Any] | None, timeout: float) -> SupervisorSnapshot | None:
    """The root supervisor's snapshot (children, states, restart counts); None once stopped."""
    if root is None:
        return None
    try:
        snapshot: SupervisorSnapshot = root.ask(GetSnapshot(), block=True, timeout=timeout)
    except (pykka.ActorDeadError, pykka.Timeout):
        return None
    return snapshot


def slot_placeholder(slot_id: str, state: str) -> Mapping[str, Any]:
    """What the view shows for a slot that cannot answer (``restarting`` or ``stopped``)."""
    return MappingProxyType(
        {
            "slot_id": slot_id,
            "job_id": None,
            "model_key": None,
            "since": None,
            "cancelling": None,
            "state": state,
        }
    )


def wait_until_started(
    snapshot: Callable[[], SupervisorSnapshot | None],
    failure: Callable[[], ExitReason | None],
    timeout: float,
) -> None:
    """Block until each child of the tree has started once; SystemStoppedError if the tree
    gave up (``failure``) or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        reason = failure()
        if reason is not None:
            raise SystemStoppedError(f"gpulane failed to start: {reason}")
        tree = snapshot()
        if tree is not None and all_started(tree):
            return
        if time.monotonic() > deadline:
            raise SystemStoppedError("gpulane did not start in time")
        time.sleep(0.005)  # a start takes milliseconds; a bounded poll, not a pause


def all_started(snapshot: SupervisorSnapshot) -> bool:
    """True when every child (and every nested supervisor's child) has started."""
    for child in snapshot.children:
        if child.state is not ChildState.RUNNING:
            return False
        if child.supervisor is not None and not all_started(child.supervisor):
            return False
    return True


def supervision_view(snapshot: SupervisorSnapshot | None) -> Mapping[str, Any]:
    """The tree as plain data: per child its state, restarts and last exit."""
    if snapshot is None:
        return MappingProxyType({"state": "stopped", "restarts": 0, "children": {}})
    children: dict[str, Mapping[str, Any]] = {}

    def add(child: ChildSnapshot) -> None:
        children[child.child_id] = MappingProxyType(
            {
                "state": child.state.value,
                "restarts": child.restarts,
                "exits": child.exits,
                "last_exit": None if child.last_exit is None else str(child.last_exit),
            }
        )
        if child.supervisor is not None:
            for grandchild in child.supervisor.children:
                add(grandchild)

    for child in snapshot.children:
        add(child)
    return MappingProxyType(
        {"state": "running", "restarts": snapshot.restarts, "children": MappingProxyType(children)}
    )
