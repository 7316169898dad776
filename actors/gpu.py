"""The GpuSlot actor: runs one backend call at a time, off its own thread, and reports the end.

A Dispatch starts the call on the slot's worker thread with a cancel token and
returns to the mailbox at once. The call's end comes back as a message, so a finish
and a cancel for the same job never interleave; news about an older call (a stale
``call_id``) is recognised and ignored (ARCHITECTURE.md section 3).
"""

from __future__ import annotations

import dataclasses
import queue
import random
import threading
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pykka
import structlog

from actors.backends.base import Backend, CallCancelledError, CancelToken
from actors.clock import Clock
from actors.refs import ActorAddress
from actors.sinks import SinkRegistry
from actors.timers import TimerHandle, Timers
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
    SlotIdle,
    SlotSnapshot,
    Transition,
)

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

    @property
    def text_so_far(self) -> str:
        return self.job.partial_output + "".join(self.chunks)


class _Worker:
    """The slot's one worker thread: runs backend calls so the actor's thread never blocks."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], None]) -> None:
        self._jobs.put(work)

    def stop(self, timeout: float) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (work := self._jobs.get()) is not None:
            work()


class GpuSlot(pykka.ThreadingActor):
    """Owns the single call running on one GPU (or backend): its cancel token and stream."""

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
        self._call: _Call | None = None
        self._model_key: str | None = None
        self._worker: _Worker | None = None

    def on_start(self) -> None:
        """Start the worker thread and offer the slot to the arbiter."""
        self._worker = _Worker(f"gpulane-slot-{self.slot_id}")
        self._arbiter.tell(SlotIdle(self.slot_id, self._model_key))

    def on_stop(self) -> None:
        """Stop the running call, put its job back in the queue, and join the worker."""
        call = self._call
        if call is not None:
            call.cancel_reason = CancelReason.SHUTDOWN
            call.token.cancel()
        if self._worker is not None:
            self._worker.stop(self._shutdown_timeout_s)
        if call is not None:
            self._requeue(call, count_preemption=False)

    def on_receive(self, message: Any) -> Any:
        """Dispatch on the message type."""
        match message:
            case Dispatch(job=job, call_id=call_id):
                self._start_call(job, call_id)
            case CallStreaming(call_id=call_id) if self._is_current(call_id):
                assert self._call is not None
                self._store.tell(
                    Transition(
                        self._call.job.id, JobState.RUNNING, expected=frozenset({JobState.LOADING})
                    )
                )
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
            Transition(job.id, JobState.LOADING, expected=frozenset({JobState.QUEUED}))
        )
        self._sinks.started(job.id)
        call.timeout = self._timers.send_after(
            self._policy.exec_timeout_s, self.actor_ref, ExecTimedOut(call_id)
        )
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
            if call.token.cancelled:
                outcome = CallCancelled(call.call_id)
            else:
                outcome = CallFinished(
                    call.call_id, result.text, result.metrics, result.done_reason
                )
        try:
            me.tell(outcome)
        except pykka.ActorDeadError:
            log.debug("slot_gone_before_call_end", slot=self.slot_id, job_id=call.job.id)

    def _end_call(self) -> _Call:
        call = self._call
        assert call is not None
        if call.timeout is not None:
            call.timeout.cancel()
        self._call = None
        return call

    def _idle(self, *, healthy: bool = True) -> None:
        self._arbiter.tell(SlotIdle(self.slot_id, self._model_key, healthy))

    def _finish(self, text: str, metrics: JobMetrics) -> None:
        call = self._end_call()
        self._idle()
        self._store.tell(
            Transition(
                call.job.id,
                JobState.SUCCEEDED,
                expected=_ACTIVE,
                result=call.job.partial_output + text,
                partial_output="",
                metrics=metrics,
            )
        )

    def _fail(self, error: str, transient: bool) -> None:
        call = self._end_call()
        self._idle(healthy=not transient)
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
                )
            )
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
