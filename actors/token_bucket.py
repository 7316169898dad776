"""The RateLimiter's decisions, with no threads: token buckets and queue caps.

A caller's requests draw from a token bucket that holds ``burst`` tokens and refills
at ``requests_per_minute / 60`` per second; embeddings draw from a second bucket of
their own. A job counts against its caller's cap and the external lane's depth from
admission until the store commits its end. Every rejection is an error that names
the limit, the current figure, the maximum and a retry-after.

Time comes in as an argument (``now``), so tests drive it by hand.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from protocol import CallerLimits, Lane, Limits, QueueFullError, RateLimitedError

__all__ = ["Admissions", "TokenBucket"]

# How strongly the estimate of a job's run time follows the latest finished job.
_RUN_TIME_WEIGHT = 0.2


@dataclasses.dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``per_minute / 60`` a second; ``per_minute`` 0: no limit."""

    per_minute: float
    capacity: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, per_minute: float, burst: int, now: float) -> TokenBucket:
        """A bucket holding ``burst`` tokens (at least one)."""
        capacity = float(max(1, burst))
        return cls(per_minute, capacity, capacity, now)

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last refill, up to the capacity."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.per_minute / 60.0)
        self.updated = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 if taken, else the seconds until one is there (none taken)."""
        if self.per_minute <= 0:
            return 0.0
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) * 60.0 / self.per_minute

    def used(self) -> int:
        """Tokens missing from a full bucket, rounded up: the requests of the current burst."""
        return math.ceil(self.capacity - self.tokens)

    def reshape(self, per_minute: float, burst: int, now: float) -> None:
        """Take new limits, keeping the fill (capped by the new capacity)."""
        self.refill(now)
        self.per_minute = per_minute
        self.capacity = float(max(1, burst))
        self.tokens = min(self.tokens, self.capacity)


@dataclasses.dataclass(frozen=True, slots=True)
class _Place:
    """One admitted job's place in the counts."""

    caller: str
    lane: Lane


class Admissions:
    """Per-caller buckets and caps, per-lane depth; see the module docstring."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._requests: dict[str, TokenBucket] = {}
        self._embeddings: dict[str, TokenBucket] = {}
        self._reserved: dict[int, _Place] = {}
        self._jobs: dict[str, _Place] = {}
        self._places: dict[tuple[str, Lane], _Place] = {}  # one per (caller, lane), shared
        self._per_caller: Counter[tuple[str, Lane]] = Counter()
        self._per_lane: Counter[Lane] = Counter()
        self._reservations = itertools.count(1)
        self._avg_run_s: float | None = None
        self._rejections: Counter[str] = Counter()

    @property
    def limits(self) -> Limits:
        """The limits in force."""
        return self._limits

    def admit(self, caller: str, lane: Lane, now: float, *, embedding: bool = False) -> int:
        """Admit one request or raise; a job gets a reservation number to bind or release.

        Caps are checked before buckets, so a caller refused for a full queue keeps its
        tokens. Embeddings are not queued: they only draw from their own bucket (and
        return 0, there being nothing to bind).
        """
        limits = self._limits.for_caller(caller)
        limited = lane is Lane.EXTERNAL or self._limits.limit_internal
        if embedding:
            if limited:
                self._draw(self._embeddings, caller, limits, now, embedding=True)
            return 0
        if limited:
            self._check_caps(caller, lane, limits)
            self._draw(self._requests, caller, limits, now, embedding=False)
        reservation = next(self._reservations)
        self._add(self._reserved, reservation, self._place(caller, lane))
        return reservation

    def bind(self, reservation: int, job_id: str) -> None:
        """The reserved job was stored as ``job_id``; it counts until :meth:`ended`."""
        place = self._reserved.pop(reservation, None)
        if place is not None:
            self._jobs[job_id] = place

    def release(self, reservation: int) -> None:
        """The reserved job was never stored."""
        place = self._reserved.pop(reservation, None)
        if place is not None:
            self._drop(place)

    def restore(self, caller: str, lane: Lane, job_ids: Iterable[str]) -> None:
        """Count ``caller``'s jobs in ``lane`` admitted before this limiter started (rebuilt
        from the store); one place for them all, so a deep queue recounts in a moment."""
        place = self._place(caller, lane)
        new = [job_id for job_id in job_ids if job_id not in self._jobs]
        self._jobs.update(dict.fromkeys(new, place))
        self._per_caller[(caller, lane)] += len(new)
        self._per_lane[lane] += len(new)

    def ended(self, job_id: str, run_s: float | None) -> None:
        """``job_id`` reached a terminal state; ``run_s`` feeds the retry-after estimate."""
        place = self._jobs.pop(job_id, None)
        if place is not None:
            self._drop(place)
        if run_s is not None and run_s >= 0:
            previous = self._avg_run_s
            self._avg_run_s = (
                run_s if previous is None else previous + _RUN_TIME_WEIGHT * (run_s - previous)
            )

    def apply(self, limits: Limits, now: float) -> None:
        """New limits: buckets keep their fill; counts stay (they are facts, not limits)."""
        self._limits = limits
        for caller, bucket in self._requests.items():
            own = limits.for_caller(caller)
            bucket.reshape(own.requests_per_minute, own.burst, now)
        for caller, bucket in self._embeddings.items():
            own = limits.for_caller(caller)
            bucket.reshape(own.embeddings_per_minute, own.embeddings_burst, now)

    def queued(self, caller: str) -> int:
        """How many of ``caller``'s jobs count against its cap now."""
        return sum(self._per_caller[(caller, lane)] for lane in self._capped_lanes())

    def snapshot(self) -> Mapping[str, Any]:
        """Counts per lane and caller, and rejections per limit, as read-only mappings."""
        callers: Counter[str] = Counter()
        for (caller, _), n in self._per_caller.items():
            callers[caller] += n
        return MappingProxyType(
            {
                "queued_by_lane": MappingProxyType(
                    {lane.value: self._per_lane[lane] for lane in Lane}
                ),
                "queued_by_caller": MappingProxyType({c: n for c, n in callers.items() if n}),
                "rejections": MappingProxyType(dict(self._rejections)),
                "avg_run_s": self._avg_run_s,
            }
        )

    def _check_caps(self, caller: str, lane: Lane, limits: CallerLimits) -> None:
        mine = self.queued(caller)
        if limits.max_queued_per_caller and mine >= limits.max_queued_per_caller:
            self._rejections["queued_per_caller"] += 1
            raise QueueFullError(
                "queued_per_caller", mine, limits.max_queued_per_caller, self._queue_retry_after()
            )
        depth = self._per_lane[Lane.EXTERNAL]
        maximum = self._limits.max_external_queue
        if lane is Lane.EXTERNAL and maximum and depth >= maximum:
            self._rejections["external_queue"] += 1
            raise QueueFullError("external_queue", depth, maximum, self._queue_retry_after())

    def _draw(
        self,
        buckets: dict[str, TokenBucket],
        caller: str,
        limits: CallerLimits,
        now: float,
        *,
        embedding: bool,
    ) -> None:
        per_minute, burst = (
            (limits.embeddings_per_minute, limits.embeddings_burst)
            if embedding
            else (limits.requests_per_minute, limits.burst)
        )
        bucket = buckets.get(caller)
        if bucket is None:
            bucket = buckets[caller] = TokenBucket.full(per_minute, burst, now)
        wait = bucket.take(now)
        if wait > 0:
            name = "embeddings_per_minute" if embedding else "requests_per_minute"
            self._rejections[name] += 1
            raise RateLimitedError(name, bucket.used(), bucket.capacity, wait)

    def _queue_retry_after(self) -> float:
        """A hint: about one job's run time, when one place is likely to free up."""
        return max(self._limits.min_retry_after_s, self._avg_run_s or 0.0)

    def _capped_lanes(self) -> tuple[Lane, ...]:
        return tuple(Lane) if self._limits.limit_internal else (Lane.EXTERNAL,)

    def _place(self, caller: str, lane: Lane) -> _Place:
        """The (shared, immutable) place of ``caller``'s jobs in ``lane``; as many as the
        per-caller counts, which keep an entry for each (caller, lane) too."""
        place = self._places.get((caller, lane))
        if place is None:
            place = self._places[(caller, lane)] = _Place(caller, lane)
        return place

    def _add(self, book: dict[Any, _Place], key: Any, place: _Place) -> None:
        book[key] = place
        self._per_caller[(place.caller, place.lane)] += 1
        self._per_lane[place.lane] += 1

    def _drop(self, place: _Place) -> None:
        self._per_caller[(place.caller, place.lane)] -= 1
        self._per_lane[place.lane] -= 1
