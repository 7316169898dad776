"""The policy sections of the configuration: plain immutable values the actors are given.

Loading them from TOML and the environment is I/O and lives in ``actors.config``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from protocol.errors import ValidationError
from protocol.spec import normalise_model_name

__all__ = [
    "ActiveHours",
    "CallerLimits",
    "Limits",
    "ResidencySettings",
    "RetryPolicy",
    "SchedulingPolicy",
    "StoreSettings",
    "backoff_delay",
]

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
    """How the arbiter orders and preempts (docs/architecture.md section 4)."""

    active_hours: ActiveHours | None = None  # None: preempt only for URGENT internal work
    max_preemptions: int = 3
    max_swap_defer_s: float = 30.0
    exec_timeout_s: float = 600.0
    # Hand a busy slot its next job ahead of time, so the GPU starts it the moment the
    # running call succeeds (the arbiter recalls it if more urgent work arrives first).
    prefetch: bool = True

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
        return backoff_delay(self.base_delay_s, self.max_delay_s, self.jitter, attempts, draw)


def backoff_delay(base_s: float, cap_s: float, jitter: float, count: int, draw: float) -> float:
    """Capped exponential back-off with jitter: ``base_s * 2**(count - 1)``, at most ``cap_s``,
    less up to ``jitter`` of it (``draw`` is uniform in [0, 1)), so waiters spread out."""
    raw = min(cap_s, base_s * float(2 ** max(0, count - 1)))
    return raw * (1 - jitter * draw)


@dataclasses.dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where and how durably jobs are kept (docs/architecture.md section 6)."""

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


@dataclasses.dataclass(frozen=True, slots=True)
class CallerLimits:
    """The admission limits that apply to one caller; 0 means "no limit" for each figure."""

    requests_per_minute: float = 60.0
    burst: int = 10
    max_queued_per_caller: int = 50
    embeddings_per_minute: float = 600.0
    embeddings_burst: int = 60

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "embeddings_per_minute"):
            _require(getattr(self, name) >= 0, f"limits.{name}", "must be 0 (no limit) or more")
        for name in ("burst", "max_queued_per_caller", "embeddings_burst"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and value >= 0,
                f"limits.{name}",
                f"must be an integer of 0 (no limit) or more, got {value!r}",
            )


_CALLER_FIELDS = (
    "requests_per_minute",
    "burst",
    "max_queued_per_caller",
    "embeddings_per_minute",
    "embeddings_burst",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What the RateLimiter admits (docs/architecture.md sections 2-3); hot-reloadable.

    The per-caller figures here are the defaults; ``callers`` maps a caller identity to
    overrides of some of them (``{"bot": {"requests_per_minute": 600}}``), resolved
    against the defaults when the Limits are built. 0 means "no limit".
    """

    requests_per_minute: float = 60.0
    burst: int = 10
    max_queued_per_caller: int = 50
    embeddings_per_minute: float = 600.0
    embeddings_burst: int = 60
    max_external_queue: int = 500
    limit_internal: bool = False
    min_retry_after_s: float = 1.0
    callers: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def off(cls) -> Limits:
        """No rate limit and no queue cap at all (trusted, in-process callers; benchmarks)."""
        return cls(
            requests_per_minute=0, max_queued_per_caller=0, embeddings_per_minute=0,
            max_external_queue=0,
        )  # fmt: skip

    def __post_init__(self) -> None:
        default = CallerLimits(**{name: getattr(self, name) for name in _CALLER_FIELDS})
        _require(
            isinstance(self.max_external_queue, int) and self.max_external_queue >= 0,
            "limits.max_external_queue",
            "must be an integer of 0 (no limit) or more",
        )
        _require(self.min_retry_after_s >= 0, "limits.min_retry_after_s", "must be 0 or more")
        _require(
            isinstance(self.limit_internal, bool), "limits.limit_internal", "must be true or false"
        )
        _require(isinstance(self.callers, Mapping), "limits.callers", "must map callers to tables")
        resolved: dict[str, CallerLimits] = {}
        for caller, overrides in self.callers.items():
            if isinstance(overrides, CallerLimits):
                resolved[caller] = overrides
                continue
            field = f"limits.callers.{caller}"
            _require(isinstance(overrides, Mapping), field, "must be a table of limits")
            for key in overrides:
                _require(key in _CALLER_FIELDS, f"{field}.{key}", "unknown limit", _CALLER_FIELDS)
            resolved[caller] = dataclasses.replace(default, **dict(overrides))
        object.__setattr__(self, "callers", MappingProxyType(resolved))

    def for_caller(self, caller: str) -> CallerLimits:
        """The limits that apply to ``caller``: its overrides, or the defaults."""
        found = self.callers.get(caller)
        if isinstance(found, CallerLimits):
            return found
        return CallerLimits(**{name: getattr(self, name) for name in _CALLER_FIELDS})


@dataclasses.dataclass(frozen=True, slots=True)
class ResidencySettings:
    """How the ResidencyTracker learns what is loaded, and which models it pins.

    ``chat_model`` and ``embedding_model`` (empty: none) are loaded at start and kept
    with ``pin_keep_alive_s`` (negative: forever, as Ollama reads it): two-slot residency.
    While the backend is down the tracker probes it (a poll) after ``probe_initial_s``,
    doubling each time up to ``probe_max_s``, less up to ``probe_jitter`` of it
    (docs/architecture.md section 13).
    """

    poll_interval_s: float = 10.0
    chat_model: str = ""
    embedding_model: str = ""
    pin_keep_alive_s: float = -1.0
    probe_initial_s: float = 1.0
    probe_max_s: float = 30.0
    probe_jitter: float = 0.2

    def __post_init__(self) -> None:
        _require(self.poll_interval_s > 0, "residency.poll_interval_s", "must be more than 0")
        _require(self.probe_initial_s > 0, "residency.probe_initial_s", "must be more than 0")
        _require(
            self.probe_max_s >= self.probe_initial_s,
            "residency.probe_max_s",
            "must be at least probe_initial_s",
        )
        _require(0 <= self.probe_jitter < 1, "residency.probe_jitter", "must be 0 or more, below 1")

    def probe_delay(self, failed_probes: int, draw: float) -> float:
        """Seconds until the next probe after ``failed_probes`` failed ones in this outage."""
        return backoff_delay(
            self.probe_initial_s, self.probe_max_s, self.probe_jitter, failed_probes + 1, draw
        )

    def pin_keep_alive(self, model: str) -> float | None:
        """The pin's keep_alive if ``model`` (any spelling Ollama accepts) is pinned, else None:
        a job for a pinned model carries it instead of its own, so no request shortens it."""
        pinned = {normalise_model_name(m) for m in self.pinned}
        return self.pin_keep_alive_s if normalise_model_name(model) in pinned else None

    @property
    def pinned(self) -> tuple[str, ...]:
        """The models to keep loaded, chat model first."""
        return tuple(m for m in (self.chat_model, self.embedding_model) if m)


def _require(ok: bool, field: str, problem: str, allowed: Any = None) -> None:
    if not ok:
        raise ValidationError(field, problem, allowed=allowed)
