"""The GpuSlot actor: runs one backend call at a time, off its own thread, and reports the end.

A Dispatch starts the call on the slot's worker thread with a cancel token and
returns to the mailbox at once. The call's end comes back as a message, so a finish
and a cancel for the same job never interleave; news about an older call (a stale
``call_id``) is recognised and ignored (docs/architecture.md section 3).

Prefetch: a Dispatch that arrives while a call runs becomes the slot's *next* call.
It is handed to the worker as the running call's successor, so the worker starts it
the moment the running call succeeds, with no hop through any mailbox (the GPU does
not idle between jobs). Until the worker claims it, a Recall takes it back unstarted;
after any other ending (failure, cancel, preemption) the actor starts it itself.

When the slot ends (stopped, or crashed and about to be restarted) it cancels the
running call, joins its worker thread, and reports the job: an answer the backend
had already produced is kept (succeeded), anything else goes back to queued with no
attempt charged. A late CallFinished then finds no live instance and is dropped, so a
job is never completed by both the old instance and whoever runs it next.

A job that goes back to the queue keeps what a next call can continue: plain text is
resumed after, other output (thinking, tool calls, logprobs) starts over if nobody has
seen it, and a call whose client has seen such output is not preempted; the token
budget and the usage carry over segment by segment (docs/architecture.md section 3,
"Preempt").

A failure that belongs to the backend (``BackendError.outage``: unreachable, dropped,
busy) charges the job nothing, before output or after it: losing the host is not the
job's fault (issue #17). The job goes back to the queue at its place with what it carries
over, as after a preemption (its text so far, resumed after on whichever host takes it
next) but with no preemption counted; the prefetched next job goes back unstarted, and
the tracker and the arbiter hear ``BackendUnreachable``, so no more work comes until the
backend is up (docs/architecture.md section 13). A job the arbiter suspects of taking the
server down (``Dispatch.charge_outage``) is charged all the same. A slot with no tracker
(a cloud slot) has no health to report: there an outage is an ordinary transient failure.

Every call carries the pin's keep_alive when its model is pinned, so no request
shortens or ends a pinned model's residency (docs/architecture.md section 2).
"""

from __future__ import annotations

import dataclasses
import random
import threading
from types import MappingProxyType
from typing import Any

import pykka
import structlog

from actors.backends.base import Backend, CallCancelledError, refuse_unsupported
from actors.backends.text import ChunkMender, mend_result, mend_text
from actors.runtime import (
    ActorAddress,
    ChildUnavailableError,
    Clock,
    SupervisedActor,
    Timers,
    WorkerThread,
)
from actors.sinks import SinkRegistry
from actors.slot_call import SEEN, Carry, SlotCall
from protocol import (
    LOCAL_BACKEND,
    BackendError,
    BackendRequest,
    BackendResult,
    CancelReason,
    Chunk,
    Job,
    JobState,
    ResidencySettings,
    RetryPolicy,
    SchedulingPolicy,
    ValidationError,
)
from protocol.messages import (
    ApplyPolicy,
    BackendUnreachable,
    CallCancelled,
    CallEnded,
    CallFailed,
    CallFinished,
    CallStarting,
    CallStreaming,
    CancelCall,
    Dispatch,
    ExecTimedOut,
    JobQueued,
    ModelLoaded,
    PreemptionDeclined,
    Recall,
    Recalled,
    SlotIdle,
    SlotSnapshot,
    SlotStarted,
    Transition,
)

__all__ = ["GpuSlot"]

log = structlog.get_logger(__name__)

_ACTIVE = frozenset({JobState.LOADING, JobState.RUNNING})


class GpuSlot(SupervisedActor):
    """Owns the single call running on one GPU (or backend): its cancel token and stream.

    ``backend`` is the client it calls, ``backend_name`` the name of that backend (the
    ``[[backends]]`` entry, ``local`` for ``[backend]``): the move to loading records it
    and the slot id in the job, and the snapshot shows it.

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
        pins: ResidencySettings | None = None,
        backend_name: str = LOCAL_BACKEND,
    ) -> None:
        super().__init__()
        self.slot_id = slot_id
        self.backend_name = backend_name  # which backend ``backend`` (its client) reaches
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
        self._residency = residency  # the ResidencyTracker hears loads, switches, outages
        self._pins = pins or ResidencySettings()
        self._call: SlotCall | None = None
        self._next: SlotCall | None = None  # prefetched: runs once ``_call`` ends
        self._handoff = threading.Lock()  # guards the worker's claim of ``_next``
        self._model_key: str | None = None
        self._worker: WorkerThread | None = None

    def on_start(self) -> None:
        """Start the worker thread and offer the slot to the arbiter."""
        self._worker = WorkerThread(f"gpulane-slot-{self.slot_id}")
        self._idle()

    def on_end(self) -> None:
        """Stopped or crashed: stop the running call, join the worker, and report the job
        (see :meth:`_wind_up`), so the next instance starts clean."""
        self._wind_up()

    def _wind_up(self) -> None:
        """Cancel the call, join the worker, then report its job so nothing is lost or doubled.

        If the backend answered before the cancel took effect, the answer is kept
        (succeeded); otherwise the job goes back to queued, with its text so far and
        no attempt charged. Only after the worker is joined can no late answer slip by.
        """
        calls = [c for c in (self._call, self._next) if c is not None]
        self._call = self._next = None
        for call in calls:
            if call.timeout is not None:
                call.timeout.cancel()
            if call.cancel_reason is None:
                call.cancel_reason = CancelReason.SHUTDOWN
            call.token.cancel()
        if self._worker is not None and not self._worker.stop(self._shutdown_timeout_s):
            log.error("slot_worker_stuck", slot=self.slot_id, timeout_s=self._shutdown_timeout_s)
        for call in calls:
            try:
                self._report_wound_up(call)
            except ChildUnavailableError as error:  # the tree is stopping for good
                log.warning(
                    "slot_report_undeliverable",
                    slot=self.slot_id,
                    job_id=call.job.id,
                    child=error.child_id,
                )

    def _report_wound_up(self, call: SlotCall) -> None:
        """Keep an answer the backend produced; give anything else back to the arbiter."""
        if call.claimed and not call.started_at:
            self._tell_loading(call.job)  # the worker started it before the actor heard
        if call.answer is not None:
            self._record_success(call, call.answer.result)
        elif call.started_at or call.claimed:
            self._requeue(call, count_preemption=False, why="its slot stopped")
        else:  # a next call that never started: the store still has it queued
            self._arbiter.tell(JobQueued(call.job))
        log.info(
            "slot_wound_up", slot=self.slot_id, job_id=call.job.id, kept=call.answer is not None
        )

    def on_receive(self, message: Any) -> Any:
        """Dispatch on the message type."""
        match message:
            case Dispatch(job=job, call_id=call_id, incarnation=incarnation):
                call = SlotCall(job, call_id, self._request_for(job), message.charge_outage)
                if incarnation and incarnation != self.actor_urn:
                    # Meant for the instance before this one; the arbiter recovers the job.
                    log.info("stale_dispatch_dropped", slot=self.slot_id, job_id=job.id)
                elif self._call is None:
                    self._start_call(call)
                else:
                    self._set_next(call)
            case Recall(job_id=job_id):
                self._recall(job_id)
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
            case CallFinished(call_id=call_id, result=result) if self._is_current(call_id):
                ended = self._running_job()
                self._finish(result)
                self._advance(ended)
            case CallFailed(call_id=call_id) if self._is_current(call_id):
                ended = self._running_job()
                if message.outage and self._residency is not None:
                    self._backend_unreachable(message.error)
                else:
                    self._fail(message.error, message.transient)
                self._advance(ended)
            case CallCancelled(call_id=call_id) if self._is_current(call_id):
                ended = self._running_job()
                self._cancelled()
                self._advance(ended)
            case CancelCall(job_id=job_id, reason=reason):
                self._cancel(job_id, reason)
            case ExecTimedOut(call_id=call_id) if self._is_current(call_id):
                assert self._call is not None
                self._cancel(self._call.job.id, CancelReason.TIMEOUT)
            case ApplyPolicy(scheduling=scheduling, retry=retry, residency=residency):
                self._policy, self._retry, self._pins = scheduling, retry, residency
            case SlotSnapshot():
                return self._snapshot()
            case CallStreaming() | CallFinished() | CallFailed() | CallCancelled() | ExecTimedOut():
                log.debug("stale_call_message", slot=self.slot_id, message=type(message).__name__)
            case _:
                raise TypeError(f"GpuSlot cannot handle {type(message).__name__}")
        return None

    def _request_for(self, job: Job) -> BackendRequest:
        """The request that runs ``job``, with the pin's keep_alive if its model is pinned."""
        request = BackendRequest.for_job(job)
        keep_alive = self._pins.pin_keep_alive(request.model)
        if keep_alive is None or request.keep_alive == keep_alive:
            return request
        return dataclasses.replace(request, keep_alive=keep_alive)

    def _running_job(self) -> Job:
        assert self._call is not None
        return self._call.job

    def _is_current(self, call_id: int) -> bool:
        return self._call is not None and self._call.call_id == call_id

    def _start_call(self, call: SlotCall) -> None:
        """Start ``call`` on the worker now (the slot has no call running)."""
        self._arbiter.tell(SlotStarted(self.slot_id, call.job.id))
        self._begin(call)
        assert self._worker is not None
        self._worker.submit(lambda: self._run_calls(call))

    def _begin(self, call: SlotCall) -> None:
        """Make ``call`` the running one: the store, its time-out, the residency news."""
        job = call.job
        call.started_at = self._clock.now()
        self._call = call
        self._tell_loading(job)
        call.timeout = self._timers.send_after(
            self._policy.exec_timeout_s, self.actor_ref, ExecTimedOut(call.call_id)
        )
        switched = self._model_key is not None and self._model_key != job.spec.model_key
        evicted = self._model_key if switched else None
        self._tell_residency(CallStarting(self.slot_id, job.spec.model_key, evicted))
        self._model_key = job.spec.model_key

    def _tell_loading(self, job: Job) -> None:
        """The store's move of ``job`` to loading, saying where it runs."""
        self._store.tell(
            Transition(
                job.id,
                JobState.LOADING,
                expected=frozenset({JobState.QUEUED}),
                stale_ok=True,
                backend=self.backend_name,
                slot=self.slot_id,
            )
        )

    def _set_next(self, call: SlotCall) -> None:
        """Hold ``call`` as the next one and offer it to the worker as the running call's
        successor; if the worker is already done with the running call, the actor starts
        it itself when that call's end arrives (:meth:`_advance`)."""
        running = self._call
        assert running is not None
        if self._next is not None:
            raise RuntimeError(
                f"slot {self.slot_id} got {call.job.id} with {self._next.job.id} already next"
            )
        self._next = call
        with self._handoff:
            if not running.closed:
                running.successor = call

    def _recall(self, job_id: str) -> None:
        """Give the next call back to the arbiter, unless the worker has started it."""
        call = self._next
        if call is None or call.job.id != job_id:
            return  # it started already: the arbiter hears SlotStarted instead
        with self._handoff:
            if call.claimed:
                return
            if self._call is not None and self._call.successor is call:
                self._call.successor = None
        self._next = None
        self._arbiter.tell(Recalled(self.slot_id, job_id))

    def _advance(self, ended: Job) -> None:
        """The call for ``ended`` is over: the next call, if any, becomes the running one."""
        call, self._next = self._next, None
        if call is None:
            return
        with self._handoff:
            claimed = call.claimed
        if claimed:  # the worker started it at once and left the news to this actor
            self._idle(ended)
            self._arbiter.tell(SlotStarted(self.slot_id, call.job.id))
            self._begin(call)
        else:
            self._start_call(call)

    def _run_calls(self, call: SlotCall) -> None:
        """Runs on the worker thread: the call, then each successor it hands on to."""
        current: SlotCall | None = call
        while current is not None:
            current = self._run_call(current)

    def _run_call(self, call: SlotCall) -> SlotCall | None:
        """Run one call and report its end; returns the successor to start at once, if any."""
        me = self.actor_ref
        first = True
        mender = ChunkMender()

        def deliver(piece: Chunk) -> None:
            nonlocal first
            if call.deliver(piece, self._sinks) and first:
                first = False
                me.tell(CallStreaming(call.call_id))

        def on_chunk(piece: str) -> None:
            deliver(mender.feed(piece))

        try:
            if call.request.budget_spent:  # earlier calls produced the whole budget
                result = BackendResult(text="", done_reason="length")
            else:
                refuse_unsupported(self._backend, call.request)
                result = self._backend.complete(call.request, on_chunk, call.token)
        except CallCancelledError:
            outcome: Any = CallCancelled(call.call_id)
        except ValidationError as exc:  # a field this backend cannot carry: never retried
            outcome = CallFailed(call.call_id, str(exc), False)
        except BackendError as exc:  # an outage mid-stream too: the host went, not the job
            outcome = CallFailed(call.call_id, mend_text(str(exc)), exc.transient, exc.outage)
        except Exception as exc:  # a backend bug: report it as a permanent failure of this call
            log.exception("backend_crashed", slot=self.slot_id, job_id=call.job.id)
            outcome = CallFailed(call.call_id, mend_text(f"backend error: {exc!r}"), False)
        else:
            deliver(mender.flush())
            answer = CallFinished(call.call_id, mend_result(result))
            call.answer = answer  # read by _wind_up after joining this thread
            outcome = CallCancelled(call.call_id) if call.token.cancelled else answer
        succeeded = isinstance(outcome, CallFinished)
        with self._handoff:
            call.closed = True
            successor = call.successor if succeeded else None
            if successor is not None:
                successor.claimed = True
        try:
            me.tell(outcome)
        except pykka.ActorDeadError:
            log.debug("slot_gone_before_call_end", slot=self.slot_id, job_id=call.job.id)
            return successor  # the dying slot cancelled it: it ends at once, then wind-up
        if succeeded and successor is None:
            # The GPU is free now: tell the arbiter straight away instead of after the
            # slot's turn. The slot's mailbox already holds CallFinished, so it ends this
            # call before it sees the next Dispatch.
            model_key = call.job.spec.model_key
            self._arbiter.tell(SlotIdle(self.slot_id, model_key, self.actor_urn, ended=call.job.id))
        # With a successor, the actor tells the arbiter (:meth:`_advance`) while it runs.
        return successor

    def _end_call(self, result: BackendResult | None = None) -> SlotCall:
        """The running call is over: drop its time-out and tell the tracker how long the
        slot was busy and whether the model got loaded (an answer, or any output)."""
        call = self._call
        assert call is not None
        if call.timeout is not None:
            call.timeout.cancel()
        self._call = None
        load_s = 0.0 if result is None else result.metrics.load_duration_ns / 1e9
        busy_s = max(0.0, self._clock.now() - call.started_at)
        loaded = result is not None or call.tokens > 0
        self._tell_residency(
            CallEnded(self.slot_id, call.job.spec.model_key, busy_s, loaded, load_s)
        )
        return call

    def _idle(self, ended: Job | None = None) -> None:
        self._arbiter.tell(
            SlotIdle(
                self.slot_id,
                self._model_key,
                self.actor_urn,
                ended=None if ended is None else ended.id,
            )
        )

    def _tell_residency(
        self, message: ModelLoaded | CallStarting | CallEnded | BackendUnreachable
    ) -> None:
        if self._residency is not None:
            self._residency.tell(message)

    def _finish(self, result: BackendResult) -> None:
        call = self._end_call(result)  # the worker has already offered the slot to the arbiter
        self._record_success(call, result)

    def _record_success(self, call: SlotCall, result: BackendResult) -> None:
        self._store.tell(call.succeeded(result, self._sinks))

    def _carry_over(self, call: SlotCall) -> Carry | None:
        return call.carry_over(self._sinks, self._clock.now())

    def _fail(self, error: str, transient: bool) -> None:
        call = self._end_call()
        job = call.job
        attempts = job.attempts + 1
        retry = transient and attempts < job.spec.max_attempts
        carry = self._carry_over(call) if retry else None
        if carry is None:
            self._give_up(call, f"{error}; not retried: {SEEN}" if retry else error)
            self._idle(job)
            log.info(
                "job_failed", job_id=job.id, attempts=attempts, transient=transient, error=error
            )
            return
        not_before = self._clock.now() + self._retry.delay(attempts, self._rng.random())
        transition, queued = carry.requeue(
            job, error=error, charge_attempt=True, not_before=not_before
        )
        self._store.tell(transition)
        self._arbiter.tell(JobQueued(queued))
        # After the job is back, so a cancel waiting for it finds it there.
        self._idle(job)
        log.info(
            "job_retry_scheduled",
            job_id=job.id,
            attempts=attempts,
            not_before=not_before,
            error=error,
        )

    def _backend_unreachable(self, error: str) -> None:
        """The call met a backend outage (before output or mid-stream): the tracker and
        the arbiter hear of it, so no more work comes until the backend is up, and the next
        job goes back unstarted. The job goes back to its place in the queue with its text
        so far and no attempt charged (or fails, if its client has seen output no new call
        could continue), unless it is suspected of causing the outages (``charge_outage``):
        then it is charged like a failure of its own."""
        call = self._call
        assert call is not None
        news = BackendUnreachable(self.slot_id, call.job.id, error, call.started_at)
        self._tell_residency(news)
        self._arbiter.tell(news)  # first, so it dispatches nothing more to this backend
        self._give_back_next()
        if call.charge_outage:
            self._fail(f"{error} (charged: its calls met every outage of late first)", True)
            return
        self._end_call()
        self._requeue(call, count_preemption=False, why="its backend went away", error=error)
        self._idle(call.job)
        log.info("job_requeued_backend_unreachable", slot=self.slot_id, job_id=call.job.id)

    def _give_back_next(self) -> None:
        """Hand the prefetched next job back unstarted (the worker never claims it after a
        failure): it waits in the queue with the rest."""
        call, self._next = self._next, None
        if call is None:
            return
        with self._handoff:
            running = self._call
            if running is not None and running.successor is call:
                running.successor = None
        self._arbiter.tell(Recalled(self.slot_id, call.job.id))

    def _give_up(self, call: SlotCall, error: str) -> None:
        self._store.tell(call.failed(error, self._sinks, self._clock.now()))

    def _cancelled(self) -> None:
        call = self._call
        assert call is not None
        reason = call.cancel_reason or CancelReason.USER
        if reason is CancelReason.PREEMPTED:
            self._end_call()
            self._requeue(call, count_preemption=True, why="preempted")
            self._idle(call.job)
        elif reason is CancelReason.TIMEOUT:
            self._fail(f"execution time-out after {self._policy.exec_timeout_s:g}s", True)
        else:
            self._end_call()
            self._idle(call.job)
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

    def _requeue(
        self, call: SlotCall, *, count_preemption: bool, why: str, error: str | None = None
    ) -> None:
        """Put the job back in the queue with what it carries over (and ``error``, if it
        met one); if its client has seen output no new call could continue, it fails."""
        carry = self._carry_over(call)
        if carry is None:
            self._give_up(call, f"{why}, and {SEEN}")
            return
        transition, queued = carry.requeue(call.job, error=error, count_preemption=count_preemption)
        self._store.tell(transition)
        self._arbiter.tell(JobQueued(queued))

    def _cancel(self, job_id: str, reason: CancelReason) -> None:
        call = self._call
        if call is None or call.job.id != job_id or call.cancel_reason is not None:
            return  # stale: that call already ended, or is already being cancelled
        if reason is CancelReason.PREEMPTED and not call.seal_for_preemption(self._sinks):
            log.info("preemption_declined", slot=self.slot_id, job_id=job_id, why=SEEN)
            self._arbiter.tell(PreemptionDeclined(self.slot_id, job_id))
            return
        call.cancel_reason = reason
        call.token.cancel()
        log.info("call_cancelling", slot=self.slot_id, job_id=job_id, reason=reason.value)

    def _snapshot(self) -> Any:
        call = self._call
        return MappingProxyType(
            {
                "slot_id": self.slot_id,
                "backend": self.backend_name,
                "job_id": None if call is None else call.job.id,
                "next_job_id": None if self._next is None else self._next.job.id,
                "model_key": self._model_key,
                "since": None if call is None else call.started_at,
                "cancelling": None
                if call is None or call.cancel_reason is None
                else call.cancel_reason.value,
            }
        )
