"""Prometheus metrics: the queue as ``GpuLane.status`` reports it, and the jobs the gateway saw end.

Gauges and counters that the facade keeps (queue depth per lane and priority, slots,
preemptions, dispatches, retries requested) are read at scrape time; histograms of
wait, run and load time are fed from every job this gateway saw finish. Each app has
its own registry, so several gateways (or tests) in one process do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol import Job, Lane, Priority

__all__ = ["GatewayMetrics"]

_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# Status counters exported as ``gpulane_<name>_total``, with what each counts.
_COUNTERS: Mapping[str, str] = {
    "submitted": "Jobs submitted through the facade since start",
    "dispatched": "Jobs the arbiter sent to a GPU slot",
    "swaps": "Jobs that started on a GPU slot holding another model (the model had to load)",
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


class GatewayMetrics:
    """The gateway's registry: status gauges plus histograms of the jobs it saw end."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatusCollector(status))
        self.wait = Histogram(
            "gpulane_job_wait_seconds", "Time from submit to the last start",
            ["lane", "model"], buckets=_TIME_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.run = Histogram(
            "gpulane_job_run_seconds", "Time from the last start to the end",
            ["lane", "model"], buckets=_TIME_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.load = Histogram(
            "gpulane_model_load_seconds", "Model load time reported by the backend (a swap)",
            ["model"], buckets=_TIME_BUCKETS, registry=self.registry,
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
            ["model"], buckets=_TIME_BUCKETS, registry=self.registry,
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
        if job.metrics is not None and job.metrics.load_duration_ns > 0:
            self.load.labels(model).observe(job.metrics.load_duration_ns / 1e9)

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
