"""The status view joins the actors' snapshots: the swap figures and the backends' health
come from the residency tracker (its swap tally and health, built here as the tracker
builds them), and ``counters["swaps"]`` is the tally's count, not the arbiter's guess."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from actors.status_view import lane_status
from actors.swap_tally import SwapTally

T0 = 1_767_610_800.0


def down_since(since: float, *, now: float) -> Mapping[str, Any]:
    """The tracker's health mapping for a backend down since ``since``."""
    return MappingProxyType(
        {
            "state": "down", "since": since, "down_s_total": now - since,
            "next_probe_at": now + 4.0, "probes": 3, "last_error": "connection refused",
            "changes": 1,
        }
    )  # fmt: skip


def status_with(tally: SwapTally, health: Mapping[str, Any], now: float) -> Mapping[str, Any]:
    """``lane_status`` over an idle lane whose arbiter predicted 5 cold dispatches."""
    residency = MappingProxyType(
        {
            "resident": ("llama3.2",),
            "slots": MappingProxyType({}),
            "polled": MappingProxyType({}),
            "polled_at": None,
            "pinned": (),
            "counters": MappingProxyType({"polls": 4}),
            "swaps": tally.snapshot(now),
            "health": MappingProxyType({"local": health}),
        }
    )
    return lane_status(
        queue={
            "paused": False, "queued": 0, "depth": {},
            "counters": {"dispatched": 9, "dispatched_cold": 5, "preemptions": 0},
        },
        slots={},
        residency=residency,
        admission={"queued_by_caller": {}, "rejections": {}},
        jobs={"succeeded": 9},
        facade_counters={"submitted": 9},
        supervision=None,
    )  # fmt: skip


def test_swaps_are_the_trackers_tally_and_the_arbiters_guess_is_dispatched_cold() -> None:
    tally = SwapTally()
    tally.swapped("llama3.2", 6.0, T0)
    tally.swapped("qwen2.5:7b", 9.0, T0 + 30)
    tally.busy(60.0)
    status = status_with(tally, down_since(T0 + 50, now=T0 + 60), T0 + 60)
    counters = status["counters"]
    assert counters["swaps"] == 2 and counters["loading_s"] == 15.0
    assert counters["dispatched_cold"] == 5 and counters["dispatched"] == 9
    assert status["swaps"]["overhead_ratio"] == 0.25 and status["swaps"]["swaps_per_hour"] == 2.0
    assert status["swaps"]["by_model"]["qwen2.5:7b"]["sum_s"] == 9.0


def test_the_health_of_each_backend_is_the_trackers_mapping() -> None:
    health = down_since(T0, now=T0 + 120)
    status = status_with(SwapTally(), health, T0 + 120)
    assert status["health"]["local"] == health
    assert status["health"]["local"]["down_s_total"] == 120.0
    with pytest.raises(TypeError):
        status["health"]["other"] = health  # type: ignore[index]
