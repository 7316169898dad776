"""A job as the store keeps it: the spec plus everything that happened to it."""

from __future__ import annotations

import dataclasses
from typing import Any

from protocol.enums import JobState
from protocol.spec import JobSpec

__all__ = ["Job", "JobMetrics"]


@dataclasses.dataclass(frozen=True, slots=True)
class JobMetrics:
    """What the backend reported for the last call, in nanoseconds as Ollama reports them."""

    load_duration_ns: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration_ns: int = 0
    eval_count: int = 0
    eval_duration_ns: int = 0
    total_duration_ns: int = 0

    def to_dict(self) -> dict[str, int]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One durable unit of work. Times are seconds since the epoch on the system clock."""

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

    def replace(self, **changes: Any) -> Job:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

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
        """A JSON-ready dict (used by the gateway and the CLI)."""
        return {
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
        }
