"""The messages of the actors that watch the lane from beside it: the Alerter and the
WebhookDelivery actor. Re-exported by ``protocol.messages``, where every actor's
messages are named."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from protocol.config import AlertSettings
from protocol.job import Job
from protocol.webhook import WebhookAttempt

__all__ = [
    "ApplyAlerts",
    "LaneSampled",
    "PreemptionsCommitted",
    "SampleLane",
    "WebhookAttempted",
    "WebhookDue",
    "WebhooksFound",
]


# --- Alerter --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SampleLane:
    """The Alerter's timer: read the lane's state now."""


@dataclasses.dataclass(frozen=True, slots=True)
class LaneSampled:
    """The Alerter's worker read the lane's state at ``at``: the parts of ``GpuLane.status()``
    the alert rules watch, as read-only mappings; a part it could not read is left out."""

    at: float
    status: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class PreemptionsCommitted:
    """The store committed ``job``, which was preempted at least ``alerts.job_preemptions``
    times (told by the commit listener, so the Alerter sees it queued again and ending)."""

    job: Job


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyAlerts:
    """New alert settings: thresholds, sampling, the webhook; alerts in progress are kept."""

    settings: AlertSettings


# --- WebhookDelivery ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookDue:
    """The delivery of job ``seq`` is due: its job just ended (the commit listener) or its
    retry's time came (a timer)."""

    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class WebhooksFound:
    """The delivery actor's worker read the outbox at start: (sequence number, when due)."""

    due: tuple[tuple[int, float], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookAttempted:
    """A worker posted the delivery of job ``seq`` (``attempt``), its ``attempts``-th, for a
    job that ended at ``created_at``; ``attempt`` None: it was not pending, nothing posted."""

    seq: int
    attempt: WebhookAttempt | None
    created_at: float = 0.0
    attempts: int = 0
