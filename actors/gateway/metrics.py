"""Prometheus metrics: the queue as ``GpuLane.status`` reports it, and the jobs the gateway saw end.

Gauges and counters that the lane keeps (queue depth per lane and priority, slots,
preemptions, dispatches, retries requested, the swap tally, each backend's health) are
read at scrape time, the load-time histogram per model too: it is the tally's, so it
counts swaps only (a model that was not resident became resident), not the small
``load_duration`` Ollama reports on warm calls. ``gpulane_alerts_firing`` counts the alerts
firing per rule (every rule has a sample, 0 when quiet). Histograms of wait and run time are fed
from every job this gateway saw finish. Each app has its own registry, so several
gateways (or tests) in one process do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from actors.alert_rules import RULES
from actors.swap_tally import LOAD_BUCKETS
from protocol import Job, Lane, Priority, model_of_key

__all__ = ["GatewayMetrics"]

# Status counters exported as ``gpulane_<name>_total``, with what each counts.
_COUNTERS: Mapping[str, str] = {
    "submitted": "Jobs submitted through the facade since start",
    "dispatched": "Jobs the arbiter sent to a GPU slot",
    "dispatched_cold": "Jobs dispatched for a model the arbiter did not see resident",
    "swaps": "Model swaps: a model that was not resident became resident (it was loaded)",
    "recalls": "Jobs handed to a busy slot ahead of time (prefetch) and taken back unstarted",
    "preemptions": "External calls taken off the GPU for internal work",
    "cancel_requests": "Cancels asked for (users and callers who went away)",
    "cancelled_queued": "Queued jobs cancelled before they ran",
    "retries_requested": "Failed or cancelled jobs submitted again by a user",
}


class _StatusCollector(Collector):
    """Reads ``GpuLane.status()`` at scrape time (scrapes run off the event loop)."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        depth = GaugeMetricFamily(
            "gpulane_queue_depth",
            "Jobs waiting, per lane and priority",
            labels=["lane", "priority"],
        )
        counts = dict(status["depth"])
        for lane in Lane:
            for priority in Priority:
                key = f"{lane.value}.{priority.name.lower()}"
                depth.add_metric([lane.value, priority.name.lower()], float(counts.get(key, 0)))
        yield depth
        yield GaugeMetricFamily(
            "gpulane_paused", "1 while dispatch is paused", value=float(bool(status["paused"]))
        )
        busy = GaugeMetricFamily(
            "gpulane_slot_busy", "1 while a GPU slot runs a job", labels=["slot", "model"]
        )
        for slot_id, slot in status["slots"].items():
            busy.add_metric([slot_id, slot["model_key"] or ""], float(slot["job_id"] is not None))
        yield busy
        jobs = GaugeMetricFamily("gpulane_jobs", "Jobs in the store, per state", labels=["state"])
        for state, count in dict(status["jobs"]).items():
            jobs.add_metric([str(state)], float(count))
        yield jobs
        counters = dict(status["counters"])
        for name, help_text in _COUNTERS.items():
            if name in counters:
                yield CounterMetricFamily(f"gpulane_{name}", help_text, value=counters[name])
        yield from _swap_metrics(status["swaps"])
        yield from _health_metrics(status["health"])
        firing = GaugeMetricFamily(
            "gpulane_alerts_firing", "Alerts firing now (one per subject), per rule",
            labels=["rule"],
        )  # fmt: skip
        for rule in RULES:
            firing.add_metric([rule], float(sum(a["rule"] == rule for a in status["alerts"])))
        yield firing


def _swap_metrics(swaps: Mapping[str, Any]) -> Iterator[Metric]:
    """The swap tally: load time per model (swaps only), busy time, overhead, swaps/hour."""
    loads = HistogramMetricFamily(
        "gpulane_model_load_seconds",
        "Load time of each model swap (a model that was not resident became resident)",
        labels=["model"],
    )
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for key, tally in swaps["by_model"].items():  # keys with runner options count as the model
        by_model.setdefault(model_of_key(key), []).append(tally)
    for model, tallies in sorted(by_model.items()):
        buckets = [  # ``le`` written as the client writes its own histograms' (1 -> "1.0")
            (_le(bound), float(sum(t["buckets"][i][1] for t in tallies)))
            for i, bound in enumerate(LOAD_BUCKETS)
        ]
        count = float(sum(t["count"] for t in tallies))
        loads.add_metric([model], [*buckets, ("+Inf", count)], sum(t["sum_s"] for t in tallies))
    yield loads
    yield CounterMetricFamily(
        "gpulane_busy_seconds", "Time GPU slots spent running calls, loading included",
        value=swaps["busy_s"],
    )  # fmt: skip
    yield GaugeMetricFamily(
        "gpulane_swaps_per_hour", "Model swaps per hour, over the last hour",
        value=swaps["swaps_per_hour"],
    )  # fmt: skip
    overhead = GaugeMetricFamily(
        "gpulane_swap_overhead_ratio",
        "Time loading models over time busy since start (no sample until a slot has been busy)",
    )
    if swaps["overhead_ratio"] is not None:
        overhead.add_metric([], swaps["overhead_ratio"])
    yield overhead


def _le(bound: float) -> str:
    """A bucket bound as the client writes ``le`` (its function is untyped)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


def _health_metrics(health: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Each backend's health: up or down, the time spent down, the probes sent."""
    up = GaugeMetricFamily("gpulane_backend_up", "1 while the backend is up", labels=["backend"])
    down = CounterMetricFamily(
        "gpulane_backend_down_seconds", "Time the backend spent down since start",
        labels=["backend"],
    )  # fmt: skip
    probes = CounterMetricFamily(
        "gpulane_backend_probes", "Probes sent to a backend that was down", labels=["backend"]
    )
    for name, backend in sorted(health.items()):
        up.add_metric([name], float(backend["state"] == "up"))
        down.add_metric([name], backend["down_s_total"])
        probes.add_metric([name], float(backend["probes"]))
    yield from (up, down, probes)


class GatewayMetrics:
    """The gateway's registry: status gauges plus histograms of the jobs it saw end."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatusCollector(status))
        self.wait = Histogram(
            "gpulane_job_wait_seconds", "Time from submit to the last start",
            ["lane", "model"], buckets=LOAD_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.run = Histogram(
            "gpulane_job_run_seconds", "Time from the last start to the end",
            ["lane", "model"], buckets=LOAD_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.finished = Counter(
            "gpulane_jobs_finished", "Jobs seen ending by the gateway, per lane and state",
            ["lane", "state"], registry=self.registry,
        )  # fmt: skip
        self.job_preemptions = Counter(
            "gpulane_job_preemptions", "Preemptions suffered by the jobs seen ending",
            ["lane"], registry=self.registry,
        )  # fmt: skip
        self.rejections = Counter(
            "gpulane_rejections", "Requests the gateway refused, per reason",
            ["reason"], registry=self.registry,
        )  # fmt: skip
        self.heartbeats = Counter(
            "gpulane_heartbeats", "Heartbeats sent to clients whose job was silent (queued)",
            registry=self.registry,
        )  # fmt: skip
        self.embeds = Histogram(
            "gpulane_embed_seconds", "Embedding requests answered (they bypass the queue)",
            ["model"], buckets=LOAD_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def job_ended(self, job: Job) -> None:
        """Record a job the gateway saw reach a terminal state."""
        lane, model = job.spec.lane.value, job.spec.model
        self.finished.labels(lane, job.state.value).inc()
        if job.preemptions:
            self.job_preemptions.labels(lane).inc(job.preemptions)
        if job.wait_seconds is not None:
            self.wait.labels(lane, model).observe(max(0.0, job.wait_seconds))
        if job.run_seconds is not None:
            self.run.labels(lane, model).observe(max(0.0, job.run_seconds))

    def embedded(self, model: str, seconds: float) -> None:
        """Record an embedding request the model server answered."""
        self.embeds.labels(model).observe(seconds)

    def heartbeat(self) -> None:
        """Count a heartbeat sent to a waiting client."""
        self.heartbeats.inc()

    def rejected(self, reason: str) -> None:
        """Count a refused request."""
        self.rejections.labels(reason).inc()

    def render(self) -> bytes:
        """The exposition text (blocking: it asks the actors; call it off the event loop)."""
        return generate_latest(self.registry)
