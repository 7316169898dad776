"""The alerts firing on a running lane, as ``status()["alerts"]`` and ``/metrics`` show them:
a real rule fires on the manual clock, shows while it holds and is gone once it clears."""

from __future__ import annotations

import pytest
from conftest import StartLane

from actors.gateway.metrics import GatewayMetrics
from actors.testing import FakeGpu, ManualClock, quiesce
from protocol import JobSpec
from protocol.config import AlertSettings

# The queue_depth rule alone: over 2 jobs at a sample fires it.
DEEP_QUEUE = AlertSettings(
    queue_depth=2, queue_depth_for_s=0, swap_overhead_pct=0, job_preemptions=0,
    backend_down_for_s=0, child_restarts=0, caller_rejections=0, remind_s=0, sample_s=5,
)  # fmt: skip


def tick(clock: ManualClock, seconds: float) -> None:
    """Move the clock on and let the sample it triggers finish."""
    clock.advance(seconds)
    quiesce()


def firing_metric(text: str, rule: str) -> float:
    """The ``gpulane_alerts_firing`` sample for ``rule`` in an exposition text."""
    prefix = f'gpulane_alerts_firing{{rule="{rule}"}} '
    (line,) = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(line.removeprefix(prefix))


def test_a_deep_queue_alert_shows_in_status_and_metrics_while_it_fires_and_not_after(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    clock = fake_gpu.clock
    lane = start_lane(alerts=DEEP_QUEUE)
    metrics = GatewayMetrics(lane.status)
    messages = [{"role": "user", "content": "hi"}]
    tickets = [lane.submit(JobSpec.chat(model="m", messages=messages)) for _ in range(4)]
    running = fake_gpu.next_call()  # one runs, three wait
    quiesce()
    assert lane.status()["alerts"] == ()
    assert firing_metric(metrics.render().decode(), "queue_depth") == 0.0
    tick(clock, 5)
    fired_at = clock.now()
    tick(clock, 5)  # still deep: the same alert, its start unchanged
    (alert,) = lane.status()["alerts"]
    assert (alert["rule"], alert["subject"], alert["value"], alert["threshold"]) == (
        "queue_depth", "queue", 3, 2,
    )  # fmt: skip
    assert alert["since"] == alert["last_notice_at"] == pytest.approx(fired_at)
    assert alert["summary"] == "3 jobs queued, over 2 for 0s"
    text = metrics.render().decode()
    assert firing_metric(text, "queue_depth") == 1.0
    assert firing_metric(text, "backend_down") == 0.0
    running.finish("ok")
    fake_gpu.next_call().finish("ok")  # two waiting now: not over 2
    quiesce()
    tick(clock, 5)
    assert lane.status()["alerts"] == ()
    assert firing_metric(metrics.render().decode(), "queue_depth") == 0.0
    for _ in range(2):
        fake_gpu.next_call().finish("ok")
    assert [t.result(timeout=5) for t in tickets] == ["ok"] * 4
