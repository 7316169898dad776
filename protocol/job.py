"""A job as the store keeps it: the spec plus everything that happened to it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from protocol.enums import JobState
from protocol.output import Answer, Output
from protocol.spec import JobSpec
from protocol.webhook import WebhookStatus

__all__ = ["Job", "JobMetrics"]


@dataclasses.dataclass(frozen=True, slots=True)
class JobMetrics:
    """What the backend reported for a call (or, summed, for a job's calls), in nanoseconds
    as Ollama reports them."""

    load_duration_ns: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration_ns: int = 0
    eval_count: int = 0
    eval_duration_ns: int = 0
    total_duration_ns: int = 0

    def to_dict(self) -> dict[str, int]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def total(cls, segments: Iterable[JobMetrics]) -> JobMetrics:
        """The field-by-field sum of ``segments``: a job's usage over all its calls."""
        sums = dict.fromkeys((f.name for f in dataclasses.fields(cls)), 0)
        for segment in segments:
            for name in sums:
                sums[name] += getattr(segment, name)
        return cls(**sums)


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One durable unit of work. Times are seconds since the epoch on the system clock.

    ``result`` is the answer's text and ``output`` the rest of it (thinking, tool calls,
    logprobs, done reason, context), both set when the job succeeds. ``partial_output`` is
    the text a preempted or retried job has produced so far; ``segments`` holds the metrics
    of each call whose output is part of the answer, and ``metrics`` their sum
    (docs/architecture.md section 3, "Preempt"). ``webhook`` is the delivery of an ended
    job's webhook as the store's outbox has it (None before the job ends, or without one).
    ``backend`` and ``slot`` say where the job's last call ran (set by the slot's move to
    loading; None for a job that never ran on a GPU slot).
    """

    id: str
    seq: int
    spec: JobSpec
    state: JobState
    created_at: float
    updated_at: float
    attempts: int = 0
    preemptions: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float | None = None
    partial_output: str = ""
    result: str | None = None
    error: str | None = None
    metrics: JobMetrics | None = None
    output: Output | None = None
    segments: tuple[JobMetrics, ...] = ()
    webhook: WebhookStatus | None = None
    backend: str | None = None
    slot: str | None = None

    def replace(self, **changes: Any) -> Job:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def answer(self) -> Answer | None:
        """The answer (its text, with the output's other parts), once the job has one."""
        if self.result is None:
            return None
        return Answer(self.result, self.output)

    @property
    def wait_seconds(self) -> float | None:
        """Time from creation to the last start, once started."""
        return None if self.started_at is None else self.started_at - self.created_at

    @property
    def run_seconds(self) -> float | None:
        """Time from the last start to the end, once finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by the gateway and the CLI); ``webhook`` only for a job
        that names one (``waiting`` until it ends)."""
        out = {
            "id": self.id,
            "seq": self.seq,
            "spec": self.spec.to_dict(),
            "state": self.state.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attempts": self.attempts,
            "preemptions": self.preemptions,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "not_before": self.not_before,
            "partial_output": self.partial_output,
            "result": self.result,
            "error": self.error,
            "metrics": None if self.metrics is None else self.metrics.to_dict(),
            "output": None if self.output is None else self.output.to_dict(),
            "segments": [segment.to_dict() for segment in self.segments],
            "backend": self.backend,
            "slot": self.slot,
        }
        if self.spec.webhook is not None:
            out["webhook"] = (self.webhook or WebhookStatus(self.spec.webhook)).to_dict()
        return out
