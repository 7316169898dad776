"""The policy sections of the configuration: plain immutable values the actors are given.

Loading them from TOML and the environment is I/O and lives in ``actors.config``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from protocol.errors import ValidationError
from protocol.spec import normalise_model_name
from protocol.webhook import check_secret, parse_hosts

__all__ = [
    "ALERT_FORMATS",
    "LOCAL_BACKEND",
    "ActiveHours",
    "AlertSettings",
    "CallerLimits",
    "Limits",
    "ResidencySettings",
    "RetryPolicy",
    "SchedulingPolicy",
    "StoreSettings",
    "WebhookSettings",
    "backoff_delay",
]

#: The one backend's name when ``[backend]`` configures it (docs/configuration.md).
LOCAL_BACKEND = "local"

_POSTGRES_SCHEMES = ("postgresql", "postgres")
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
    """Where and how durably jobs are kept, and for how long (docs/architecture.md section 6).

    Every ``prune_interval_s`` the store deletes terminal jobs that finished more than
    ``prune_after_s`` ago, ``prune_batch`` at a time, one batch per turn of its mailbox
    (docs/operations.md, "Pruning"). ``url`` empty: SQLite at ``path``; a ``postgresql://``
    (or ``postgres://``) URL: that PostgreSQL database, and ``path`` and ``synchronous``
    do not apply (docs/architecture.md section 14).
    """

    path: str = "gpulane.sqlite3"
    url: str = ""
    synchronous: str = "FULL"
    prune_after_s: float = 7 * 24 * 3600.0
    max_batch: int = 1000
    prune_interval_s: float = 3600.0
    prune_batch: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "synchronous", str(self.synchronous).upper())
        _require(
            self.synchronous in ("FULL", "NORMAL"),
            "store.synchronous",
            f"unknown mode {self.synchronous!r}",
            allowed=("FULL", "NORMAL"),
        )
        _require(isinstance(self.url, str), "store.url", f"must be a string, got {self.url!r}")
        scheme, found, _ = self.url.partition("://")
        _require(
            not self.url or (bool(found) and scheme.lower() in _POSTGRES_SCHEMES),
            "store.url",
            (f"unknown kind of database {scheme!r}" if found else "is not a URL")
            + " (the value is not repeated: it may hold a password)",
            allowed="empty (SQLite at store.path) or a postgresql:// or postgres:// URL",
        )
        for name in ("prune_after_s", "prune_interval_s"):
            seconds = getattr(self, name)
            _require(
                isinstance(seconds, (int, float))
                and not isinstance(seconds, bool)
                and 0 < seconds < math.inf,
                f"store.{name}",
                f"must be a number of seconds more than 0, got {seconds!r}",
            )
        for name in ("max_batch", "prune_batch"):
            count = getattr(self, name)
            _require(
                isinstance(count, int) and not isinstance(count, bool) and count >= 1,
                f"store.{name}",
                f"must be an integer of 1 or more, got {count!r}",
            )


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
    (docs/architecture.md section 13). A backend with no configured ``models`` has its
    catalog (the models it can run) read again every ``catalog_interval_s``.
    """

    poll_interval_s: float = 10.0
    chat_model: str = ""
    embedding_model: str = ""
    pin_keep_alive_s: float = -1.0
    probe_initial_s: float = 1.0
    probe_max_s: float = 30.0
    probe_jitter: float = 0.2
    catalog_interval_s: float = 60.0

    def __post_init__(self) -> None:
        _require(self.poll_interval_s > 0, "residency.poll_interval_s", "must be more than 0")
        _require(self.catalog_interval_s > 0, "residency.catalog_interval_s", "must be more than 0")
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


#: How an alert webhook's body is written (docs/operations.md, "Alerts").
ALERT_FORMATS = ("json", "slack", "discord")


@dataclasses.dataclass(frozen=True, slots=True)
class AlertSettings:
    """Debounced alerts (docs/operations.md, "Alerts"); hot-reloadable.

    Each rule's threshold of 0 turns that rule off. The Alerter samples the lane every
    ``sample_s``; an alert of a lasting condition still firing is announced again after
    ``remind_s`` (0: never). Notices go to the log and, with a ``webhook_url``, are posted
    there as ``webhook_format`` says, each tried up to ``webhook_attempts`` times.
    """

    sample_s: float = 5.0
    remind_s: float = 3600.0
    queue_depth: int = 200  # more queued jobs than this ...
    queue_depth_for_s: float = 300.0  # ... for this long
    swap_overhead_pct: float = 50.0  # time loading models, in percent of busy time ...
    swap_overhead_window_s: float = 900.0  # ... over this trailing window
    job_preemptions: int = 3  # a job preempted this many times
    backend_down_for_s: float = 30.0  # the backend down this long
    child_restarts: int = 1  # a child of the tree exiting this many times ...
    child_restarts_window_s: float = 600.0  # ... within this window
    caller_rejections: int = 30  # one caller refused admission this many times ...
    caller_rejections_window_s: float = 60.0  # ... within this window
    webhook_url: str = ""
    webhook_format: str = "json"
    webhook_timeout_s: float = 5.0
    webhook_attempts: int = 3

    def __post_init__(self) -> None:
        for name in (
            "sample_s",
            "webhook_timeout_s",
            "swap_overhead_window_s",
            "child_restarts_window_s",
            "caller_rejections_window_s",
        ):
            value = getattr(self, name)
            _require(
                _is_seconds(value, above=0),
                f"alerts.{name}",
                f"must be a number of seconds above 0, not {value!r}",
            )
        for name in ("remind_s", "queue_depth_for_s", "backend_down_for_s"):
            value = getattr(self, name)
            _require(
                _is_seconds(value),
                f"alerts.{name}",
                f"must be a number of seconds, 0 or more, not {value!r}",
            )
        for name in ("queue_depth", "job_preemptions", "child_restarts", "caller_rejections"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"alerts.{name}",
                f"must be an integer of 0 (rule off) or more, not {value!r}",
            )
        pct = self.swap_overhead_pct
        _require(
            _is_seconds(pct) and pct <= 100,
            "alerts.swap_overhead_pct",
            f"must be a percentage from 0 (rule off) to 100, not {pct!r}",
        )
        attempts = self.webhook_attempts
        _require(
            isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 1,
            "alerts.webhook_attempts",
            f"must be an integer of 1 or more, not {attempts!r}",
        )
        url = self.webhook_url
        _require(
            isinstance(url, str) and (not url or url.startswith(("http://", "https://"))),
            "alerts.webhook_url",
            f"not an http(s) URL: {url!r}",
            allowed="an http:// or https:// URL, or empty for no webhook",
        )
        _require(
            self.webhook_format in ALERT_FORMATS,
            "alerts.webhook_format",
            f"unknown format {self.webhook_format!r}",
            allowed=ALERT_FORMATS,
        )


def _is_seconds(value: Any, *, above: float | None = None) -> bool:
    """True for a finite number (not a bool) of at least 0, or above ``above`` if given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value):
        return False
    return value > above if above is not None else value >= 0


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Completion webhooks (docs/operations.md, "Webhooks"): how a delivery is retried, and
    the signer of jobs no API key stands for (in-process jobs, an open gateway's).

    A failed post is tried again after ``base_delay_s``, doubling up to ``max_delay_s``,
    less up to ``jitter`` of it, for ``retry_for_s`` after the job ended; each post waits
    ``timeout_s`` for an answer, and ``workers`` posts run at once. ``secret`` signs, and
    ``allowed_hosts`` limits, the jobs of callers without an API key of their own.
    """

    secret: str = ""
    allowed_hosts: tuple[str, ...] = ()
    retry_for_s: float = 24 * 3600.0
    base_delay_s: float = 5.0
    max_delay_s: float = 600.0
    jitter: float = 0.5
    timeout_s: float = 10.0
    workers: int = 4

    def __post_init__(self) -> None:
        hosts = parse_hosts("webhooks.allowed_hosts", self.allowed_hosts)
        object.__setattr__(self, "allowed_hosts", hosts)
        check_secret("webhooks.secret", self.secret, needed=bool(hosts))
        _require(self.retry_for_s >= 0, "webhooks.retry_for_s", "must be 0 or more")
        _require(self.base_delay_s > 0, "webhooks.base_delay_s", "must be more than 0")
        _require(
            self.max_delay_s >= self.base_delay_s,
            "webhooks.max_delay_s",
            "must be at least base_delay_s",
        )
        _require(0 <= self.jitter <= 1, "webhooks.jitter", "must be between 0 and 1")
        _require(self.timeout_s > 0, "webhooks.timeout_s", "must be more than 0")
        _require(
            isinstance(self.workers, int) and self.workers >= 1,
            "webhooks.workers",
            f"must be an integer of 1 or more, got {self.workers!r}",
        )

    def retry_delay(self, attempts: int, draw: float) -> float:
        """Seconds from a delivery's ``attempts``-th failed post to its next one."""
        return backoff_delay(self.base_delay_s, self.max_delay_s, self.jitter, attempts, draw)


def _require(ok: bool, field: str, problem: str, allowed: Any = None) -> None:
    if not ok:
        raise ValidationError(field, problem, allowed=allowed)
