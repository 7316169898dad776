"""The GpuSlot actor: runs one backend call at a time, off its own thread, and reports the end.

A Dispatch starts the call on the slot's worker thread with a cancel token and
returns to the mailbox at once. The call's end comes back as a message, so a finish
and a cancel for the same job never interleave; news about an older call (a stale
``call_id``) is recognised and ignored (ARCHITECTURE.md section 3).

When the slot ends (stopped, or crashed and about to be restarted) it cancels the
running call, joins its worker thread, and reports the job: an answer the backend
had already produced is kept (succeeded), anything else goes back to queued with no
attempt charged. A late CallFinished then finds no live instance and is dropped, so a
job is never completed by both the old instance and whoever runs it next.
"""

from __future__ import annotations

import dataclasses
import random
from types import MappingProxyType, TracebackType
from typing import Any

import pykka
import structlog

from actors.backends.base import Backend, CallCancelledError, CancelToken
from actors.clock import Clock
from actors.refs import ActorAddress
from actors.sinks import SinkRegistry
from actors.supervision_actor import SupervisedActor
from actors.timers import TimerHandle, Timers
from actors.worker import WorkerThread
from protocol import (
    BackendError,
    BackendRequest,
    CancelReason,
    Job,
    JobMetrics,
    JobState,
    RetryPolicy,
    SchedulingPolicy,
)
from protocol.messages import (
    ApplyPolicy,
    CallCancelled,
    CallFailed,
    CallFinished,
    CallStreaming,
    CancelCall,
    Dispatch,
    ExecTimedOut,
    JobQueued,
    ModelEvicted,
    ModelLoaded,
    SlotIdle,
    SlotSnapshot,
    Transition,
)
from protocol.supervision import ChildUnavailableError

__all__ = ["GpuSlot"]

log = structlog.get_logger(__name__)

_ACTIVE = frozenset({JobState.LOADING, JobState.RUNNING})


@dataclasses.dataclass
class _Call:
    """The one call a slot runs: touched by the worker thread only through ``chunks``."""

    job: Job
    call_id: int
    token: CancelToken
    started_at: float
    chunks: list[str] = dataclasses.field(default_factory=list)
    cancel_reason: CancelReason | None = None
    timeout: TimerHandle | None = None
    answer: CallFinished | None = None  # set by the worker once the backend has answered

    @property
    def text_so_far(self) -> str:
        return self.job.partial_output + "".join(self.chunks)


class GpuSlot(SupervisedActor):
    """Owns the single call running on one GPU (or backend): its cancel token and stream.

    Everything it tells the store is ``stale_ok``: after a restart elsewhere the store
    may already have moved the job on, and a stale report must not crash the store.
    """

    def __init__(
        self,
        *,
        slot_id: str,
        backend: Backend,
        store: ActorAddress,
        arbiter: ActorAddress,
        sinks: SinkRegistry,
        clock: Clock,
        timers: Timers,
        policy: SchedulingPolicy,
        retry: RetryPolicy,
        rng: random.Random | None = None,
        shutdown_timeout_s: float = 5.0,
        residency: ActorAddress | None = None,
    ) -> None:
        super().__init__()
        self.slot_id = slot_id
        self._backend = backend
        self._store = store
        self._arbiter = arbiter
        self._sinks = sinks
        self._clock = clock
        self._timers = timers
        self._policy = policy
        self._retry = retry
        self._rng = rng or random.Random()
        self._shutdown_timeout_s = shutdown_timeout_s
        self._residency = residency  # the ResidencyTracker hears loads and switches, if wired
        self._call: _Call | None = None
        self._model_key: str | None = None
        self._worker: WorkerThread | None = None

    def on_start(self) -> None:
        """Start the worker thread and offer the slot to the arbiter."""
        self._worker = WorkerThread(f"gpulane-slot-{self.slot_id}")
        self._idle()

    def on_stop(self) -> None:
        """Stop the running call, join the worker, and report the job (see :meth:`_wind_up`)."""
        self._wind_up()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Crashed: wind up like a stop, so the next instance starts clean."""
        self._wind_up()

    def _wind_up(self) -> None:
        """Cancel the call, join the worker, then report its job so nothing is lost or doubled.

        If the backend answered before the cancel took effect, the answer is kept
        (succeeded); otherwise the job goes back to queued, with its text so far and
        no attempt charged. Only after the worker is joined can no late answer slip by.
        """
        call, self._call = self._call, None
        if call is not None:
            if call.timeout is not None:
                call.timeout.cancel()
            if call.cancel_reason is None:
                call.cancel_reason = CancelReason.SHUTDOWN
            call.token.cancel()
        if self._worker is not None and not self._worker.stop(self._shutdown_timeout_s):
            log.error("slot_worker_stuck", slot=self.slot_id, timeout_s=self._shutdown_timeout_s)
        if call is None:
            return
        try:
            if call.answer is not None:
                self._record_success(call, call.answer.text, call.answer.metrics)
            else:
                self._requeue(call, count_preemption=False)
        except ChildUnavailableError as error:  # the tree is stopping for good
            log.warning(
                "slot_report_undeliverable",
                slot=self.slot_id,
                job_id=call.job.id,
                child=error.child_id,
            )
            return
        log.info(
            "slot_wound_up", slot=self.slot_id, job_id=call.job.id, kept=call.answer is not None
        )

    def on_receive(self, message: Any) -> Any:
        """Dispatch on the message type."""
        match message:
            case Dispatch(job=job, call_id=call_id, incarnation=incarnation):
                if incarnation and incarnation != self.actor_urn:
                    # Meant for the instance before this one; the arbiter recovers the job.
                    log.info("stale_dispatch_dropped", slot=self.slot_id, job_id=job.id)
                else:
                    self._start_call(job, call_id)
            case CallStreaming(call_id=call_id) if self._is_current(call_id):
                assert self._call is not None
                self._store.tell(
                    Transition(
                        self._call.job.id,
                        JobState.RUNNING,
                        expected=frozenset({JobState.LOADING}),
                        stale_ok=True,
                    )
                )
                self._tell_residency(ModelLoaded(self.slot_id, self._call.job.spec.model_key))
            case CallFinished(call_id=call_id, text=text, metrics=metrics) if self._is_current(
                call_id
            ):
                self._finish(text, metrics)
            case CallFailed(call_id=call_id, error=error, transient=transient) if self._is_current(
                call_id
            ):
                self._fail(error, transient)
            case CallCancelled(call_id=call_id) if self._is_current(call_id):
                self._cancelled()
            case CancelCall(job_id=job_id, reason=reason):
                self._cancel(job_id, reason)
            case ExecTimedOut(call_id=call_id) if self._is_current(call_id):
                assert self._call is not None
                self._cancel(self._call.job.id, CancelReason.TIMEOUT)
            case ApplyPolicy(scheduling=scheduling, retry=retry):
                self._policy, self._retry = scheduling, retry
            case SlotSnapshot():
                return self._snapshot()
            case CallStreaming() | CallFinished() | CallFailed() | CallCancelled() | ExecTimedOut():
                log.debug("stale_call_message", slot=self.slot_id, message=type(message).__name__)
            case _:
                raise TypeError(f"GpuSlot cannot handle {type(message).__name__}")
        return None

    def _is_current(self, call_id: int) -> bool:
        return self._call is not None and self._call.call_id == call_id

    def _start_call(self, job: Job, call_id: int) -> None:
        if self._call is not None:
            raise RuntimeError(
                f"slot {self.slot_id} got {job.id} while running {self._call.job.id}"
            )
        now = self._clock.now()
        call = _Call(job=job, call_id=call_id, token=CancelToken(), started_at=now)
        self._call = call
        self._store.tell(
            Transition(
                job.id, JobState.LOADING, expected=frozenset({JobState.QUEUED}), stale_ok=True
            )
        )
        self._sinks.started(job.id)
        call.timeout = self._timers.send_after(
            self._policy.exec_timeout_s, self.actor_ref, ExecTimedOut(call_id)
        )
        if self._model_key is not None and self._model_key != job.spec.model_key:
            self._tell_residency(ModelEvicted(self.slot_id, self._model_key))
        self._model_key = job.spec.model_key
        assert self._worker is not None
        self._worker.submit(lambda: self._run_call(call))

    def _run_call(self, call: _Call) -> None:
        """Runs on the worker thread; reports the end to the actor as a message."""
        me = self.actor_ref
        first = True

        def on_chunk(text: str) -> None:
            nonlocal first
            if not text:
                return
            call.chunks.append(text)
            self._sinks.chunk(call.job.id, text)
            if first:
                first = False
                me.tell(CallStreaming(call.call_id))

        try:
            result = self._backend.complete(BackendRequest.for_job(call.job), on_chunk, call.token)
        except CallCancelledError:
            outcome: Any = CallCancelled(call.call_id)
        except BackendError as exc:
            outcome = CallFailed(call.call_id, str(exc), exc.transient)
        except Exception as exc:  # a backend bug: report it as a permanent failure of this call
            log.exception("backend_crashed", slot=self.slot_id, job_id=call.job.id)
            outcome = CallFailed(call.call_id, f"backend error: {exc!r}", False)
        else:
            answer = CallFinished(call.call_id, result.text, result.metrics, result.done_reason)
            call.answer = answer  # read by _wind_up after joining this thread
            outcome = CallCancelled(call.call_id) if call.token.cancelled else answer
        try:
            me.tell(outcome)
        except pykka.ActorDeadError:
            log.debug("slot_gone_before_call_end", slot=self.slot_id, job_id=call.job.id)
            return
        if isinstance(outcome, CallFinished):
            # The GPU is free now: offer it straight away instead of after the slot's turn.
            # The slot's mailbox already holds CallFinished, so it ends this call before it
            # sees the next Dispatch.
            self._arbiter.tell(SlotIdle(self.slot_id, call.job.spec.model_key, self.actor_urn))

    def _end_call(self) -> _Call:
        call = self._call
        assert call is not None
        if call.timeout is not None:
            call.timeout.cancel()
        self._call = None
        return call

    def _idle(self, *, healthy: bool = True) -> None:
        self._arbiter.tell(SlotIdle(self.slot_id, self._model_key, self.actor_urn, healthy=healthy))

    def _tell_residency(self, message: ModelLoaded | ModelEvicted) -> None:
        if self._residency is not None:
            self._residency.tell(message)

    def _finish(self, text: str, metrics: JobMetrics) -> None:
        call = self._end_call()  # the worker has already offered the slot to the arbiter
        self._tell_residency(
            ModelLoaded(self.slot_id, call.job.spec.model_key, metrics.load_duration_ns / 1e9)
        )
        self._record_success(call, text, metrics)

    def _record_success(self, call: _Call, text: str, metrics: JobMetrics) -> None:
        self._store.tell(
            Transition(
                call.job.id,
                JobState.SUCCEEDED,
                expected=_ACTIVE,
                result=call.job.partial_output + text,
                partial_output="",
                metrics=metrics,
                stale_ok=True,
            )
        )

    def _fail(self, error: str, transient: bool) -> None:
        call = self._end_call()
        job = call.job
        attempts = job.attempts + 1
        if not transient or attempts >= job.spec.max_attempts:
            self._store.tell(
                Transition(
                    job.id,
                    JobState.FAILED,
                    expected=_ACTIVE,
                    charge_attempt=True,
                    error=error,
                    partial_output=call.text_so_far,
                    stale_ok=True,
                )
            )
            self._idle(healthy=not transient)
            log.info(
                "job_failed", job_id=job.id, attempts=attempts, transient=transient, error=error
            )
            return
        not_before = self._clock.now() + self._retry.delay(attempts, self._rng.random())
        partial = call.text_so_far
        self._store.tell(
            Transition(
                job.id,
                JobState.QUEUED,
                expected=_ACTIVE,
                charge_attempt=True,
                error=error,
                partial_output=partial,
                not_before=not_before,
                stale_ok=True,
            )
        )
        self._arbiter.tell(
            JobQueued(
                job.replace(
                    state=JobState.QUEUED,
                    attempts=attempts,
                    error=error,
                    partial_output=partial,
                    not_before=not_before,
                )
            )
        )
        self._idle(
            healthy=not transient
        )  # after the job is back, so a cancel waiting for it finds it there
        log.info(
            "job_retry_scheduled",
            job_id=job.id,
            attempts=attempts,
            not_before=not_before,
            error=error,
        )

    def _cancelled(self) -> None:
        call = self._call
        assert call is not None
        reason = call.cancel_reason or CancelReason.USER
        if reason is CancelReason.PREEMPTED:
            self._end_call()
            self._requeue(call, count_preemption=True)
            self._idle()
        elif reason is CancelReason.TIMEOUT:
            self._fail(f"execution time-out after {self._policy.exec_timeout_s:g}s", True)
        else:
            self._end_call()
            self._idle()
            self._store.tell(
                Transition(
                    call.job.id,
                    JobState.CANCELLED,
                    expected=_ACTIVE,
                    error=reason.value,
                    partial_output=call.text_so_far,
                    stale_ok=True,
                )
            )

    def _requeue(self, call: _Call, *, count_preemption: bool) -> None:
        job, partial = call.job, call.text_so_far
        self._store.tell(
            Transition(
                job.id,
                JobState.QUEUED,
                expected=_ACTIVE,
                count_preemption=count_preemption,
                partial_output=partial,
                stale_ok=True,
            )
        )
        self._arbiter.tell(
            JobQueued(
                job.replace(
                    state=JobState.QUEUED,
                    preemptions=job.preemptions + int(count_preemption),
                    partial_output=partial,
                )
            )
        )

    def _cancel(self, job_id: str, reason: CancelReason) -> None:
        call = self._call
        if call is None or call.job.id != job_id or call.cancel_reason is not None:
            return  # stale: that call already ended, or is already being cancelled
        call.cancel_reason = reason
        call.token.cancel()
        log.info("call_cancelling", slot=self.slot_id, job_id=job_id, reason=reason.value)

    def _snapshot(self) -> Any:
        call = self._call
        return MappingProxyType(
            {
                "slot_id": self.slot_id,
                "job_id": None if call is None else call.job.id,
                "model_key": self._model_key,
                "since": None if call is None else call.started_at,
                "cancelling": None
                if call is None or call.cancel_reason is None
                else call.cancel_reason.value,
            }
        )
