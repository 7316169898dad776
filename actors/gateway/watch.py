"""The picture behind the live views (``gpulane top``, the page at ``/``, ``GET /status``).

One sample of ``GpuLane.status()``, with the jobs running on the slots, is shared by
every viewer and taken at most every ``max_age`` seconds, so ten open pages cost the
actors what one does, and nothing is sampled while nobody watches.

Consecutive samples are compared to name recent events: a slot that changed to a model
not resident at the last sample (a swap: the call has to load its model) and a job that
was running at the last sample and has since been charged one more preemption. Events
are therefore seen only while someone watches, and two that happen between samples can
merge. The totals are exact: ``counters["swaps"]`` is the residency tracker's swap tally
(a model that was not resident became resident), and swaps it counted that no slot
showed (a model loaded and replaced between two samples, a pin restored) become one
event naming the models.

Who may see what: an admin sees everything; a caller sees the aggregates plus its
own jobs and its own count; an anonymous viewer (a browser on a gateway with keys)
sees aggregates only, no job ids, callers or prompts, nor a backend's last error or URL
(they name the backend's address), nor the leader's URL in ``cluster`` (PostgreSQL only).
Prompts never appear. Every viewer sees which alerts fire and for how long; what one is
about (its subject and text) is shown as the rest is: a job's preemptions to an admin, a
caller's refusals to that caller, a child's exits (the text names the error) to a key
holder, the queue, the swaps and a backend to anyone.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from actors.gateway.auth import Caller
from actors.system import GpuLane
from protocol import Job, Lane, Priority, model_of_key

__all__ = ["COUNTERS", "LaneWatch", "view_for"]

Runner = Callable[[Callable[[], dict[str, Any]]], Awaitable[dict[str, Any]]]

# The facade's counters the views show, in the order they show them.
COUNTERS = (
    "submitted",
    "dispatched",
    "dispatched_cold",
    "swaps",
    "preemptions",
    "retries_requested",
    "cancel_requests",
    "cancelled_queued",
)
PRIORITIES = tuple(p.name.lower() for p in sorted(Priority, reverse=True))
_OPEN_ALERTS = frozenset({"queue_depth", "swap_overhead", "backend_down"})  # about no one


def _brief(job: Job | None) -> dict[str, Any] | None:
    """What the views say about a job: who, where, which model; never its text."""
    if job is None:
        return None
    spec = job.spec
    return {
        "id": job.id,
        "seq": job.seq,
        "caller": spec.caller,
        "lane": spec.lane.value,
        "priority": spec.priority.name.lower(),
        "model": spec.model,
        "state": job.state.value,
        "attempts": job.attempts,
        "preemptions": job.preemptions,
    }


def _model(key: str | None) -> str | None:
    return None if key is None else model_of_key(key)


def _backend_row(
    name: str, backend: Mapping[str, Any], slots: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """What the views say about one backend (issue #17): what it is, whether it is up, its
    resident models, its slots and how many are busy, its swaps and its catalog's size."""
    tally = backend["swaps"]
    catalog = backend["catalog"]
    return {
        "name": name,
        "kind": backend["kind"],
        "url": backend["url"],
        "labels": list(backend["labels"]),
        "state": backend["state"],
        "resident": sorted({model_of_key(key) for key in backend["resident"]}),
        "slots": len(backend["slots"]),
        "busy": sum(slots[slot_id]["job_id"] is not None for slot_id in backend["slots"]),
        "swaps": int(tally["swaps"]),
        "swaps_per_hour": float(tally["swaps_per_hour"]),
        "loading_s": float(tally["loading_s"]),
        "models": None if catalog is None else len(catalog),
    }


class LaneWatch:
    """Samples the lane for the views, at most every ``max_age`` seconds; keeps recent events."""

    def __init__(self, lane: GpuLane, *, max_age: float = 0.5, keep: int = 20) -> None:
        self._lane = lane
        self._max_age = max_age
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._running: dict[str, Job] = {}
        self._models: dict[str, str | None] = {}
        self._resident: frozenset[str] = frozenset()
        self._tallied: dict[str, int] = {}  # swaps per model key the tally had counted
        self._shown_ahead: collections.Counter[str] = collections.Counter()
        self._sampled = False
        self._picture: dict[str, Any] | None = None
        self._taken_at = 0.0
        self._lock = asyncio.Lock()

    async def picture(self, run: Runner) -> dict[str, Any]:
        """The latest picture (admin's view), sampling first when the last is too old.

        ``run`` runs the blocking sample off the event loop (the gateway's pool).
        Viewers that ask while a sample is being taken wait for it and share it.
        """
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._picture is None or loop.time() - self._taken_at >= self._max_age:
                self._picture = await run(self._sample)
                self._taken_at = loop.time()
            return self._picture

    def _sample(self) -> dict[str, Any]:
        """Ask the facade (blocking), compare with the last sample, build the picture."""
        lane = self._lane
        status = lane.status()
        now = lane.clock.now()
        running: dict[str, Job] = {}
        handed_over: dict[str, Job] = {}  # each busy slot's next job (prefetch)
        for slot_id, slot in status["slots"].items():
            if slot["job_id"] is not None:
                running[slot_id] = lane.get(slot["job_id"])
            if slot["next_job_id"] is not None:
                handed_over[slot_id] = lane.get(slot["next_job_id"])
        tallied = {key: int(m["count"]) for key, m in status["swaps"]["by_model"].items()}
        if self._sampled:
            self._note_preemptions(running, now)
            self._note_swaps(status["slots"], running, tallied, now)
        self._sampled = True
        self._tallied = tallied
        self._running = running
        self._models = {slot_id: slot["model_key"] for slot_id, slot in status["slots"].items()}
        self._resident = frozenset(status["resident_models"])
        return self._build(status, running, handed_over, now)

    def _note_preemptions(self, running: Mapping[str, Job], now: float) -> None:
        on_slots = {job.id: job for job in running.values()}
        for slot_id, before in self._running.items():
            after = on_slots.get(before.id) or self._lane.get(before.id)
            if after.preemptions > before.preemptions:
                by = running.get(slot_id)  # gone again if it ended between the samples
                self._events.appendleft(
                    {
                        "at": now,
                        "kind": "preemption",
                        "slot": slot_id,
                        "model": before.spec.model,
                        "job": _brief(after),
                        "by": _brief(by) if by is not None and by.id != after.id else None,
                    }
                )

    def _note_swaps(
        self,
        slots: Mapping[str, Mapping[str, Any]],
        running: Mapping[str, Job],
        tallied: Mapping[str, int],
        now: float,
    ) -> None:
        """A swap per slot that changed to a model not resident at the last sample; the
        tally's new swaps that no slot showed become one event naming their models.

        A slot shows its new model at dispatch and the tally counts the swap once the
        model is loaded, often a sample later: a swap shown is kept as owed by its model
        (``_shown_ahead``) and settles the tally's next count for that model."""
        for slot_id, slot in slots.items():
            before, after = self._models.get(slot_id), slot["model_key"]
            if after is not None and after != before and after not in self._resident:
                self._shown_ahead[after] += 1
                self._events.appendleft(
                    {
                        "at": now,
                        "kind": "swap",
                        "slot": slot_id,
                        "from": _model(before),
                        "to": _model(after),
                        "job": _brief(running.get(slot_id)),
                        "count": 1,
                        "models": [_model(after)],
                    }
                )
        unseen: collections.Counter[str] = collections.Counter()
        for key, count in tallied.items():
            had = self._tallied.get(key, 0)
            new = count - had if count >= had else count  # a restarted tracker counts anew
            settled = min(new, self._shown_ahead[key])
            self._shown_ahead[key] -= settled
            unseen[key] = new - settled
        unseen = +unseen  # only the models with swaps left over
        if unseen:
            self._events.appendleft(
                {
                    "at": now,
                    "kind": "swap",
                    "slot": None,
                    "from": None,
                    "to": None,
                    "job": None,
                    "count": sum(unseen.values()),
                    "models": sorted({model_of_key(key) for key in unseen}),
                }
            )

    def _build(
        self,
        status: Mapping[str, Any],
        running: Mapping[str, Job],
        handed_over: Mapping[str, Job],
        now: float,
    ) -> dict[str, Any]:
        depth = dict(status["depth"])
        slots = []
        for slot_id, slot in sorted(status["slots"].items()):
            since = slot["since"]
            slots.append(
                {
                    "id": slot_id,
                    "backend": slot["backend"],  # "cloud" for a cloud slot
                    "busy": slot["job_id"] is not None,
                    "model": _model(slot["model_key"]),
                    "running_s": None if since is None else max(0.0, now - since),
                    "cancelling": slot["cancelling"],
                    "job": _brief(running.get(slot_id)),
                    "has_next": slot_id in handed_over,
                    "next": _brief(handed_over.get(slot_id)),
                }
            )
        on_gpu = collections.Counter(job.spec.caller for job in running.values())
        admission = status["admission"]
        unfinished = dict(admission["queued_by_caller"])
        callers = [  # a running job counts until its end is committed; take the larger count
            {"caller": name, "unfinished": n, "running": on_gpu[name]}
            for name, n in (collections.Counter(unfinished) | on_gpu).items()
        ]
        callers.sort(key=lambda c: (-c["unfinished"], c["caller"]))
        counters = dict(status["counters"])
        swaps = status["swaps"]
        return {
            "at": now,
            "paused": bool(status["paused"]),
            "queued": int(status["queued"]),
            "depth": {
                lane.value: {p: int(depth.get(f"{lane.value}.{p}", 0)) for p in PRIORITIES}
                for lane in sorted(Lane, key=lambda lane: lane.rank)
            },
            "slots": slots,
            "resident_models": sorted({model_of_key(k) for k in status["resident_models"]}),
            "callers": callers,
            "jobs": {str(state): int(n) for state, n in dict(status["jobs"]).items()},
            "counters": {name: int(counters.get(name, 0)) for name in COUNTERS},
            "loading_s": float(swaps["loading_s"]),  # the swaps' load time, as their count
            "busy_s": float(swaps["busy_s"]),
            "overhead_ratio": swaps["overhead_ratio"],  # None until a slot has run a call
            "swaps_per_hour": float(swaps["swaps_per_hour"]),
            "health": {name: dict(health) for name, health in sorted(status["health"].items())},
            "backends": [
                _backend_row(name, backend, status["slots"])
                for name, backend in status["backends"].items()
            ],
            "rejections": {str(k): int(v) for k, v in dict(admission["rejections"]).items()},
            "alerts": [
                {**alert, "firing_s": max(0.0, now - alert["since"])} for alert in status["alerts"]
            ],
            "events": list(self._events),
            **({"cluster": dict(status["cluster"])} if "cluster" in status else {}),
        }


def view_for(picture: Mapping[str, Any], caller: Caller | None) -> dict[str, Any]:
    """``picture`` as ``caller`` may see it (None: an anonymous browser, aggregates only)."""
    out = dict(picture)
    out["viewer"] = {
        "caller": None if caller is None else caller.name,
        "admin": caller is not None and caller.admin,
    }
    if caller is not None and caller.admin:
        return out

    def mine(job: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        return job if caller is not None and job and job["caller"] == caller.name else None

    out["slots"] = [
        dict(slot, job=mine(slot["job"]), next=mine(slot["next"])) for slot in picture["slots"]
    ]
    out["callers"] = [c for c in picture["callers"] if caller and c["caller"] == caller.name]
    if caller is None:
        out["health"] = {name: dict(h, last_error=None) for name, h in picture["health"].items()}
        out["backends"] = [dict(backend, url=None) for backend in picture["backends"]]
        if "cluster" in picture:
            out["cluster"] = dict(picture["cluster"], leader_url=None)
    out["events"] = [
        dict(event, job=mine(event["job"]), **({"by": mine(event["by"])} if "by" in event else {}))
        for event in picture["events"]
    ]
    out["alerts"] = [_alert_for(alert, caller) for alert in picture["alerts"]]
    return out


def _alert_for(alert: Mapping[str, Any], caller: Caller | None) -> dict[str, Any]:
    """A firing alert as a viewer who is not an admin may see it (module docstring): its
    subject and text withheld (None) where they would name a job, a caller or an error."""
    rule = alert["rule"]
    shown = (
        rule in _OPEN_ALERTS
        or (rule == "supervision" and caller is not None)
        or (rule == "caller_rejections" and caller is not None and alert["subject"] == caller.name)
    )
    return dict(alert) if shown else dict(alert, subject=None, summary=None, value=None)
