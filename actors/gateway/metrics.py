"""Prometheus metrics: the queue as ``GpuLane.status`` reports it, and the jobs the gateway saw end.

Gauges and counters that the lane keeps (queue depth per lane and priority, slots,
preemptions, dispatches, retries requested, the swap tally, each backend's health) are
read at scrape time, the load-time histogram per model too: it is the tally's, so it
counts swaps only (a model that was not resident became resident), not the small
``load_duration`` Ollama reports on warm calls. ``gpulane_alerts_firing`` counts the alerts
firing per rule (every rule has a sample, 0 when quiet). Histograms of wait and run time are fed
from every job this gateway saw finish. Each app has its own registry, so several
gateways (or tests) in one process do not collide.

With several backends (issue #17) the series above stay totals over them, and the figures
each backend has of its own carry a ``backend`` label in families of their own
(``gpulane_backend_*``, ``gpulane_model_resident``): what it is (``gpulane_backend_info``),
its swaps, load times and busy time, its resident models, its slots and how many are busy,
and its catalog's size.

On PostgreSQL (several gateways, docs/architecture.md section 14) the ``gpulane_cluster_*``
families say which role this gateway has and how old the leader's lease is
(``cluster_metrics``, from ``status["cluster"]``; a follower's app exports them from its own
view too); on SQLite there is no ``"cluster"`` in the status and no such family.
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

__all__ = ["GatewayMetrics", "cluster_metrics"]

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
        yield from _backend_metrics(status["backends"], status["slots"])
        firing = GaugeMetricFamily(
            "gpulane_alerts_firing", "Alerts firing now (one per subject), per rule",
            labels=["rule"],
        )  # fmt: skip
        for rule in RULES:
            firing.add_metric([rule], float(sum(a["rule"] == rule for a in status["alerts"])))
        yield firing
        if "cluster" in status:
            yield from cluster_metrics(status["cluster"])


def cluster_metrics(cluster: Mapping[str, Any]) -> Iterator[Metric]:
    """This gateway's place in the cluster from its ``ClusterView.to_dict()``: its role (1 for
    the one it has, 0 for the other), the leader's lease (its age and time since renewal, no
    sample while nobody leads), the fencing token and the leases this gateway took."""
    role = GaugeMetricFamily(
        "gpulane_cluster_role", "1 for this gateway's role in the cluster, 0 for the other",
        labels=["role"],
    )  # fmt: skip
    for name in ("leader", "follower"):
        role.add_metric([name], float(cluster["role"] == name))
    age = GaugeMetricFamily(
        "gpulane_cluster_lease_age_seconds",
        "How long the leader has held its lease (no sample while no gateway leads)",
    )
    renewed = GaugeMetricFamily(
        "gpulane_cluster_lease_renewed_age_seconds",
        "Seconds since the leader last renewed its lease (no sample while no gateway leads)",
    )
    for family, seconds in ((age, cluster["lease_age_s"]), (renewed, cluster["renewed_age_s"])):
        if seconds is not None:
            family.add_metric([], float(seconds))
    token = GaugeMetricFamily(
        "gpulane_cluster_lease_token",
        "The lease's fencing token, one more at every takeover",
        value=float(cluster["token"]),
    )
    takeovers = CounterMetricFamily(
        "gpulane_cluster_takeovers", "Leases this gateway took since it started",
        value=float(cluster["takeovers"]),
    )  # fmt: skip
    yield from (role, age, renewed, token, takeovers)


def _load_histogram(
    family: HistogramMetricFamily, labels: list[str], by_model: Mapping[str, Mapping[str, Any]]
) -> None:
    """Add to ``family`` one load-time histogram per model of a tally's ``by_model``, its
    labels ``labels`` then the model; keys with runner options count as their model."""
    tallies_of: dict[str, list[Mapping[str, Any]]] = {}
    for key, tally in by_model.items():
        tallies_of.setdefault(model_of_key(key), []).append(tally)
    for model, tallies in sorted(tallies_of.items()):
        buckets = [  # ``le`` written as the client writes its own histograms' (1 -> "1.0")
            (_le(bound), float(sum(t["buckets"][i][1] for t in tallies)))
            for i, bound in enumerate(LOAD_BUCKETS)
        ]
        count = float(sum(t["count"] for t in tallies))
        family.add_metric(
            [*labels, model], [*buckets, ("+Inf", count)], sum(t["sum_s"] for t in tallies)
        )


def _swap_metrics(swaps: Mapping[str, Any]) -> Iterator[Metric]:
    """The swap tally: load time per model (swaps only), busy time, overhead, swaps/hour."""
    loads = HistogramMetricFamily(
        "gpulane_model_load_seconds",
        "Load time of each model swap (a model that was not resident became resident)",
        labels=["model"],
    )
    _load_histogram(loads, [], swaps["by_model"])
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


def _backend_metrics(
    backends: Mapping[str, Mapping[str, Any]], slots: Mapping[str, Mapping[str, Any]]
) -> Iterator[Metric]:
    """Each backend's own figures, labelled ``backend`` (the totals are the series above)."""
    info = GaugeMetricFamily(
        "gpulane_backend_info", "1 per configured backend: its kind, URL and labels (comma-joined)",
        labels=["backend", "kind", "url", "labels"],
    )  # fmt: skip
    swaps = CounterMetricFamily(
        "gpulane_backend_swaps", "Model swaps on the backend (a model became resident there)",
        labels=["backend"],
    )  # fmt: skip
    loading = CounterMetricFamily(
        "gpulane_backend_loading_seconds", "Time the backend's swaps spent loading models",
        labels=["backend"],
    )  # fmt: skip
    busy = CounterMetricFamily(
        "gpulane_backend_busy_seconds", "Time the backend's slots spent running calls",
        labels=["backend"],
    )  # fmt: skip
    per_hour = GaugeMetricFamily(
        "gpulane_backend_swaps_per_hour", "The backend's swaps over the last hour",
        labels=["backend"],
    )  # fmt: skip
    loads = HistogramMetricFamily(
        "gpulane_backend_model_load_seconds", "Load time of each model swap on the backend",
        labels=["backend", "model"],
    )  # fmt: skip
    resident = GaugeMetricFamily(
        "gpulane_model_resident", "1 per model resident on a backend", labels=["backend", "model"]
    )
    total = GaugeMetricFamily(
        "gpulane_backend_slots", "GPU slots driving the backend", labels=["backend"]
    )
    taken = GaugeMetricFamily(
        "gpulane_backend_slots_busy", "The backend's slots running a job now", labels=["backend"]
    )
    catalog = GaugeMetricFamily(
        "gpulane_backend_catalog_models",
        "Models the backend can run (no sample until its catalog is known)",
        labels=["backend"],
    )
    for name, backend in backends.items():
        info.add_metric([name, backend["kind"], backend["url"], ",".join(backend["labels"])], 1.0)
        tally = backend["swaps"]
        swaps.add_metric([name], float(tally["swaps"]))
        loading.add_metric([name], tally["loading_s"])
        busy.add_metric([name], tally["busy_s"])
        per_hour.add_metric([name], tally["swaps_per_hour"])
        _load_histogram(loads, [name], tally["by_model"])
        for model in sorted({model_of_key(key) for key in backend["resident"]}):
            resident.add_metric([name, model], 1.0)
        total.add_metric([name], float(len(backend["slots"])))
        taken.add_metric(
            [name], float(sum(slots[s]["job_id"] is not None for s in backend["slots"]))
        )
        if backend["catalog"] is not None:
            catalog.add_metric([name], float(len(backend["catalog"])))
    yield from (info, swaps, loading, busy, per_hour, loads, resident, total, taken, catalog)


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
