"""The RateLimiter actor: admits or refuses work before it is stored.

It owns the per-caller token buckets and the per-caller and per-lane queue counts
(docs/architecture.md section 3); the decisions are in :mod:`actors.token_bucket`
(thread-free). The facade asks ``Admit`` before the insert, then tells ``Admitted``
(or ``ReleaseAdmission`` if the insert failed); the store's commit listener tells
``JobEnded`` for every job that reaches a terminal state, so the counts go down as
jobs end.
"""

from __future__ import annotations

from typing import Any

import structlog

from actors.runtime import ActorAddress, Clock, SupervisedActor
from actors.token_bucket import Admissions
from protocol import Job, Limits
from protocol.messages import (
    Admit,
    Admitted,
    ApplyLimits,
    JobEnded,
    LimiterSnapshot,
    LoadQueuedJobs,
    ReleaseAdmission,
)

__all__ = ["RateLimiter"]

log = structlog.get_logger(__name__)


class RateLimiter(SupervisedActor):
    """Owns the admission state; never touches the database itself (it asks the store)."""

    def __init__(self, *, limits: Limits, clock: Clock, store: ActorAddress | None = None) -> None:
        super().__init__()
        self._clock = clock
        self._store = store
        self._admissions = Admissions(limits)

    def on_start(self) -> None:
        """Count the jobs already queued (after a restart) against their callers' caps."""
        if self._store is None:
            return
        jobs: tuple[Job, ...] = self._store.ask(LoadQueuedJobs())
        for job in jobs:
            self._admissions.restore(job.id, job.spec.caller, job.spec.lane)
        log.info("rate_limiter_started", queued=len(jobs))

    def on_receive(self, message: Any) -> Any:
        """Dispatch on the message type; a refused Admit raises to the asker."""
        match message:
            case Admit(caller=caller, lane=lane, embedding=embedding):
                return self._admissions.admit(caller, lane, self._clock.now(), embedding=embedding)
            case Admitted(reservation=reservation, job_id=job_id):
                self._admissions.bind(reservation, job_id)
            case ReleaseAdmission(reservation=reservation):
                self._admissions.release(reservation)
            case JobEnded(job=job):
                run_s = (
                    job.finished_at - job.started_at
                    if job.finished_at is not None and job.started_at is not None
                    else None
                )
                self._admissions.ended(job.id, run_s)
            case ApplyLimits(limits=limits):
                self._admissions.apply(limits, self._clock.now())
            case LimiterSnapshot():
                return self._admissions.snapshot()
            case _:
                raise TypeError(f"RateLimiter cannot handle {type(message).__name__}")
        return None
