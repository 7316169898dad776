"""The swap figures, backend health and firing alerts on every surface (the live views'
picture, ``gpulane top``, ``/metrics``), from status mappings built as the lane builds them:
a real ``SwapTally``, the tracker's health mapping and a real ``Alerting`` fed by its real
rules, joined by the real status view. A stub lane serves them, so each test says exactly
what changed between two looks."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, cast

import pytest
from rich.console import Console

from actors.alert_rules import AlertRules, LaneSample
from actors.alerts import Alerting
from actors.gateway.auth import Caller
from actors.gateway.metrics import GatewayMetrics
from actors.gateway.watch import LaneWatch, view_for
from actors.runtime import ManualClock, Timers
from actors.status_view import lane_status
from actors.swap_tally import SwapTally
from actors.system import GpuLane
from actors.top import describe_alert, describe_event, describe_health, render
from protocol import Job, JobMetrics, JobSpec, JobState
from protocol.config import AlertSettings

ADMIN = Caller("ops", admin=True)
ALICE = Caller("alice")


def up(down_s_total: float = 0.0, changes: int = 0, probes: int = 0) -> Mapping[str, Any]:
    """The tracker's health mapping for a backend that is up."""
    return MappingProxyType(
        {
            "state": "up", "since": None, "down_s_total": down_s_total, "next_probe_at": None,
            "probes": probes, "last_error": None, "changes": changes,
        }
    )  # fmt: skip


def down(since: float, now: float, *, probes: int = 3, error: str = "") -> Mapping[str, Any]:
    """The tracker's health mapping for a backend down since ``since``, probed again at
    ``now + 4``."""
    return MappingProxyType(
        {
            "state": "down", "since": since, "down_s_total": now - since,
            "next_probe_at": now + 4.0, "probes": probes, "last_error": error or None,
            "changes": 1,
        }
    )  # fmt: skip


class StubLane:
    """What ``LaneWatch`` asks of a ``GpuLane``: ``status()``, ``get()`` and ``clock``; the
    test sets the slots, resident keys, swap tally, health and alerts between two looks."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.tally = SwapTally()
        settings = AlertSettings(queue_depth=2, queue_depth_for_s=0, job_preemptions=1)
        self.alerting = Alerting(settings, self.clock, Timers(self.clock), lambda: None)
        self.health: Mapping[str, Any] = up()
        self.resident: tuple[str, ...] = ()
        self.slot_model: str | None = None
        self.job: Job | None = None  # running on the slot
        self.jobs: dict[str, Job] = {}

    def run(self, model_key: str, caller: str = "alice", seq: int = 1) -> None:
        """The slot starts a job for ``model_key``."""
        spec = JobSpec.chat(
            model=model_key.partition("|")[0], messages=[{"role": "user", "content": "hi"}],
            caller=caller,
        )  # fmt: skip
        now = self.clock.now()
        self.job = Job(
            id=f"job-{seq}", seq=seq, spec=spec, state=JobState.RUNNING, created_at=now,
            updated_at=now,
        )  # fmt: skip
        self.jobs[self.job.id] = self.job
        self.slot_model = model_key

    def idle(self) -> None:
        self.job = None

    def get(self, job_id: str) -> Job:
        return self.jobs[job_id]

    def status(self) -> Mapping[str, Any]:
        now = self.clock.now()
        job = self.job
        slot = {
            "slot_id": "gpu0", "job_id": None if job is None else job.id, "next_job_id": None,
            "model_key": self.slot_model, "since": None if job is None else now,
            "cancelling": None, "state": "running",
        }  # fmt: skip
        residency = MappingProxyType(
            {
                "backend": "local", "resident": self.resident, "catalog": None, "slots": {},
                "polled": {}, "polled_at": None, "pinned": (), "counters": {},
                "swaps": self.tally.snapshot(now),
                "health": MappingProxyType({"local": self.health}),
            }
        )  # fmt: skip
        host = {"kind": "ollama", "url": "http://127.0.0.1:11434", "labels": (), "slots": ("gpu0",)}
        return lane_status(
            queue={"paused": False, "queued": 0, "depth": {}, "counters": {"dispatched_cold": 2}},
            slots={"gpu0": slot},
            trackers={"local": residency},
            hosts={"local": host},
            admission={"queued_by_caller": {}, "rejections": {}},
            jobs={"queued": 0, "loading": 0, "running": int(job is not None), "succeeded": 0,
                  "failed": 0},
            facade_counters={"submitted": 3},
            supervision=None,
            alerts=self.alerting.firing(),
        )  # fmt: skip

    def alert(self, decide: Callable[[AlertRules], list[Any]]) -> None:
        """Feed the rules one observation, as the Alerter does."""
        self.alerting.observe(decide)

    def queued(self, count: int) -> None:
        """A sample that sees ``count`` jobs queued (the queue_depth rule's limit is 2)."""
        sample = LaneSample(self.clock.now(), queued=count)
        self.alert(lambda rules: rules.sample(sample))


async def _run_here(sample: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return sample()


def look(watch: LaneWatch) -> dict[str, Any]:
    """One fresh picture (``max_age`` 0: every look samples)."""
    return asyncio.run(watch.picture(_run_here))


@pytest.fixture
def lane() -> StubLane:
    return StubLane()


@pytest.fixture
def watch(lane: StubLane) -> LaneWatch:
    return LaneWatch(cast(GpuLane, lane), max_age=0.0)


def swaps_in(picture: Mapping[str, Any]) -> list[str]:
    return [describe_event(e) for e in picture["events"] if e["kind"] == "swap"]


# --- swap events and the tally --------------------------------------------------------------


def test_a_slot_loading_a_model_is_one_swap_even_when_the_tally_counts_it_a_look_later(
    lane: StubLane, watch: LaneWatch
) -> None:
    look(watch)
    lane.run("llama3.2")  # dispatched: the model is loading, the tracker has not counted it
    first = look(watch)
    assert swaps_in(first) == ["swap gpu0: nothing → llama3.2 for #1 alice"]
    assert first["counters"]["swaps"] == 0
    lane.tally.swapped("llama3.2", 6.0, lane.clock.now())  # the load is done
    lane.clock.advance(6.0)
    second = look(watch)
    assert swaps_in(second) == swaps_in(first) and second["counters"]["swaps"] == 1


def test_a_slot_moving_to_a_model_that_was_resident_is_not_a_swap(
    lane: StubLane, watch: LaneWatch
) -> None:
    lane.run("llama3.2")
    lane.resident = ("llama3.2", "nomic-embed-text")  # both pinned
    look(watch)
    lane.run("nomic-embed-text", seq=2)
    picture = look(watch)
    assert swaps_in(picture) == [] and picture["counters"]["swaps"] == 0


def test_swaps_the_tally_counted_that_no_slot_showed_are_one_event_naming_their_models(
    lane: StubLane, watch: LaneWatch
) -> None:
    look(watch)
    now = lane.clock.now()
    lane.tally.swapped("qwen2.5:7b|num_ctx=8192", 9.0, now)  # loaded and replaced between looks
    lane.tally.swapped("nomic-embed-text", 1.0, now)  # a pin restored after a restart
    picture = look(watch)
    assert swaps_in(picture) == ["2 more swap(s) between two looks: nomic-embed-text, qwen2.5:7b"]
    assert picture["counters"]["swaps"] == 2


def test_a_swap_shown_for_a_call_that_never_loaded_settles_that_models_next_swap_only(
    lane: StubLane, watch: LaneWatch
) -> None:
    look(watch)
    lane.run("llama3.2")  # shown as a swap; the call then fails before the model loads
    look(watch)
    lane.idle()
    lane.tally.swapped("qwen2.5:7b", 9.0, lane.clock.now())
    assert swaps_in(look(watch))[0] == "1 more swap(s) between two looks: qwen2.5:7b"
    lane.tally.swapped("llama3.2", 6.0, lane.clock.now())  # the retry on the same slot loads it
    assert len(swaps_in(look(watch))) == 2  # no new event: the one shown stands for it


# --- the swap figures in the picture, top and /metrics --------------------------------------


def test_the_picture_and_top_show_swaps_per_hour_and_the_share_of_busy_time_spent_loading(
    lane: StubLane, watch: LaneWatch
) -> None:
    fresh = look(watch)
    assert fresh["overhead_ratio"] is None and fresh["busy_s"] == 0.0
    now = lane.clock.now()
    lane.tally.swapped("llama3.2", 6.0, now)
    lane.tally.swapped("qwen2.5:7b", 9.0, now + 30)
    lane.tally.busy(60.0)
    lane.clock.advance(60)
    picture = view_for(look(watch), ADMIN)
    assert picture["swaps_per_hour"] == 2.0 and picture["overhead_ratio"] == 0.25
    assert picture["loading_s"] == 15.0 and picture["busy_s"] == 60.0
    assert picture["counters"]["dispatched_cold"] == 2
    console = Console(record=True, width=160)
    console.print(render(picture))
    frame = console.export_text()
    assert "swaps 2 (2.0/h, 25.0% loading)" in frame
    assert "15.0s of 60.0s busy spent loading models" in frame
    assert "dispatched 0 (2 for a model not loaded)" in frame


def test_metrics_count_swaps_only_with_a_load_histogram_per_model_from_the_tally(
    lane: StubLane,
) -> None:
    now = lane.clock.now()
    for key, load_s in (("llama3.2", 0.3), ("llama3.2|num_ctx=8192", 7.0), ("qwen2.5:7b", 900.0)):
        lane.tally.swapped(key, load_s, now)
    lane.tally.busy(1000.0)
    metrics = GatewayMetrics(lane.status)
    warm = JobSpec.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    metrics.job_ended(  # a warm call: Ollama reports a small load_duration, which is no swap
        Job(
            id="j", seq=1, spec=warm, state=JobState.SUCCEEDED, created_at=now, updated_at=now,
            metrics=JobMetrics(load_duration_ns=2_000_000),
        )
    )  # fmt: skip
    text = metrics.render().decode()
    assert "gpulane_swaps_total 3.0" in text
    assert 'gpulane_model_load_seconds_count{model="llama3.2"} 2.0' in text  # both its keys
    assert 'gpulane_model_load_seconds_sum{model="llama3.2"} 7.3' in text
    assert 'gpulane_model_load_seconds_bucket{le="0.5",model="llama3.2"} 1.0' in text
    assert 'gpulane_model_load_seconds_bucket{le="10.0",model="llama3.2"} 2.0' in text
    assert 'gpulane_model_load_seconds_bucket{le="600.0",model="qwen2.5:7b"} 0.0' in text
    assert 'gpulane_model_load_seconds_bucket{le="+Inf",model="qwen2.5:7b"} 1.0' in text
    assert "gpulane_swap_overhead_ratio 0.9073" in text
    assert "gpulane_swaps_per_hour 3.0" in text and "gpulane_busy_seconds_total 1000.0" in text


def test_metrics_have_no_overhead_ratio_before_a_slot_has_been_busy(lane: StubLane) -> None:
    text = GatewayMetrics(lane.status).render().decode()
    assert "# TYPE gpulane_swap_overhead_ratio gauge" in text
    assert "\ngpulane_swap_overhead_ratio " not in text
    assert "gpulane_swaps_total 0.0" in text and "gpulane_model_load_seconds_count" not in text


# --- backend health -------------------------------------------------------------------------


def test_a_backend_down_shows_since_when_the_next_probe_and_the_last_error_to_a_key_holder(
    lane: StubLane, watch: LaneWatch
) -> None:
    went_down = lane.clock.now()
    lane.clock.advance(130)
    lane.health = down(went_down, lane.clock.now(), error="ConnectError('connection refused')")
    picture = view_for(look(watch), ALICE)
    local = picture["health"]["local"]
    assert local["state"] == "down" and local["since"] == went_down
    assert local["down_s_total"] == 130.0 and local["last_error"].startswith("ConnectError")
    line = describe_health("local", local, picture["at"])
    clock = time.strftime("%H:%M:%S", time.localtime(went_down))
    assert line == (
        f"backend local DOWN since {clock} (2m10s) · next probe in 4.0s · 3 probe(s) so far"
        " · last error: ConnectError('connection refused')"
    )
    console = Console(record=True, width=200)
    console.print(render(picture))
    assert line in console.export_text()


def test_a_viewer_without_a_key_sees_the_outage_but_not_the_error_naming_the_backend(
    lane: StubLane, watch: LaneWatch
) -> None:
    lane.health = down(lane.clock.now(), lane.clock.now(), error="cannot reach 10.0.0.7:11434")
    anonymous = view_for(look(watch), None)
    assert anonymous["health"]["local"]["state"] == "down"
    assert anonymous["health"]["local"]["last_error"] is None
    assert "10.0.0.7" not in str(anonymous)
    assert "last error" not in describe_health("local", anonymous["health"]["local"], 0.0)


def test_a_backend_back_up_shows_up_with_its_time_down_since_start(
    lane: StubLane, watch: LaneWatch
) -> None:
    lane.health = up(down_s_total=95.0, changes=2, probes=4)
    picture = view_for(look(watch), ADMIN)
    assert describe_health("local", picture["health"]["local"], picture["at"]) == (
        "backend local up (down 1m35s since start)"
    )
    assert describe_health("local", up(), picture["at"]) == "backend local up"


def test_metrics_show_each_backends_health_its_time_down_and_its_probes(lane: StubLane) -> None:
    lane.health = down(lane.clock.now() - 30, lane.clock.now(), probes=5)
    text = GatewayMetrics(lane.status).render().decode()
    assert 'gpulane_backend_up{backend="local"} 0.0' in text
    assert 'gpulane_backend_down_seconds_total{backend="local"} 30.0' in text
    assert 'gpulane_backend_probes_total{backend="local"} 5.0' in text
    lane.health = up(down_s_total=30.0, changes=2, probes=6)
    text = GatewayMetrics(lane.status).render().decode()
    assert 'gpulane_backend_up{backend="local"} 1.0' in text
    assert 'gpulane_backend_down_seconds_total{backend="local"} 30.0' in text


# --- firing alerts --------------------------------------------------------------------------


def test_a_firing_alert_shows_on_every_surface_with_how_long_it_fired_and_goes_when_it_clears(
    lane: StubLane, watch: LaneWatch
) -> None:
    quiet = look(watch)
    assert quiet["alerts"] == [] and lane.status()["alerts"] == ()
    console = Console(record=True, width=200)
    console.print(render(view_for(quiet, ADMIN)))
    assert "ALERT" not in console.export_text()
    started = lane.clock.now()
    lane.queued(5)
    lane.clock.advance(65)
    (alert,) = lane.status()["alerts"]
    assert dict(alert) == {
        "rule": "queue_depth", "subject": "queue", "since": started, "last_notice_at": started,
        "summary": "5 jobs queued, over 2 for 0s", "value": 5, "threshold": 2,
    }  # fmt: skip
    picture = view_for(look(watch), None)
    assert picture["alerts"] == [{**alert, "firing_s": 65.0}]
    line = "ALERT queue_depth on queue firing for 65.0s: 5 jobs queued, over 2 for 0s"
    assert describe_alert(picture["alerts"][0]) == line
    console = Console(record=True, width=200)
    console.print(render(picture))
    assert line in console.export_text()
    text = GatewayMetrics(lane.status).render().decode()
    assert 'gpulane_alerts_firing{rule="queue_depth"} 1.0' in text
    assert 'gpulane_alerts_firing{rule="backend_down"} 0.0' in text
    lane.queued(1)
    assert lane.status()["alerts"] == () and look(watch)["alerts"] == []
    text = GatewayMetrics(lane.status).render().decode()
    assert 'gpulane_alerts_firing{rule="queue_depth"} 0.0' in text


def test_an_alert_about_a_job_or_a_caller_shows_what_it_is_about_only_to_who_may_see_it(
    lane: StubLane, watch: LaneWatch
) -> None:
    lane.run("llama3.2", caller="bob")
    assert lane.job is not None
    job = dataclasses.replace(lane.job, preemptions=1)
    now = lane.clock.now()
    lane.alert(lambda rules: rules.job(job, now))
    lane.alert(lambda rules: rules.sample(LaneSample(now, rejections={"alice": 0})))
    lane.alert(lambda rules: rules.sample(LaneSample(now, rejections={"alice": 30})))
    picture = look(watch)
    assert sorted((a["rule"], a["subject"]) for a in picture["alerts"]) == [
        ("caller_rejections", "alice"), ("job_preemptions", "job-1"),
    ]  # fmt: skip
    seen = {
        who: {a["rule"]: a["subject"] for a in view_for(picture, caller)["alerts"]}
        for who, caller in (("admin", ADMIN), ("alice", ALICE), ("anonymous", None))
    }
    assert seen == {
        "admin": {"caller_rejections": "alice", "job_preemptions": "job-1"},
        "alice": {"caller_rejections": "alice", "job_preemptions": None},
        "anonymous": {"caller_rejections": None, "job_preemptions": None},
    }
    hidden = view_for(picture, None)["alerts"]
    assert all(a["summary"] is None and a["value"] is None for a in hidden)
    assert "bob" not in str(hidden) and "job-1" not in str(hidden)
    assert describe_alert(hidden[0]).endswith("firing for 0.0s (details need another key)")
