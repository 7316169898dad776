"""The legal job state transitions, as data (docs/architecture.md section 5)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from protocol.enums import JobState
from protocol.errors import IllegalTransitionError

__all__ = ["LEGAL_TRANSITIONS", "check_transition", "is_legal_transition"]

_Q, _L, _R = JobState.QUEUED, JobState.LOADING, JobState.RUNNING
_S, _F, _C = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED

LEGAL_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = MappingProxyType(
    {
        _Q: frozenset({_L, _C}),
        # loading/running → queued: preemption, retry and crash recovery.
        _L: frozenset({_R, _Q, _S, _F, _C}),
        _R: frozenset({_Q, _S, _F, _C}),
        _S: frozenset(),
        _F: frozenset(),
        _C: frozenset(),
    }
)


def is_legal_transition(source: JobState, target: JobState) -> bool:
    """True when a job may move from ``source`` to ``target``."""
    return target in LEGAL_TRANSITIONS[source]


def check_transition(job_id: str, source: JobState, target: JobState) -> None:
    """Raise IllegalTransitionError unless ``source → target`` is legal."""
    if not is_legal_transition(source, target):
        raise IllegalTransitionError(job_id, source.value, target.value)
