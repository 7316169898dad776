"""Debounced alert rules, with no threads: observations with their times in, notices out.

The Alerter (``actors.alerts``) feeds :class:`AlertRules` what it samples from the lane
(a :class:`LaneSample`, read from the shape of ``GpuLane.status()``), the jobs the store
commits after many preemptions, and the tree giving up; the rules answer the notices to
send. Each rule watches one condition per subject (the queue, a backend, a job, a child
of the tree, a caller). It fires once when the condition starts (after its hold time, if
it has one), stays quiet while the condition holds, and sends a "resolved" notice when it
ends; only then can it fire again. The lasting conditions (queue depth, swap overhead,
backend down, caller rejections) are announced again every ``remind_s`` while they hold;
the ones about something that happened (a job's preemptions, a child's exits) are not.
docs/operations.md, "Alerts", has each rule. A part of a sample that could not be read
says nothing: it neither starts nor ends a condition.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from protocol import Job
from protocol.config import AlertSettings

__all__ = ["RULES", "AlertNotice", "AlertRules", "LaneSample"]

#: Every rule, by the name its notices carry.
RULES = (
    "queue_depth",
    "swap_overhead",
    "job_preemptions",
    "backend_down",
    "supervision",
    "caller_rejections",
)
_REMINDED = frozenset({"queue_depth", "swap_overhead", "backend_down", "caller_rejections"})
_TREE = "gpulane"  # the supervision rule's subject when the whole tree gives up
_MIN_BUSY_SHARE = 0.1  # swap overhead is judged once the GPU was busy this share of the window


@dataclasses.dataclass(frozen=True, slots=True)
class AlertNotice:
    """One notice: ``rule`` on ``subject`` is ``firing`` (or ``resolved``) at ``at``.

    ``since`` is when the condition began; ``value`` the figure that tripped the rule (or
    the last one seen, when resolved) and ``threshold`` its limit; ``reminder`` marks a
    firing notice that repeats one sent ``remind_s`` ago. Times are the lane clock's.
    """

    rule: str
    subject: str
    state: str
    at: float
    since: float
    summary: str
    value: float | None = None
    threshold: float | None = None
    reminder: bool = False

    @property
    def firing(self) -> bool:
        """True for a firing notice (a first one or a reminder), False for a resolved one."""
        return self.state == "firing"

    def to_dict(self) -> dict[str, Any]:
        """The generic JSON body of a webhook, and the fields of the log line."""
        return {
            "source": "gpulane",
            "rule": self.rule,
            "subject": self.subject,
            "state": self.state,
            "reminder": self.reminder,
            "summary": self.summary,
            "value": self.value,
            "threshold": self.threshold,
            "since": self.since,
            "at": self.at,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class LaneSample:
    """What one look at the lane saw at ``at``; None for a part that could not be read.

    ``swaps`` is the tally's (loading_s, busy_s) since the tracker started; ``health``
    maps a backend to (up, down since); ``rejections`` a caller to its admission refusals
    since the limiter started; ``exits`` a child of the tree to (exits, its last exit).
    """

    at: float
    queued: int | None = None
    swaps: tuple[float, float] | None = None
    health: Mapping[str, tuple[bool, float | None]] | None = None
    rejections: Mapping[str, int] | None = None
    exits: Mapping[str, tuple[int, str | None]] | None = None

    @classmethod
    def from_status(cls, at: float, status: Mapping[str, Any]) -> LaneSample:
        """Read the parts of a ``GpuLane.status()``-shaped mapping the rules watch: ``queued``,
        ``swaps``, ``health``, ``admission["rejections_by_caller"]`` and ``supervision``."""
        swaps = status.get("swaps")
        health = status.get("health")
        admission = status.get("admission")
        tree = status.get("supervision")
        return cls(
            at=at,
            queued=status.get("queued"),
            swaps=None if swaps is None else (swaps["loading_s"], swaps["busy_s"]),
            health=None
            if health is None
            else {name: (h["state"] == "up", h["since"]) for name, h in health.items()},
            rejections=None if admission is None else admission.get("rejections_by_caller"),
            exits=None
            if tree is None or tree["state"] != "running"
            else {
                child_id: (child["exits"], child["last_exit"])
                for child_id, child in tree["children"].items()
            },
        )


@dataclasses.dataclass
class _Track:
    """One (rule, subject) whose condition holds: since when, and its last firing notice."""

    since: float
    fired: AlertNotice | None = None  # None: still within its hold time


class _Series:
    """Samples of cumulative counters, kept for one trailing window, to read their growth.

    A counter that goes down was restarted from zero (its actor restarted): it is read as
    continuing from where it was, so the exits or refusals counted before stay in the
    window.
    """

    def __init__(self, at: float, values: tuple[float, ...]) -> None:
        self._raw = values
        self._offset = tuple(0.0 for _ in values)
        self._points: collections.deque[tuple[float, tuple[float, ...]]] = collections.deque()
        self._points.append((at, values))

    def growth(self, at: float, values: tuple[float, ...], window_s: float) -> tuple[float, ...]:
        """Add the sample at ``at``; how much each counter grew in about the last ``window_s``
        (since the newest sample at least that old, or the oldest kept)."""
        if any(now < before for now, before in zip(values, self._raw, strict=True)):
            self._offset = tuple(o + r for o, r in zip(self._offset, self._raw, strict=True))
        self._raw = values
        total = tuple(v + o for v, o in zip(values, self._offset, strict=True))
        self._points.append((at, total))
        while len(self._points) > 1 and self._points[1][0] <= at - window_s:
            self._points.popleft()
        base = self._points[0][1]
        return tuple(now - before for now, before in zip(total, base, strict=True))


class AlertRules:
    """The rules' state: which conditions hold, since when, and what was announced.

    Thread-free: the owner serialises calls and passes the lane clock's time in.
    """

    def __init__(self, settings: AlertSettings) -> None:
        self._settings = settings
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._last_at: float | None = None  # the previous sample's time

    @property
    def settings(self) -> AlertSettings:
        """The thresholds in force."""
        return self._settings

    def apply(self, settings: AlertSettings, at: float) -> list[AlertNotice]:
        """New thresholds; the alerts of a rule turned off are resolved now, and so are those
        of jobs preempted fewer times than a raised ``job_preemptions`` (no sample would
        end them; the other rules judge the new thresholds at the next sample)."""
        self._settings = settings
        notices = []
        for key, track in list(self._tracks.items()):
            limit = self._threshold(key[0])
            fired = track.fired
            if limit == 0:
                why = "the rule was turned off"
            elif key[0] == "job_preemptions" and fired is not None and (fired.value or 0) < limit:
                why = f"the limit was raised to {limit}"
            else:
                continue
            del self._tracks[key]
            if fired is not None:
                notices.append(_resolved(fired, at, why))
        return notices

    def sample(self, sample: LaneSample) -> list[AlertNotice]:
        """The notices one look at the lane calls for."""
        notices: list[AlertNotice] = []
        if sample.queued is not None:
            notices += self._queue_depth(sample.at, sample.queued)
        if sample.swaps is not None:
            notices += self._swap_overhead(sample.at, sample.swaps)
        if sample.health is not None:
            notices += self._backend_down(sample.at, sample.health)
        if sample.exits is not None:
            notices += self._supervision(sample.at, sample.exits)
        if sample.rejections is not None:
            notices += self._caller_rejections(sample.at, sample.rejections)
        self._last_at = sample.at
        return notices

    def job(self, job: Job, at: float) -> list[AlertNotice]:
        """A committed job: fire while it has been preempted ``job_preemptions`` times and
        has not ended; resolve when it ends (a job first seen ended does both)."""
        limit = self._settings.job_preemptions
        key = ("job_preemptions", job.id)
        if limit == 0 or job.preemptions < limit:
            return []
        who = f"job {job.id} (caller {job.spec.caller}, model {job.spec.model})"
        notices = self._level(
            key,
            True,
            at,
            since=at,
            hold_s=0.0,
            value=job.preemptions,
            threshold=limit,
            summary=f"{who} preempted {job.preemptions} times (limit {limit})",
        )
        if job.state.is_terminal:
            ending = f"{who} ended {job.state.value} after {job.preemptions} preemptions"
            notices += self._level(key, False, at, summary=ending)
        return notices

    def gave_up(self, reason: str, at: float) -> list[AlertNotice]:
        """The supervision tree gave up: the lane has stopped. Fires once, never resolves."""
        key = ("supervision", _TREE)
        if key in self._tracks:
            return []
        notice = AlertNotice(
            "supervision", _TREE, "firing", at, at, f"the supervision tree gave up: {reason}"
        )
        self._tracks[key] = _Track(at, notice)
        return [notice]

    # --- the rules ----------------------------------------------------------------------

    def _queue_depth(self, at: float, queued: int) -> list[AlertNotice]:
        limit, hold_s = self._settings.queue_depth, self._settings.queue_depth_for_s
        key = ("queue_depth", "queue")
        track = self._tracks.get(key)
        held = at - (track.since if track is not None else at)
        return self._level(
            key,
            limit > 0 and queued > limit,
            at,
            since=at,
            hold_s=hold_s,
            value=queued,
            threshold=limit,
            summary=f"{queued} jobs queued, over {limit} for {_span(held)}"
            if queued > limit
            else f"{queued} jobs queued (limit {limit})",
        )

    def _swap_overhead(self, at: float, swaps: tuple[float, float]) -> list[AlertNotice]:
        pct, window_s = self._settings.swap_overhead_pct, self._settings.swap_overhead_window_s
        loading_s, busy_s = self._grow(("swap_overhead", "gpu"), at, swaps, window_s)
        judged = busy_s >= window_s * _MIN_BUSY_SHARE
        overhead = 100.0 * loading_s / busy_s if busy_s > 0 else 0.0
        return self._level(
            ("swap_overhead", "gpu"),
            pct > 0 and judged and overhead > pct,
            at,
            since=at,
            hold_s=0.0,
            value=round(overhead, 1),
            threshold=pct,
            summary=f"models loading {overhead:.0f}% of busy time over the last "
            f"{_span(window_s)} (limit {pct:g}%)",
        )

    def _backend_down(
        self, at: float, health: Mapping[str, tuple[bool, float | None]]
    ) -> list[AlertNotice]:
        hold_s = self._settings.backend_down_for_s
        notices = []
        for name, (up, since) in health.items():
            down_since = at if up or since is None else since
            notices += self._level(
                ("backend_down", name),
                hold_s > 0 and not up,
                at,
                since=down_since,
                hold_s=hold_s,
                value=None if up else round(at - down_since, 3),
                threshold=hold_s,
                summary=f"backend {name} down for {_span(at - down_since)}"
                if not up
                else f"backend {name} up again",
            )
        return notices

    def _supervision(
        self, at: float, exits: Mapping[str, tuple[int, str | None]]
    ) -> list[AlertNotice]:
        window_s = self._settings.child_restarts_window_s
        counts = {child_id: count for child_id, (count, _) in exits.items()}
        return self._in_window(
            "supervision", counts, self._settings.child_restarts, window_s, at,
            lambda child_id, recent: f"child {child_id} exited {recent:.0f} times in the last "
            f"{_span(window_s)} and was restarted (last: {exits[child_id][1]})",
        )  # fmt: skip

    def _caller_rejections(self, at: float, rejections: Mapping[str, int]) -> list[AlertNotice]:
        limit = self._settings.caller_rejections
        window_s = self._settings.caller_rejections_window_s
        seen = {s for r, s in self._series if r == "caller_rejections"}
        counts = {caller: rejections.get(caller, 0) for caller in sorted(set(rejections) | seen)}
        return self._in_window(
            "caller_rejections", counts, limit, window_s, at,
            lambda caller, recent: f"caller {caller} refused {recent:.0f} times in the last "
            f"{_span(window_s)} (limit {limit})",
        )  # fmt: skip

    def _in_window(
        self,
        rule: str,
        counts: Mapping[str, int],
        limit: int,
        window_s: float,
        at: float,
        summary: Callable[[str, float], str],
    ) -> list[AlertNotice]:
        """A rule on running counts per subject: it fires when a subject's count grew by
        ``limit`` or more within ``window_s`` (0: the rule is off)."""
        notices = []
        for subject, count in counts.items():
            (recent,) = self._grow((rule, subject), at, (float(count),), window_s)
            notices += self._level(
                (rule, subject),
                limit > 0 and recent >= limit,
                at,
                since=at,
                hold_s=0.0,
                value=int(recent),
                threshold=limit,
                summary=summary(subject, recent),
            )
        return notices

    # --- the machinery ------------------------------------------------------------------

    def _grow(
        self, key: tuple[str, str], at: float, values: tuple[float, ...], window_s: float
    ) -> tuple[float, ...]:
        """Growth of ``key``'s counters over the window. The first sample is the baseline;
        a subject that appears later starts from zero at the previous sample (a caller
        first refused since then)."""
        series = self._series.get(key)
        if series is None:
            if self._last_at is None:
                series = self._series[key] = _Series(at, values)
            else:
                series = self._series[key] = _Series(self._last_at, tuple(0.0 for _ in values))
        return series.growth(at, values, window_s)

    def _threshold(self, rule: str) -> float:
        """The figure that turns ``rule`` off when 0."""
        settings = self._settings
        return {
            "queue_depth": settings.queue_depth,
            "swap_overhead": settings.swap_overhead_pct,
            "job_preemptions": settings.job_preemptions,
            "backend_down": settings.backend_down_for_s,
            "supervision": settings.child_restarts,
            "caller_rejections": settings.caller_rejections,
        }[rule]

    def _level(
        self,
        key: tuple[str, str],
        holds: bool,
        at: float,
        *,
        since: float = 0.0,
        hold_s: float = 0.0,
        value: float | None = None,
        threshold: float | None = None,
        summary: str,
    ) -> list[AlertNotice]:
        """One observation of ``key``'s condition: the notices its state change calls for."""
        track = self._tracks.get(key)
        if not holds:
            if track is None:
                return []
            del self._tracks[key]
            if track.fired is None:
                return []
            return [_resolved(track.fired, at, summary, value)]
        if track is None:
            track = self._tracks[key] = _Track(since)
        rule, subject = key
        if track.fired is None:
            if at - track.since < hold_s:
                return []
        elif not (
            rule in _REMINDED
            and self._settings.remind_s > 0
            and at - track.fired.at >= self._settings.remind_s
        ):
            return []
        reminder = track.fired is not None
        track.fired = AlertNotice(
            rule, subject, "firing", at, track.since, summary, value, threshold, reminder
        )
        return [track.fired]


def _resolved(
    fired: AlertNotice, at: float, summary: str, value: float | None = None
) -> AlertNotice:
    """The notice that ends the alert ``fired`` started."""
    return dataclasses.replace(
        fired,
        state="resolved",
        at=at,
        summary=f"{summary}; it lasted {_span(at - fired.since)}",
        value=fired.value if value is None else value,
        reminder=False,
    )


def _span(seconds: float) -> str:
    """A duration as a person reads it: ``45s``, ``5m 3s``, ``10m``, ``2h 5m``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        big, unit, small, rest = whole // 60, "m", whole % 60, "s"
    else:
        big, unit, small, rest = whole // 3600, "h", whole % 3600 // 60, "m"
    return f"{big}{unit} {small}{rest}" if small else f"{big}{unit}"
