"""What every job-store engine shares: the write messages, row decoding, and the volatile rule.

Thread-free; an engine (``_sqlite``) and the JobStore actor use these, so the rules do not
depend on which database keeps the jobs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, TypeAlias

import orjson

from protocol.enums import JobState
from protocol.job import Job, JobMetrics
from protocol.messages import InsertJob, Transition
from protocol.output import Output
from protocol.spec import JobSpec

__all__ = [
    "BatchOutcome",
    "Recovery",
    "WriteMessage",
    "given",
    "is_volatile",
    "job_from_row",
    "output_json",
    "segments_json",
    "to_json",
]

WriteMessage: TypeAlias = InsertJob | Transition
BatchOutcome: TypeAlias = Job | Exception


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
    inserts, terminal moves and moves back to queued.
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


def output_json(output: Output | None) -> str | None:
    """The ``output`` column's JSON for ``output``."""
    return None if output is None else to_json(output.to_dict())


def segments_json(segments: tuple[JobMetrics, ...]) -> str | None:
    """The ``segments`` column's JSON (NULL for none, as a job of version 1 has)."""
    return to_json([segment.to_dict() for segment in segments]) if segments else None


def job_from_row(row: Sequence[Any]) -> Job:
    """A Job from a row of the columns an engine selects (``_sqlite._COLUMNS``); the spec
    is validated again on the way out."""
    (seq, job_id, state, spec, created, updated, started, finished, not_before,
     attempts, preemptions, partial, result, error, metrics, output, segments) = row  # fmt: skip
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
    )
