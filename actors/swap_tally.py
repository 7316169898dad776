"""The swap tally: model swaps, the time they spent loading, and the time slots were busy.

A swap is a change of the resident set: a model that was not resident became resident
(docs/architecture.md section 2). The ResidencyTracker, which owns that set, tells the
tally each one; the slots' calls tell it their run time. Both come with the lane
clock's time, so the tally holds no clock, thread or actor of its own and is read as a
snapshot: the totals since start, the overhead ratio (time loading over time busy, as
donna's GPU tracker reports it), the swaps in the last window scaled to an hour, and a
load-time histogram per model for ``gpulane_model_load_seconds``.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["LOAD_BUCKETS", "SwapTally", "total_of"]

# Upper bounds (seconds) of the load-time histogram; the gateway's time histograms use
# them too. The +Inf bucket is the count.
LOAD_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip

_HOUR_S = 3600.0


@dataclasses.dataclass
class _Loads:
    """One model's swaps: how many, their summed load time, and a count per bucket."""

    count: int = 0
    sum_s: float = 0.0
    per_bucket: list[int] = dataclasses.field(default_factory=lambda: [0] * len(LOAD_BUCKETS))

    def add(self, load_s: float) -> None:
        self.count += 1
        self.sum_s += load_s
        index = bisect.bisect_left(LOAD_BUCKETS, load_s)  # the first bound >= load_s
        if index < len(LOAD_BUCKETS):
            self.per_bucket[index] += 1

    def view(self) -> Mapping[str, Any]:
        cumulative, running = [], 0
        for bound, n in zip(LOAD_BUCKETS, self.per_bucket, strict=True):
            running += n
            cumulative.append((float(bound), running))
        return MappingProxyType(
            {"count": self.count, "sum_s": self.sum_s, "buckets": tuple(cumulative)}
        )


class SwapTally:
    """Counts swaps (a model that was not resident became resident), their load time, and
    slot busy time. ``window_s`` is the span ``swaps_per_hour`` looks back over."""

    def __init__(self, window_s: float = _HOUR_S) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(
                f"window_s must be a finite number of seconds above 0, not {window_s!r}"
            )
        self._window_s = window_s
        self._swaps = 0
        self._loading_s = 0.0
        self._busy_s = 0.0
        self._recent: collections.deque[float] = collections.deque()  # sorted swap times
        self._by_model: dict[str, _Loads] = {}

    def swapped(self, model_key: str, load_s: float, at: float) -> None:
        """One swap of ``model_key`` at ``at`` (lane clock) that took ``load_s`` seconds to
        load (0.0 when the backend did not say)."""
        _check_seconds("load_s", load_s)
        self._swaps += 1
        self._loading_s += load_s
        self._by_model.setdefault(model_key, _Loads()).add(load_s)
        if not self._recent or at >= self._recent[-1]:
            self._recent.append(at)
        else:  # the wall clock stepped back: keep the times in order
            bisect.insort(self._recent, at)
        self._forget_before(self._recent[-1] - self._window_s)

    def busy(self, seconds: float) -> None:
        """A slot ran a call for ``seconds`` (any outcome: loading counts as busy too)."""
        _check_seconds("seconds", seconds)
        self._busy_s += seconds

    def snapshot(self, now: float) -> Mapping[str, Any]:
        """The figures at ``now`` (lane clock), as a read-only mapping."""
        start = now - self._window_s
        self._forget_before(start)
        in_window = len(self._recent) - bisect.bisect_right(self._recent, start)
        return MappingProxyType(
            {
                "swaps": self._swaps,
                "loading_s": self._loading_s,
                "busy_s": self._busy_s,
                "overhead_ratio": self._loading_s / self._busy_s if self._busy_s > 0 else None,
                "swaps_per_hour": in_window * _HOUR_S / self._window_s,
                "by_model": MappingProxyType(
                    {key: loads.view() for key, loads in sorted(self._by_model.items())}
                ),
            }
        )

    def _forget_before(self, start: float) -> None:
        """Drop the swap times at or before ``start``: memory holds one window at most."""
        while self._recent and self._recent[0] <= start:
            self._recent.popleft()


def total_of(snapshots: Iterable[Mapping[str, Any]]) -> Mapping[str, Any]:
    """Several tallies' snapshots (one per backend) as one, with the same keys: counts,
    times and the per-model histograms summed, the overhead ratio of the sums."""
    swaps, swaps_per_hour, loading_s, busy_s = 0, 0.0, 0.0, 0.0
    by_model: dict[str, tuple[int, float, list[int]]] = {}
    for snapshot in snapshots:
        swaps += snapshot["swaps"]
        swaps_per_hour += snapshot["swaps_per_hour"]
        loading_s += snapshot["loading_s"]
        busy_s += snapshot["busy_s"]
        for key, loads in snapshot["by_model"].items():
            count, sum_s, cumulative = by_model.get(key, (0, 0.0, [0] * len(LOAD_BUCKETS)))
            added = [n for _, n in loads["buckets"]]
            by_model[key] = (
                count + loads["count"],
                sum_s + loads["sum_s"],
                [a + b for a, b in zip(cumulative, added, strict=True)],
            )
    return MappingProxyType(
        {
            "swaps": swaps,
            "loading_s": loading_s,
            "busy_s": busy_s,
            "overhead_ratio": loading_s / busy_s if busy_s > 0 else None,
            "swaps_per_hour": swaps_per_hour,
            "by_model": MappingProxyType(
                {
                    key: MappingProxyType(
                        {
                            "count": count,
                            "sum_s": sum_s,
                            "buckets": tuple(
                                (float(bound), n)
                                for bound, n in zip(LOAD_BUCKETS, cumulative, strict=True)
                            ),
                        }
                    )
                    for key, (count, sum_s, cumulative) in sorted(by_model.items())
                }
            ),
        }
    )


def _check_seconds(field: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{field} must be a finite number of seconds, 0 or more, not {value!r}")
