"""The status view joins the actors' snapshots: the swap figures and the backends' health
come from the residency trackers (their swap tallies and health, built here as a tracker
builds them), and ``counters["swaps"]`` is the tally's count, not the arbiter's guess.
With several backends, ``status["backends"]`` shows each and ``swaps``/``residency`` are
totals with one tracker's keys, so a reader written for one backend reads several."""

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


def up_since(since: float) -> Mapping[str, Any]:
    """The tracker's health mapping for a backend up since ``since``."""
    return MappingProxyType(
        {
            "state": "up", "since": None, "down_s_total": 0.0, "next_probe_at": None,
            "probes": 0, "last_error": None, "changes": 0,
        }
    )  # fmt: skip


def tracker(
    name: str,
    tally: SwapTally,
    health: Mapping[str, Any],
    now: float,
    *,
    resident: tuple[str, ...] = ("llama3.2",),
    catalog: tuple[str, ...] | None = None,
    polled_at: float | None = None,
) -> Mapping[str, Any]:
    """A tracker's snapshot, keyed as ``ResidencyTracker`` answers ``ResidencySnapshot``."""
    return MappingProxyType(
        {
            "backend": name,
            "catalog": catalog,
            "resident": resident,
            "slots": MappingProxyType({}),
            "polled": MappingProxyType({key: None for key in resident}),
            "polled_at": polled_at,
            "pinned": (),
            "counters": MappingProxyType({"polls": 4}),
            "swaps": tally.snapshot(now),
            "health": MappingProxyType({name: health}),
        }
    )


def host(*slots: str, kind: str = "ollama", labels: tuple[str, ...] = ()) -> Mapping[str, Any]:
    """A backend's settings as ``LaneHosts.views()`` gives them."""
    return {"kind": kind, "url": "http://127.0.0.1:11434", "labels": labels, "slots": slots}


def idle_slot(slot_id: str) -> Mapping[str, Any]:
    """A slot's snapshot when it runs nothing (as a slot that does not say its backend)."""
    return {"slot_id": slot_id, "job_id": None, "model_key": None, "since": None}


def status_with(tally: SwapTally, health: Mapping[str, Any], now: float) -> Mapping[str, Any]:
    """``lane_status`` over an idle one-backend lane whose arbiter predicted 5 cold
    dispatches."""
    return lane_status_of({"local": tracker("local", tally, health, now)}, {"local": host()})


def lane_status_of(
    trackers: Mapping[str, Mapping[str, Any]],
    hosts: Mapping[str, Mapping[str, Any]],
    slots: Mapping[str, Mapping[str, Any]] | None = None,
) -> Mapping[str, Any]:
    """``lane_status`` over an idle lane with these trackers and backends."""
    return lane_status(
        queue={
            "paused": False, "queued": 0, "depth": {},
            "counters": {"dispatched": 9, "dispatched_cold": 5, "preemptions": 0},
        },
        slots=slots or {},
        trackers=trackers,
        hosts=hosts,
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


def test_one_backend_keeps_the_trackers_snapshot_as_the_residency_and_shows_the_backend() -> None:
    tally = SwapTally()
    tally.swapped("llama3.2", 6.0, T0)
    status = status_with(tally, up_since(T0), T0 + 60)
    assert status["residency"]["resident"] == ("llama3.2",)
    assert status["residency"]["backend"] == "local"
    assert tuple(status["residency"]["backends"]) == ("local",)
    local = status["backends"]["local"]
    assert (local["kind"], local["state"], local["slots"]) == ("ollama", "up", ())
    assert local["swaps"]["swaps"] == 1 and local["resident"] == ("llama3.2",)


def test_several_backends_are_shown_each_and_their_swaps_and_residency_are_totals() -> None:
    a100, rtx = SwapTally(), SwapTally()
    a100.swapped("llama3.2", 6.0, T0)
    rtx.swapped("llama3.2", 2.0, T0 + 10)
    rtx.swapped("qwen2.5:7b", 9.0, T0 + 20)
    a100.busy(30.0)
    rtx.busy(50.0)
    now = T0 + 60
    trackers = {
        "a100": tracker("a100", a100, up_since(T0), now, catalog=("llama3.2",), polled_at=T0),
        "rtx": tracker(
            "rtx", rtx, down_since(T0 + 40, now=now), now,
            resident=("qwen2.5:7b",), catalog=("llama3.2", "qwen2.5:7b"), polled_at=T0 + 30,
        ),
        "mac": tracker("mac", SwapTally(), up_since(T0), now, resident=()),
    }  # fmt: skip
    hosts = {
        "a100": host("a100.gpu0", "a100.gpu1", labels=("big",)),
        "rtx": host("rtx.gpu0"),
        "mac": host("mac.gpu0", kind="openai"),
    }
    slots = {slot: idle_slot(slot) for h in hosts.values() for slot in h["slots"]}
    status = lane_status_of(trackers, hosts, {**slots, "cloud0": idle_slot("cloud0")})
    assert tuple(status["backends"]) == ("a100", "rtx", "mac")
    assert status["backends"]["a100"]["labels"] == ("big",)
    assert status["backends"]["a100"]["slots"] == ("a100.gpu0", "a100.gpu1")
    assert status["backends"]["rtx"]["state"] == "down"
    assert status["backends"]["mac"]["catalog"] is None
    assert status["backends"]["mac"]["kind"] == "openai"
    assert {slot: s["backend"] for slot, s in status["slots"].items()} == {
        "a100.gpu0": "a100", "a100.gpu1": "a100", "rtx.gpu0": "rtx", "mac.gpu0": "mac",
        "cloud0": "cloud",
    }  # fmt: skip
    assert set(status["health"]) == {"a100", "rtx", "mac"}
    swaps = status["swaps"]
    assert set(swaps) == set(a100.snapshot(now)), "the total has one tally's keys"
    assert (swaps["swaps"], swaps["loading_s"], swaps["busy_s"]) == (3, 17.0, 80.0)
    assert swaps["overhead_ratio"] == 17.0 / 80.0 and swaps["swaps_per_hour"] == 3.0
    llama = swaps["by_model"]["llama3.2"]
    assert (llama["count"], llama["sum_s"]) == (2, 8.0)
    assert dict(llama["buckets"])[2.5] == 1 and dict(llama["buckets"])[10.0] == 2
    assert status["counters"]["swaps"] == 3
    residency = status["residency"]
    assert set(residency) == {*trackers["a100"], "backends"}, "one tracker's keys, and each one"
    assert residency["resident"] == ("llama3.2", "qwen2.5:7b")
    assert residency["catalog"] == ("llama3.2", "qwen2.5:7b")
    assert residency["counters"]["polls"] == 12 and residency["polled_at"] == T0 + 30
    assert residency["backends"]["rtx"] is trackers["rtx"]
    assert status["resident_models"] == ("llama3.2", "qwen2.5:7b")


def test_a_slot_that_says_its_backend_keeps_what_it_says() -> None:
    slot = {**idle_slot("gpu0"), "backend": "local"}
    trackers = {"local": tracker("local", SwapTally(), up_since(T0), T0)}
    status = lane_status_of(trackers, {"local": host()}, {"gpu0": slot})
    assert status["slots"]["gpu0"]["backend"] == "local"
