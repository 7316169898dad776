"""Jobs suspected of taking the model server down: the bound on uncharged outages.

An outage, before output or mid-stream, charges the job nothing (docs/architecture.md
section 13). But a prompt that crashes the server (a runner bug, a bad image) looks like
an outage each time it runs, and, first in the queue once the server is back, would take
it down again and again, forever. So the arbiter counts, per job, how many times in a row its
call was the one that found an up backend gone; once that reaches the job's
``max_attempts``, its next outage is charged like any failure of its own (retried with
back-off, failed after ``max_attempts``), while the backend is still marked down.
A call of the job that ends without an outage clears its count.

Thread-free, owned by the PriorityArbiter.
"""

from __future__ import annotations

__all__ = ["OutageSuspects"]


class OutageSuspects:
    """Per job, the outages in a row that its call was first to meet."""

    def __init__(self) -> None:
        self._firsts: dict[str, int] = {}

    def first_to_meet(self, job_id: str) -> None:
        """The job's call found the backend gone while it was thought up."""
        self._firsts[job_id] = self._firsts.get(job_id, 0) + 1

    def ran_without_outage(self, job_id: str) -> None:
        """A call of the job ended some other way: it is no suspect now."""
        self._firsts.pop(job_id, None)

    def charge(self, job_id: str, max_attempts: int) -> bool:
        """True if an outage on the job's next call should count against it."""
        return self._firsts.get(job_id, 0) >= max_attempts

    def __len__(self) -> int:
        return len(self._firsts)
