"""What every job-store engine shares: the write messages, row decoding, and the volatile rule.

Thread-free; an engine (``_sqlite``, ``_postgres``) and the JobStore actor use these, so
the rules do not depend on which database keeps the jobs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias

import orjson

from protocol.enums import JobState
from protocol.job import Job, JobMetrics
from protocol.messages import InsertJob, Transition
from protocol.output import Output
from protocol.spec import JobSpec

__all__ = [
    "BatchOutcome",
    "Connection",
    "Recovery",
    "WriteMessage",
    "given",
    "is_volatile",
    "job_from_row",
    "moved",
    "to_json",
    "update_params",
]

WriteMessage: TypeAlias = InsertJob | Transition
BatchOutcome: TypeAlias = Job | Exception


class Connection(Protocol):
    """What the shared code needs of a connection: sqlite3's ``execute`` and
    ``in_transaction`` (the PostgreSQL engine adapts psycopg's to it)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Recovery:
    """What start-up recovery did: jobs put back in the queue and jobs queued in all."""

    requeued: int
    queued: int


def to_json(value: Any) -> str:
    """Compact JSON with text as is. orjson, because encoding each new job's spec was a
    fifth of the store thread's time with the standard library (docs/benchmarks.md)."""
    return orjson.dumps(value).decode()


_VOLATILE_TARGETS = frozenset({JobState.LOADING, JobState.RUNNING})


def is_volatile(message: WriteMessage) -> bool:
    """True for a write that need not survive a crash: a bare move into loading or running.

    Recovery on start puts loading and running jobs back to queued without charging an
    attempt (docs/architecture.md section 6), so losing such a move changes nothing that
    recovery would not: the job is queued either way. A move that also records
    something (an attempt, a preemption, output, an error, metrics) is durable, as are
    inserts, terminal moves and moves back to queued. Where the job runs (``backend``,
    ``slot``) rides along without making the move durable: a job whose move to loading is
    lost is queued again and told where it runs on its next move to loading, and the
    next durable commit syncs the move with everything before it.
    """
    return (
        isinstance(message, Transition)
        and message.target in _VOLATILE_TARGETS
        and not message.charge_attempt
        and not message.count_preemption
        and message.partial_output is None
        and message.error is None
        and message.metrics is None
        and message.output is None
        and message.segments is None
    )


def given(value: Any, current: Any) -> Any:
    """``value`` when the message carries one, else what the job has now."""
    return current if value is None else value


def moved(job: Job, message: Transition, now: float) -> Job:
    """``job`` after ``message`` at ``now`` (the engine checked that the move is legal).

    Timestamps: ``started_at`` is set when a job enters loading or running from queued;
    ``finished_at`` when it enters a terminal state. ``not_before`` is replaced on every
    move (None clears it). ``partial_output``, ``result``, ``error``, ``metrics``,
    ``output``, ``segments``, ``backend`` and ``slot`` are replaced when given and kept
    otherwise.
    """
    target = message.target
    return job.replace(
        state=target,
        updated_at=now,
        started_at=now if target.is_active and not job.state.is_active else job.started_at,
        finished_at=now if target.is_terminal else job.finished_at,
        not_before=message.not_before,
        attempts=job.attempts + int(message.charge_attempt),
        preemptions=job.preemptions + int(message.count_preemption),
        partial_output=given(message.partial_output, job.partial_output),
        result=given(message.result, job.result),
        error=given(message.error, job.error),
        metrics=given(message.metrics, job.metrics),
        output=given(message.output, job.output),
        segments=given(message.segments, job.segments),
        backend=given(message.backend, job.backend),
        slot=given(message.slot, job.slot),
    )


def update_params(job: Job) -> tuple[Any, ...]:
    """The parameters of an engine's UPDATE of ``job``'s row (``_base.UPDATE``), in
    order; the row's key (``seq``) last."""
    return (
        job.state.value,
        job.updated_at,
        job.started_at,
        job.finished_at,
        job.not_before,
        job.attempts,
        job.preemptions,
        job.partial_output,
        job.result,
        job.error,
        None if job.metrics is None else to_json(job.metrics.to_dict()),
        None if job.output is None else to_json(job.output.to_dict()),
        to_json([segment.to_dict() for segment in job.segments]) if job.segments else None,
        job.backend,
        job.slot,
        job.seq,
    )


def job_from_row(row: Sequence[Any]) -> Job:
    """A Job from a row of the columns an engine selects (``_base.COLUMNS``); the spec
    is validated again on the way out. ``segments`` is NULL for none, as on a job of
    version 1."""
    (seq, job_id, state, spec, created, updated, started, finished, not_before, attempts,
     preemptions, partial, result, error, metrics, output, segments, backend, slot,
     ) = row  # fmt: skip
    return Job(
        id=job_id,
        seq=seq,
        spec=JobSpec.from_dict(json.loads(spec)),
        state=JobState(state),
        created_at=created,
        updated_at=updated,
        attempts=attempts,
        preemptions=preemptions,
        started_at=started,
        finished_at=finished,
        not_before=not_before,
        partial_output=partial,
        result=result,
        error=error,
        metrics=None if metrics is None else JobMetrics(**json.loads(metrics)),
        output=None if output is None else Output.from_dict(json.loads(output)),
        segments=()
        if segments is None
        else tuple(JobMetrics(**segment) for segment in json.loads(segments)),
        backend=backend,
        slot=slot,
    )
