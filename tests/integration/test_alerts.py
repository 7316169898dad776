"""Debounced alerts on a running lane: the Alerter under the tree samples on the manual clock,
hears what a sample would miss, and delivers to the log and a webhook on loopback."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from conftest import StartLane
from webhook_receiver import WebhookReceiver

from actors.runtime import ExitReason
from actors.testing import FakeGpu, InjectedFault, ManualClock, quiesce, wait_until
from actors.tree import SupervisionSettings
from protocol import (
    ActiveHours,
    JobSpec,
    Lane,
    Limits,
    RateLimitedError,
    ResidencySettings,
    SchedulingPolicy,
)
from protocol.config import AlertSettings

QUIET = AlertSettings(
    queue_depth=0,
    swap_overhead_pct=0,
    job_preemptions=0,
    backend_down_for_s=0,
    child_restarts=0,
    caller_rejections=0,
    remind_s=0,
)  # fmt: skip: every rule off; each test turns on the one it is about


def rule(**on: Any) -> AlertSettings:
    """The alert settings with only the given rules (and settings) on."""
    return dataclasses.replace(QUIET, **on)


def chat(text: str, *, lane: Lane = Lane.EXTERNAL, caller: str = "amy") -> JobSpec:
    messages = [{"role": "user", "content": text}]
    return JobSpec.chat(model="m", messages=messages, lane=lane, caller=caller)


def alerts(logs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The alert lines logged, as (firing or resolved, rule, subject)."""
    return [
        (e["event"].removeprefix("alert_"), e["rule"], e["subject"])
        for e in logs
        if e["event"] in ("alert_firing", "alert_resolved")
    ]


def tick(clock: ManualClock, seconds: float) -> None:
    """Move the clock on and let the sample it triggers finish."""
    clock.advance(seconds)
    quiesce()


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


def test_an_alert_fires_once_stays_quiet_while_it_holds_and_fires_again_after_it_clears(
    start_lane: StartLane, fake_gpu: FakeGpu, logs: list[dict[str, Any]]
) -> None:
    clock = fake_gpu.clock
    lane = start_lane(alerts=rule(queue_depth=2, queue_depth_for_s=60, sample_s=5))
    tickets = [lane.submit(chat(f"job {n}")) for n in range(4)]
    running = fake_gpu.next_call()  # one runs, three wait
    quiesce()
    tick(clock, 5)
    assert alerts(logs) == [], "over the limit, not yet for 60 s"
    tick(clock, 60)
    assert alerts(logs) == [("firing", "queue_depth", "queue")]
    for _ in range(10):
        tick(clock, 5)
    assert len(alerts(logs)) == 1, "quiet while the queue stays deep"
    running.finish("ok")
    fake_gpu.next_call().finish("ok")  # two waiting now: not over 2
    quiesce()
    tick(clock, 5)
    assert alerts(logs)[1:] == [("resolved", "queue_depth", "queue")]
    tickets += [lane.submit(chat("more")), lane.submit(chat("more"))]
    quiesce()
    tick(clock, 5)
    tick(clock, 60)
    assert alerts(logs)[2:] == [("firing", "queue_depth", "queue")]
    (first, _, again) = [e for e in logs if e["event"].startswith("alert_")]
    assert first["log_level"] == "warning" and first["threshold"] == 2
    assert again["since"] > first["since"]


def test_a_job_preempted_n_times_fires_when_it_comes_back_and_resolves_when_it_ends(
    start_lane: StartLane, fake_gpu: FakeGpu, logs: list[dict[str, Any]]
) -> None:
    always = SchedulingPolicy(active_hours=ActiveHours.parse("00:00-23:59"))
    lane = start_lane(scheduling=always, alerts=rule(job_preemptions=1))
    external = lane.submit(chat("long", lane=Lane.EXTERNAL))
    first = fake_gpu.next_call()
    internal = lane.submit(chat("bot", lane=Lane.INTERNAL))
    assert first.wait_cancelled()
    fake_gpu.next_call().finish("bot answer")
    resumed = fake_gpu.next_call()
    quiesce()
    assert alerts(logs) == [("firing", "job_preemptions", external.job_id)]
    resumed.finish("done")
    assert (external.result(timeout=5), internal.result(timeout=5)) == ("done", "bot answer")
    quiesce()
    assert alerts(logs)[1:] == [("resolved", "job_preemptions", external.job_id)]
    resolved = next(e for e in logs if e["event"] == "alert_resolved")
    assert "ended succeeded after 1 preemptions" in resolved["summary"]


def test_a_crashed_child_alerts_and_the_alerters_own_crash_restarts_nothing_else(
    start_lane: StartLane, fake_gpu: FakeGpu, logs: list[dict[str, Any]]
) -> None:
    clock = fake_gpu.clock
    lane = start_lane(alerts=rule(child_restarts=1, child_restarts_window_s=600))
    lane.ref_for("arbiter").tell(InjectedFault())
    quiesce()  # rest_for_one: the alerter restarts with the arbiter, and samples at once
    assert alerts(logs) == [("firing", "supervision", "arbiter")]
    lane.ref_for("alerter").tell(InjectedFault())
    quiesce()
    children = lane.status()["supervision"]["children"]
    restarts = {name: child["restarts"] for name, child in children.items()}
    # The arbiter's crash restarted the children after it; the alerter's, itself alone.
    assert restarts == {
        "store": 0, "limiter": 0, "residency": 0, "arbiter": 1, "gpus": 1, "gpu0": 0,
        "webhooks": 1, "alerter": 2,
    }  # fmt: skip
    assert alerts(logs)[1:] == [("firing", "supervision", "alerter")], "arbiter not again"
    tick(clock, 610)
    assert sorted(alerts(logs)[2:]) == [
        ("resolved", "supervision", "alerter"),
        ("resolved", "supervision", "arbiter"),
    ]


def test_the_tree_giving_up_is_posted_to_the_webhook_before_the_lane_lets_go(
    start_lane: StartLane, receiver: WebhookReceiver, logs: list[dict[str, Any]]
) -> None:
    failures: list[ExitReason] = []
    lane = start_lane(
        alerts=rule(webhook_url=receiver.url + "/hook", webhook_format="json"),
        supervision=SupervisionSettings(intensity=0),
        on_failure=failures.append,
    )
    lane.ref_for("store").tell(InjectedFault())
    wait_until(lambda: bool(failures), what="the tree gave up")
    body = receiver.posts(1)[0].json()
    assert (body["rule"], body["subject"], body["state"]) == ("supervision", "gpulane", "firing")
    assert body["summary"].startswith("the supervision tree gave up: escalated: gpulane")
    assert alerts(logs) == [("firing", "supervision", "gpulane")]


def test_one_caller_refused_again_and_again_alerts_and_the_limiter_counts_it_by_caller(
    start_lane: StartLane, fake_gpu: FakeGpu, logs: list[dict[str, Any]]
) -> None:
    clock = fake_gpu.clock
    lane = start_lane(
        limits=Limits(requests_per_minute=1, burst=1),
        alerts=rule(caller_rejections=3, caller_rejections_window_s=60, sample_s=5),
    )
    tickets = [lane.submit(chat("first", caller="bob"))]
    for _ in range(3):
        with pytest.raises(RateLimitedError):
            lane.submit(chat("again", caller="bob"))
    assert dict(lane.status()["admission"]["rejections_by_caller"]) == {"bob": 3}
    tick(clock, 5)
    assert alerts(logs) == [("firing", "caller_rejections", "bob")]
    tick(clock, 30)
    assert len(alerts(logs)) == 1
    tick(clock, 35)
    assert alerts(logs)[1:] == [("resolved", "caller_rejections", "bob")]
    assert tickets[0].job_id


def test_the_backend_down_for_t_alerts_and_resolves_when_a_probe_finds_it_up(
    start_lane: StartLane, fake_gpu: FakeGpu, logs: list[dict[str, Any]]
) -> None:
    clock = fake_gpu.clock
    probes = ResidencySettings(probe_initial_s=100, probe_max_s=100, probe_jitter=0)
    lane = start_lane(residency=probes, alerts=rule(backend_down_for_s=30, sample_s=5))
    ticket = lane.submit(chat("job", lane=Lane.INTERNAL))
    fake_gpu.next_call().fail("connection refused", outage=True)
    quiesce()
    assert lane.status()["health"]["local"]["state"] == "down"
    tick(clock, 5)
    tick(clock, 20)
    assert alerts(logs) == [], "down for 25 s"
    tick(clock, 5)
    assert alerts(logs) == [("firing", "backend_down", "local")]
    tick(clock, 70)  # the blind probe (no backend to ask) finds it up after 100 s
    fake_gpu.next_call().finish("ok")
    assert ticket.result(timeout=5) == "ok"
    tick(clock, 5)
    assert alerts(logs)[1:] == [("resolved", "backend_down", "local")]


def test_a_reload_applies_new_thresholds_and_a_webhook_in_slack_form(
    start_lane: StartLane, fake_gpu: FakeGpu, receiver: WebhookReceiver, logs: list[dict[str, Any]]
) -> None:
    clock = fake_gpu.clock
    lane = start_lane(alerts=QUIET)
    tickets = [lane.submit(chat(f"job {n}")) for n in range(3)]
    running = fake_gpu.next_call()
    tick(clock, 5)
    assert alerts(logs) == []
    slack = rule(
        queue_depth=1, queue_depth_for_s=0, webhook_url=receiver.url, webhook_format="slack"
    )
    lane.reload_config(lane.config.replace(alerts=slack))
    tick(clock, 5)
    assert alerts(logs) == [("firing", "queue_depth", "queue")]
    (posted,) = receiver.posts(1)
    assert posted.json() == {
        "text": "*FIRING* gpulane `queue_depth` queue: 2 jobs queued, over 1 for 0s"
    }
    lane.reload_config(lane.config.replace(alerts=rule(webhook_url=receiver.url)))
    quiesce()
    assert alerts(logs)[1:] == [("resolved", "queue_depth", "queue")]
    resolved = receiver.posts(2)[1].json()
    assert resolved["state"] == "resolved", "the json format, as the reload said"
    assert resolved["summary"] == "the rule was turned off; it lasted 0s"
    running.finish("ok")
    assert [t.result(timeout=5) for t in tickets[:1]] == ["ok"]
