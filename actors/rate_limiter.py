"""The RateLimiter actor: admits or refuses work before it is stored.

It owns the per-caller token buckets and the per-caller and per-lane queue counts
(docs/architecture.md section 3); the decisions are in :mod:`actors.token_bucket`
(thread-free). The facade asks ``Admit`` before the insert, then tells ``Admitted``
(or ``ReleaseAdmission`` if the insert failed); the store's commit listener tells
``JobEnded`` for every job that reaches a terminal state, so the counts go down as
jobs end. Its snapshot counts refusals per limit and, for the alert on one caller's
sustained refusals (``actors.alert_rules``), per caller.
"""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType
from typing import Any

import structlog

from actors.runtime import ActorAddress, Clock, SupervisedActor
from actors.token_bucket import Admissions
from protocol import Lane, Limits, QueueFullError, RateLimitedError
from protocol.messages import (
    Admit,
    Admitted,
    AdmittedJobs,
    ApplyLimits,
    JobEnded,
    LimiterSnapshot,
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
        self._refused: Counter[str] = Counter()  # refusals per caller since this start

    def on_start(self) -> None:
        """Count the jobs already admitted (after a restart: every job not yet ended)
        against their callers' caps, from the store's columns: decoding each spec would
        take seconds on a deep queue (docs/benchmarks.md, "Scale")."""
        if self._store is None:
            return
        admitted: tuple[tuple[str, Lane, tuple[str, ...]], ...] = self._store.ask(AdmittedJobs())
        for caller, lane, job_ids in admitted:
            self._admissions.restore(caller, lane, job_ids)
        log.info("rate_limiter_started", admitted=sum(len(ids) for _, _, ids in admitted))

    def on_receive(self, message: Any) -> Any:
        """Dispatch on the message type; a refused Admit raises to the asker."""
        match message:
            case Admit(caller=caller, lane=lane, embedding=embedding):
                try:
                    return self._admissions.admit(
                        caller, lane, self._clock.now(), embedding=embedding
                    )
                except (RateLimitedError, QueueFullError):
                    self._refused[caller] += 1
                    raise
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
                return MappingProxyType(
                    {
                        **self._admissions.snapshot(),
                        "rejections_by_caller": MappingProxyType(dict(self._refused)),
                    }
                )
            case _:
                raise TypeError(f"RateLimiter cannot handle {type(message).__name__}")
        return None
