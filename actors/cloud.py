"""Cloud fallback: when a job that allows it should leave the local queue for a cloud slot.

Thread-free, like :mod:`actors.scheduling`; the arbiter, which knows the queue depth
and the slots' state, feeds it (docs/architecture.md section 3, "Cloud fallback"). A job with
``allow_cloud`` goes to the cloud when the local backend is down, or when the time it
has waited plus the local wait still ahead of it would exceed ``max_local_wait_s``.

The wait ahead is an estimate: the jobs that will run before it (the busy local slots
plus every queued job of an equal or more important class, an upper bound) times the
mean local run time, shared among the local slots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from protocol import Job, Lane, Priority, ValidationError

__all__ = [
    "ApplyCloudPolicy",
    "CloudPolicy",
    "LocalOutlook",
    "cloud_deadline",
    "queued_ahead",
    "send_to_cloud",
]


@dataclasses.dataclass(frozen=True, slots=True)
class CloudPolicy:
    """The bound on the local wait, and the run time assumed before any job has finished."""

    max_local_wait_s: float = 60.0
    assumed_run_s: float = 20.0

    def __post_init__(self) -> None:
        if self.max_local_wait_s < 0:
            raise ValidationError("cloud.max_local_wait_s", "must be 0 or more")
        if self.assumed_run_s <= 0:
            raise ValidationError("cloud.assumed_run_s", "must be more than 0")


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyCloudPolicy:
    """New routing bounds for the arbiter (a reload of ``[cloud]``); queued jobs are kept.

    A message beside its value rather than in ``protocol.messages``, which cannot name
    CloudPolicy (protocol imports nothing from actors)."""

    policy: CloudPolicy


@dataclasses.dataclass(frozen=True, slots=True)
class LocalOutlook:
    """What the arbiter sees of the local GPUs when it considers one job."""

    jobs_ahead: int  # busy local slots plus queued jobs that run before this one
    local_slots: int
    mean_run_s: float
    down: bool = False

    @property
    def expected_wait_s(self) -> float:
        """Seconds until a local slot would start the job."""
        return self.jobs_ahead * self.mean_run_s / max(1, self.local_slots)


def queued_ahead(job: Job, depths: Mapping[tuple[Lane, Priority], int]) -> int:
    """Queued jobs of an equal or more important class than ``job`` (an upper bound on
    those that run before it), not counting ``job`` itself; ``depths`` per lane and
    priority, as the ReadyQueue counts them."""
    rank = (job.spec.lane.rank, job.spec.priority.rank)
    same_or_better = (n for (lane, prio), n in depths.items() if (lane.rank, prio.rank) <= rank)
    return sum(same_or_better) - 1


def send_to_cloud(job: Job, now: float, local: LocalOutlook, policy: CloudPolicy) -> bool:
    """True if ``job`` should run on a cloud slot now rather than wait for a local one."""
    if not job.spec.allow_cloud:
        return False
    if local.down:
        return True
    return (now - job.created_at) + local.expected_wait_s > policy.max_local_wait_s


def cloud_deadline(job: Job, local: LocalOutlook, policy: CloudPolicy) -> float | None:
    """The moment ``job`` starts to qualify for the cloud if nothing changes (None: never)."""
    if not job.spec.allow_cloud:
        return None
    return job.created_at + policy.max_local_wait_s - local.expected_wait_s
