"""The policy sections of the configuration: plain immutable values the actors are given.

Loading them from TOML and the environment is I/O and lives in ``actors.config``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

from protocol.errors import ValidationError

__all__ = ["ActiveHours", "RetryPolicy", "SchedulingPolicy", "StoreSettings"]

_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclasses.dataclass(frozen=True, slots=True)
class ActiveHours:
    """A daily local-time window, e.g. ``08:00-20:00``; it may wrap past midnight."""

    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, text: str, field: str = "scheduling.active_hours") -> ActiveHours:
        """Parse ``HH:MM-HH:MM``."""
        parts = text.split("-") if isinstance(text, str) else []
        if len(parts) != 2 or not all(_HHMM.match(p.strip()) for p in parts):
            raise ValidationError(
                field, f"bad window {text!r}", allowed="'HH:MM-HH:MM', e.g. '08:00-20:00'"
            )
        start, end = (dt.time.fromisoformat(p.strip().zfill(5)) for p in parts)
        return cls(start, end)

    def contains(self, moment: dt.time) -> bool:
        """True when ``moment`` falls inside the window."""
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulingPolicy:
    """How the arbiter orders and preempts (ARCHITECTURE.md section 4)."""

    active_hours: ActiveHours | None = None  # None: preempt only for URGENT internal work
    max_preemptions: int = 3
    max_swap_defer_s: float = 30.0
    exec_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        _require(self.max_preemptions >= 0, "scheduling.max_preemptions", "must be 0 or more")
        _require(self.max_swap_defer_s >= 0, "scheduling.max_swap_defer_s", "must be 0 or more")
        _require(self.exec_timeout_s > 0, "scheduling.exec_timeout_s", "must be more than 0")

    def in_active_hours(self, epoch_seconds: float) -> bool:
        """True when preemption for ordinary internal work is on at this moment (local time)."""
        if self.active_hours is None:
            return False
        return self.active_hours.contains(dt.datetime.fromtimestamp(epoch_seconds).time())


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off with jitter for transient backend failures."""

    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    jitter: float = 0.5  # fraction of the delay drawn at random, 0 to 1

    def __post_init__(self) -> None:
        _require(self.base_delay_s >= 0, "retry.base_delay_s", "must be 0 or more")
        _require(
            self.max_delay_s >= self.base_delay_s,
            "retry.max_delay_s",
            "must be at least base_delay_s",
        )
        _require(0 <= self.jitter <= 1, "retry.jitter", "must be between 0 and 1")

    def delay(self, attempts: int, draw: float) -> float:
        """Seconds to wait before attempt ``attempts + 1``; ``draw`` is uniform in [0, 1)."""
        raw = min(self.max_delay_s, self.base_delay_s * float(2 ** max(0, attempts - 1)))
        return raw * (1 - self.jitter * draw)


@dataclasses.dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where and how durably jobs are kept (ARCHITECTURE.md section 6)."""

    path: str = "gpulane.sqlite3"
    synchronous: str = "FULL"
    prune_after_s: float = 7 * 24 * 3600.0
    max_batch: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "synchronous", str(self.synchronous).upper())
        _require(
            self.synchronous in ("FULL", "NORMAL"),
            "store.synchronous",
            f"unknown mode {self.synchronous!r}",
            allowed=("FULL", "NORMAL"),
        )
        _require(self.prune_after_s > 0, "store.prune_after_s", "must be more than 0")
        _require(self.max_batch >= 1, "store.max_batch", "must be 1 or more")


def _require(ok: bool, field: str, problem: str, allowed: Any = None) -> None:
    if not ok:
        raise ValidationError(field, problem, allowed=allowed)
