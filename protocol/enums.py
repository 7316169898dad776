"""Lanes, priorities, job kinds and states: the closed vocabularies of gpulane."""

from __future__ import annotations

import enum

from protocol.errors import ValidationError

__all__ = ["CancelReason", "JobKind", "JobState", "Lane", "Priority"]


class Lane(enum.Enum):
    """Who the work is for: the in-process bot (internal) or outside callers (external)."""

    INTERNAL = "internal"
    EXTERNAL = "external"

    @property
    def rank(self) -> int:
        """Sort rank: lower is served first (internal before external)."""
        return 0 if self is Lane.INTERNAL else 1

    @classmethod
    def parse(cls, value: Lane | str, field: str = "lane") -> Lane:
        """Accept a Lane or its name in any case; name the field when it is neither."""
        if isinstance(value, Lane):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        raise ValidationError(field, f"unknown lane {value!r}", allowed=[m.value for m in cls])


class Priority(enum.IntEnum):
    """How urgent a job is; larger values are served first."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    URGENT = 3

    @property
    def rank(self) -> int:
        """Sort rank: lower is served first (URGENT is 0)."""
        return Priority.URGENT - self

    @classmethod
    def parse(cls, value: Priority | str | int, field: str = "priority") -> Priority:
        """Accept a Priority, its name in any case, or its integer value."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            member = cls.__members__.get(value.strip().upper())
            if member is not None:
                return member
        elif isinstance(value, int) and not isinstance(value, bool) and value in set(cls):
            return cls(value)
        raise ValidationError(
            field, f"unknown priority {value!r}", allowed=[m.name.lower() for m in cls]
        )


class JobKind(enum.Enum):
    """What the backend is asked to do."""

    CHAT = "chat"
    GENERATE = "generate"


class JobState(enum.Enum):
    """Where a job is in its life (docs/architecture.md section 5)."""

    QUEUED = "queued"
    LOADING = "loading"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for the states a job never leaves."""
        return self in TERMINAL_STATES

    @property
    def is_active(self) -> bool:
        """True while a GPU slot holds the job."""
        return self in (JobState.LOADING, JobState.RUNNING)


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class CancelReason(enum.Enum):
    """Why a call or a job was cancelled."""

    USER = "user"
    CALLER_GONE = "caller_gone"
    PREEMPTED = "preempted"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
