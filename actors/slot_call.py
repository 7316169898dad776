"""One call a GPU slot runs, and what its job keeps when the call is cut off.

The GpuSlot (``actors.gpu``) owns these; they hold the rule of docs/architecture.md
section 3, "Preempt": plain text is continued by the next call, with the token budget
that is left and the usage of every call summed; output that cannot be continued
exactly (thinking, tool calls, logprobs) starts over from scratch if nobody has seen it,
and once a client has seen it the call is not preempted (and a retry or a slot's stop
fails the job instead of showing that client repeated or contradictory output).
"""

from __future__ import annotations

import dataclasses
import threading

from actors.backends.base import CancelToken
from actors.runtime import TimerHandle
from actors.sinks import SinkRegistry
from protocol import (
    BackendRequest,
    BackendResult,
    CancelReason,
    Chunk,
    Job,
    JobMetrics,
    JobState,
    Output,
)
from protocol.messages import CallFinished, Transition

__all__ = ["SEEN", "Carry", "SlotCall"]

SEEN = (
    "its client has seen thinking, tool calls or logprobs, which a new call could not "
    "continue exactly"
)
_ACTIVE = frozenset({JobState.LOADING, JobState.RUNNING})


@dataclasses.dataclass(frozen=True)
class Carry:
    """What a job keeps for its next call: the text to resume after, and the metrics of
    the calls that produced it."""

    partial_output: str
    segments: tuple[JobMetrics, ...]

    def requeue(
        self,
        job: Job,
        *,
        error: str | None = None,
        charge_attempt: bool = False,
        count_preemption: bool = False,
        not_before: float | None = None,
    ) -> tuple[Transition, Job]:
        """The store's move of ``job`` back to queued, carrying this, and the job as the
        arbiter gets it back (``JobQueued``): the same change, told to both."""
        transition = Transition(
            job.id,
            JobState.QUEUED,
            expected=_ACTIVE,
            charge_attempt=charge_attempt,
            count_preemption=count_preemption,
            error=error,
            partial_output=self.partial_output,
            segments=self.segments,
            not_before=not_before,
            stale_ok=True,
        )
        queued = job.replace(
            state=JobState.QUEUED,
            attempts=job.attempts + int(charge_attempt),
            preemptions=job.preemptions + int(count_preemption),
            error=job.error if error is None else error,
            partial_output=self.partial_output,
            segments=self.segments,
            not_before=job.not_before if not_before is None else not_before,
        )
        return transition, queued


@dataclasses.dataclass
class SlotCall:
    """A call a slot runs (or will run next). The worker thread delivers its pieces under
    ``gate``, which a preemption takes to seal the output, and sets ``answer``;
    ``successor``, ``closed`` and ``claimed`` change only under the slot's handoff lock.
    """

    job: Job
    call_id: int
    request: BackendRequest  # built on the actor's thread, so the worker starts at once
    charge_outage: bool = False  # an outage on this call counts against the job
    token: CancelToken = dataclasses.field(default_factory=CancelToken)
    started_at: float = 0.0
    chunks: list[Chunk] = dataclasses.field(default_factory=list)
    tokens: int = 0  # pieces delivered: a token each, as the servers stream them
    plain: bool = True  # every piece so far is plain text, which a next call can continue
    gate: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    sealed: bool = False  # a preemption was decided: only plain text is delivered now
    restart: bool = False  # the job starts over after this call; its sink is held
    cancel_reason: CancelReason | None = None
    timeout: TimerHandle | None = None
    answer: CallFinished | None = None  # set by the worker once the backend has answered
    successor: SlotCall | None = None  # the next call, for the worker to start on success
    closed: bool = False  # the worker is done with this call: too late to offer a successor
    claimed: bool = False  # (a next call) the worker has started it

    @property
    def text_so_far(self) -> str:
        """The job's text: what earlier calls produced and this one's pieces."""
        return self.job.partial_output + "".join(self.chunks)

    def deliver(self, piece: Chunk, sinks: SinkRegistry) -> bool:
        """Record ``piece`` and hand it to the job's sink (worker thread); False if there
        was nothing to deliver. After a preemption was decided only its text goes on."""
        with self.gate:
            if self.sealed and not self.restart and not piece.is_text_only:
                piece = Chunk(piece.text)
            if piece.is_empty:
                return False
            self.chunks.append(piece)
            self.tokens += 1
            self.plain = self.plain and piece.is_text_only
            sinks.chunk(self.job.id, piece)
        return True

    def seal_for_preemption(self, sinks: SinkRegistry) -> bool:
        """Decide a preemption: from now on only plain text is delivered, or, if the output
        so far is more than text, the job will start over unseen (its sink is held).
        False when its client has seen such output: then the call is not preempted."""
        with self.gate:
            if not self.plain:
                if not sinks.hold(self.job.id):
                    return False
                self.restart = True
            self.sealed = True
        return True

    def interrupted(self, now: float) -> JobMetrics:
        """The usage of this call, cut off before the server reported its own: a token per
        piece it streamed, and the time it ran (0 if the slot never saw it start)."""
        ran_ns = int(max(0.0, now - self.started_at) * 1e9) if self.started_at else 0
        return JobMetrics(eval_count=self.tokens, total_duration_ns=ran_ns)

    def carry_over(self, sinks: SinkRegistry, now: float) -> Carry | None:
        """What the job keeps once this call has ended without an answer: plain text is
        resumed after; other output starts over from scratch if nobody has seen it (its
        sink forgets it); None if its client has seen output no new call could continue.
        """
        if self.plain:
            return Carry(self.text_so_far, (*self.job.segments, self.interrupted(now)))
        if self.restart or sinks.hold(self.job.id):
            sinks.rewind(self.job.id)
            return Carry("", ())
        return None

    def succeeded(self, result: BackendResult, sinks: SinkRegistry) -> Transition:
        """The move to succeeded with the answer: the text so far and this call's, its
        output, and the usage of every call that produced it."""
        if self.restart:  # preempted too late to start over: its chunks are heard after all
            sinks.release(self.job.id)
        segments = (*self.job.segments, result.metrics)
        output = Output(
            thinking=result.thinking,
            tool_calls=result.tool_calls,
            logprobs=result.logprobs,
            done_reason=result.done_reason,
            context=result.context,
        )
        return Transition(
            self.job.id,
            JobState.SUCCEEDED,
            expected=_ACTIVE,
            result=self.job.partial_output + result.text,
            partial_output="",
            metrics=JobMetrics.total(segments),
            segments=segments,
            output=output,
            stale_ok=True,
        )

    def failed(self, error: str, sinks: SinkRegistry, now: float) -> Transition:
        """The move to failed with ``error``, keeping the text so far and the usage of
        every call, this one's too (a token per piece it streamed, the time it ran)."""
        if self.restart:
            sinks.release(self.job.id)
        segments = (*self.job.segments, self.interrupted(now))
        return Transition(
            self.job.id,
            JobState.FAILED,
            expected=_ACTIVE,
            charge_attempt=True,
            error=error,
            partial_output=self.text_so_far,
            metrics=JobMetrics.total(segments),
            segments=segments,
            stale_ok=True,
        )
