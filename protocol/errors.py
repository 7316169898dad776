"""The errors gpulane raises; each says what went wrong in words a caller can act on."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BackendError",
    "GpulaneError",
    "IllegalTransitionError",
    "JobCancelledError",
    "JobFailedError",
    "JobNotFoundError",
    "QueueFullError",
    "RateLimitedError",
    "StoreError",
    "SystemStoppedError",
    "ValidationError",
]


class GpulaneError(Exception):
    """Base of every error gpulane raises on purpose."""


class ValidationError(GpulaneError, ValueError):
    """A field of a request is wrong: names the field, the problem and what is allowed."""

    def __init__(self, field: str, problem: str, allowed: Sequence[str] | str | None = None):
        self.field = field
        self.problem = problem
        self.allowed: tuple[str, ...] | str | None = (
            tuple(allowed) if allowed is not None and not isinstance(allowed, str) else allowed
        )
        text = f"{field}: {problem}"
        if isinstance(self.allowed, tuple):
            text += f" (allowed: {', '.join(self.allowed)})"
        elif self.allowed:
            text += f" (allowed: {self.allowed})"
        super().__init__(text)


class QueueFullError(GpulaneError):
    """A queue cap was reached; try again after ``retry_after`` seconds."""

    def __init__(self, limit: str, current: int, maximum: int, retry_after: float):
        self.limit = limit
        self.current = current
        self.maximum = maximum
        self.retry_after = retry_after
        super().__init__(
            f"{limit} is full: {current} of {maximum} queued; retry after {retry_after:.1f}s"
        )


class RateLimitedError(GpulaneError):
    """A rate limit was hit; ``retry_after`` seconds until the next request is admitted."""

    def __init__(self, limit: str, current: float, maximum: float, retry_after: float):
        self.limit = limit
        self.current = current
        self.maximum = maximum
        self.retry_after = retry_after
        super().__init__(
            f"{limit} exceeded: {current:g} of {maximum:g} used; retry after {retry_after:.1f}s"
        )


class JobFailedError(GpulaneError):
    """The job ended in ``failed``; ``error`` is the last backend error."""

    def __init__(self, job_id: str, error: str, attempts: int):
        self.job_id = job_id
        self.error = error
        self.attempts = attempts
        super().__init__(f"job {job_id} failed after {attempts} attempt(s): {error}")


class JobCancelledError(GpulaneError):
    """The job ended in ``cancelled``."""

    def __init__(self, job_id: str, reason: str):
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id} was cancelled ({reason})")


class JobNotFoundError(GpulaneError, KeyError):
    """No job has that id or sequence number."""

    def __init__(self, key: str | int):
        self.key = key
        super().__init__(f"no job {key!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class BackendError(GpulaneError):
    """A backend call failed. ``transient`` errors are retried; permanent ones fail the job.

    ``outage`` marks a failure that belongs to the backend, not to the request: the
    server could not be reached, dropped the connection, or said it is busy. Before any
    output it charges the job no attempt; the backend is marked down instead
    (docs/architecture.md section 13). An outage is always transient.
    """

    def __init__(
        self, message: str, *, transient: bool, status: int | None = None, outage: bool = False
    ):
        self.message = message
        self.transient = transient or outage
        self.status = status
        self.outage = outage
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_backend_error, (self.message, self.transient, self.status, self.outage))


def _rebuild_backend_error(
    message: str, transient: bool, status: int | None, outage: bool
) -> BackendError:
    return BackendError(message, transient=transient, status=status, outage=outage)


class IllegalTransitionError(GpulaneError):
    """The store refused a state change that the job lifecycle does not allow."""

    def __init__(self, job_id: str, source: str, target: str):
        self.job_id = job_id
        self.source = source
        self.target = target
        super().__init__(f"job {job_id}: illegal transition {source} → {target}")


class StoreError(GpulaneError):
    """The job database cannot be used (corrupt, locked, unwritable); says which file and why."""


class SystemStoppedError(GpulaneError):
    """The system was stopped, or stopped itself after an unrecoverable failure."""
