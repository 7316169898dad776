"""The PriorityArbiter actor: owns the ready queues, picks what runs next, decides to preempt.

The choices themselves are in :mod:`actors.scheduling` (thread-free); this actor
feeds them the events: jobs queued, slots idle, timers, cancels, policy changes.

It keeps nothing the store does not also know, so a restart loses nothing: on start
it recovers and reloads the queued jobs from the store (a chunk per turn, best first), and
learns each slot's state from the slots themselves (they restart after it and announce
``SlotIdle``). When a slot comes back as a new incarnation, the jobs given to the old one
are checked against the store, so a dispatch lost with a crashed slot is queued again.

Prefetch: a busy local slot is handed its next job ahead of time, so its worker starts it
the moment the running call succeeds. Until the slot says it started that job (SlotStarted)
it is the slot's ``next``; when a job that should run before it becomes ready
(:func:`actors.scheduling.displaces`), on pause, or on cancel, the arbiter recalls it.

Placement (docs/architecture.md section 4): each backend's tracker tells what it has
loaded and its catalog; :func:`actors.placement.place` gives the free slots their jobs.

Backend health (docs/architecture.md section 13): a slot whose call met an outage, or
a backend's ResidencyTracker, says that backend is down; the arbiter then dispatches
nothing to its slots (its jobs wait for the other backends that have their model, or go
to the cloud if they allow it) and recalls the jobs it handed ahead there, until the
tracker says it is up again.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping
from typing import Any

import structlog

from actors.cloud import (
    ApplyCloudPolicy,
    CloudPolicy,
    LocalOutlook,
    cloud_deadline,
    queued_ahead,
    send_to_cloud,
)
from actors.outage_suspects import OutageSuspects
from actors.placement import Placed
from actors.runtime import (
    ActorAddress,
    Clock,
    SupervisedActor,
    TimerHandle,
    Timers,
    ask_while_up,
)
from actors.scheduling import RELOAD_CHUNK, ReadyQueue, SlotView, choose_preemption, displaces
from actors.slot_state import Hosts, SlotState, arbiter_view, recall
from protocol import (
    LOCAL_BACKEND,
    CancelReason,
    Job,
    JobNotFoundError,
    JobState,
    RetryPolicy,
    SchedulingPolicy,
)
from protocol.messages import (
    ApplyPolicy,
    BackendHealthChanged,
    BackendUnreachable,
    CancelCall,
    CancelQueued,
    CatalogChanged,
    ContinueLoad,
    Dispatch,
    GetJob,
    JobQueued,
    LoadQueue,
    PauseDispatch,
    PreemptionDeclined,
    QueueChunk,
    QueueSnapshot,
    Recalled,
    ResidencyChanged,
    ResumeDispatch,
    SlotIdle,
    SlotStarted,
    TimersDue,
    Transition,
)

__all__ = ["CancelOutcome", "PriorityArbiter"]

log = structlog.get_logger(__name__)


class CancelOutcome:
    """What a CancelQueued found: the job was queued, running on a slot, or neither."""

    QUEUED = "queued"
    RUNNING = "running"
    NOT_FOUND = "not_found"


class PriorityArbiter(SupervisedActor):
    """Owns the ready queues and the dispatch decision (docs/architecture.md sections 2-4).

    ``paused`` is the dispatch state to start in, so a restart keeps the host's pause.
    ``slot_backends`` names each local slot's backend (default: the one backend);
    ``backend_labels`` each backend's labels (a job requiring labels runs only where all are).
    """

    def __init__(
        self,
        *,
        store: ActorAddress,
        slots: Mapping[str, ActorAddress],
        policy: SchedulingPolicy,
        retry: RetryPolicy,
        clock: Clock,
        timers: Timers,
        paused: bool = False,
        cloud_slots: frozenset[str] = frozenset(),
        cloud: CloudPolicy | None = None,
        slot_backends: Mapping[str, str] | None = None,
        backend_labels: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        backend_of = slot_backends or {}
        self._slots = {
            slot_id: SlotState(
                ref, cloud=slot_id in cloud_slots, backend=backend_of.get(slot_id, LOCAL_BACKEND)
            )
            for slot_id, ref in slots.items()
        }
        self._hosts = Hosts(self._slots, backend_labels)
        self._cloud = cloud or CloudPolicy()
        self._cloud_jobs: dict[str, Job] = {}  # queued jobs with allow_cloud, when cloud slots
        self._cloud_wakeup: TimerHandle | None = None
        self._mean_run_s = self._cloud.assumed_run_s
        self._policy = policy
        self._retry = retry
        self._clock = clock
        self._timers = timers
        self._queue = ReadyQueue()
        self._unloaded = 0  # queued jobs of the reload still in the store
        self._paused = paused
        self._cancels: dict[str, CancelReason] = {}  # running jobs to cancel if they come back
        self._call_ids = itertools.count(1)
        self._wakeup: TimerHandle | None = None
        self._counters = {
            "dispatched": 0,
            "dispatched_cloud": 0,
            "preemptions": 0,
            "preemptions_declined": 0,
            "cancelled_queued": 0,
            "dispatched_cold": 0,
            "dispatches_refused": 0,
            "dispatches_recovered": 0,
            "recalls": 0,
        }
        self._suspects = OutageSuspects()

    def on_start(self) -> None:
        """Rebuild the ready queues from the store (after a crash or a restart).

        The store first puts loading/running jobs back to queued: no slot runs
        anything now (slots start after the arbiter) and their last reports, told
        before they stopped, are already ahead of this ask in the store's mailbox. Only
        the first chunk comes now; the rest in turns of the mailbox (``ContinueLoad``).
        """
        first = LoadQueue(RELOAD_CHUNK, first=True, recover=True)
        chunk: QueueChunk = ask_while_up(self._store, first)
        self._take_chunk(chunk)
        log.info("arbiter_started", queued=len(chunk.jobs) + chunk.remaining)

    def on_end(self) -> None:
        """Stopped or crashed: drop the pending wake-up timers."""
        for timer in (self._wakeup, self._cloud_wakeup):
            if timer is not None:
                timer.cancel()

    def on_receive(self, message: Any) -> Any:
        """Dispatch on the message type."""
        match message:
            case JobQueued(job=job):
                self._on_job_queued(job)
            case ContinueLoad():
                # Waits on the store, as on_start does: one chunk, decoded in its turn.
                self._take_chunk(ask_while_up(self._store, LoadQueue(RELOAD_CHUNK)))
            case SlotIdle():
                self._on_slot_idle(message)
            case SlotStarted(slot_id=slot_id, job_id=job_id):
                self._on_slot_started(self._slots[slot_id], job_id)
            case Recalled(slot_id=slot_id, job_id=job_id):
                self._on_recalled(self._slots[slot_id], job_id)
            case PreemptionDeclined(slot_id=slot_id, job_id=job_id):
                self._on_preemption_declined(self._slots[slot_id], job_id)
            case CancelQueued(job_id=job_id, reason=reason):
                return self._on_cancel(job_id, reason)
            case TimersDue():
                self._wakeup = None
                for job in self._queue.promote_due(self._clock.now()):
                    self._recall_displaced(job)
                self._dispatch()
            case PauseDispatch():
                self._paused = True
                for slot in self._slots.values():
                    recall(slot)
            case ResumeDispatch():
                self._paused = False
                self._dispatch()
            case BackendUnreachable(slot_id=slot_id, job_id=job_id, started_at=started_at):
                self._on_backend_unreachable(self._slots[slot_id], job_id, started_at)
            case BackendHealthChanged(backend=name, up=up, at=at) if name in self._hosts.states:
                if up:
                    self._hosts.states[name].up_since = at
                self._set_down(name, not up)
            case ResidencyChanged(resident=resident, backend=name) if name in self._hosts.states:
                host = self._hosts.states[name]
                host.tracked = resident
                host.fresh.clear()
            case CatalogChanged(backend=name, models=models) if name in self._hosts.states:
                self._hosts.states[name].catalog = models
                self._dispatch()
            case ApplyPolicy(scheduling=scheduling, retry=retry):
                self._policy, self._retry = scheduling, retry
                self._dispatch()
            case ApplyCloudPolicy(policy=policy):
                self._cloud = policy
                self._dispatch()  # the cloud deadlines follow the new bound
            case QueueSnapshot():
                return self._snapshot()
            case _:
                raise TypeError(f"PriorityArbiter cannot handle {type(message).__name__}")
        return None

    def _on_job_queued(self, job: Job, *, dispatch: bool = True) -> bool:
        """Queue a job told, given back or reloaded; False if it is not queued after all."""
        reason = self._cancels.pop(job.id, None)
        if reason is not None:  # cancelled while it ran (or loaded); it came back instead
            self._cancel_in_store(job.id, reason)
            return False
        now = self._clock.now()
        if not self._queue.add(job, now):
            return False  # already queued (e.g. recovered from the store and told again)
        if job.spec.allow_cloud and any(s.cloud for s in self._slots.values()):
            self._cloud_jobs[job.id] = job
        self._arm_wakeup()
        if job.not_before is None or job.not_before <= now:
            self._recall_displaced(job)
        if dispatch and not self._dispatch() and job.not_before is None:
            self._maybe_preempt(job, now)
        return True

    def _take_chunk(self, chunk: QueueChunk) -> None:
        """Queue a chunk of the reload as told jobs, dispatching once; a job a slot holds
        (told since) may read as queued if the slot's report is behind our ask: skipped."""
        held = {job.id for s in self._slots.values() for job in (s.job, s.next) if job}
        new = [j for j in chunk.jobs if j.id not in held and self._on_job_queued(j, dispatch=False)]
        self._unloaded = chunk.remaining
        if chunk.remaining:
            self.actor_ref.tell(ContinueLoad())
        if not self._dispatch():
            for job in new:
                if job.id in self._queue and job.not_before is None:
                    self._maybe_preempt(job, self._clock.now())

    def _on_slot_idle(self, idle: SlotIdle) -> None:
        """A slot's call ended (``idle.ended``), or a slot instance announced itself."""
        slot = self._slots[idle.slot_id]
        restarted = bool(slot.incarnation) and idle.incarnation != slot.incarnation
        slot.known = True
        slot.incarnation = idle.incarnation
        overtaken = slot.job is not None and idle.ended not in (None, slot.job.id)
        if not overtaken:  # else its next call, begun since, holds another model now
            slot.model_key = idle.model_key
            if idle.model_key is not None and not slot.cloud:
                self._hosts.of(slot).fresh.add(idle.model_key)
        if restarted:
            given = [job for job in (slot.job, slot.next) if job is not None]
            slot.job = slot.next = None
            slot.preempting = slot.recalling = slot.keeps_its_call = False
            slot.preempted_for = None
            for job in given:
                self._recover_dispatch(idle.slot_id, job)
        elif slot.job is not None and slot.job.id == idle.ended:
            self._call_ended(slot)
        self._dispatch()

    def _on_backend_unreachable(self, slot: SlotState, job_id: str, started_at: float) -> None:
        """A local call met an outage: stop dispatch to its backend, unless the call began
        before that backend last came back; a job whose call is the first to find it gone
        is a suspect."""
        slot.outage_met = True
        if slot.cloud or started_at < self._hosts.of(slot).up_since:
            return
        if not self._hosts.of(slot).down:
            self._suspects.first_to_meet(job_id)
        self._set_down(slot.backend, True)

    def _set_down(self, backend: str, down: bool) -> None:
        """Stop dispatch to ``backend`` (and recall what its slots hold next), or resume it."""
        host = self._hosts.states[backend]
        if down == host.down:
            return
        host.down = down
        if down:
            for _, slot in self._hosts.local(backend):
                recall(slot)
        self._dispatch()

    def _call_ended(self, slot: SlotState) -> None:
        """The slot's running job ended: learn from it and forget it."""
        ended, slot.job, slot.preempting = slot.job, None, False
        slot.preempted_for, slot.keeps_its_call = None, False
        assert ended is not None
        if not slot.outage_met:
            self._suspects.ran_without_outage(ended.id)
        slot.outage_met = False
        slot.last_chain = ended.spec.chain_id
        if not slot.cloud and ended.started_at is not None:
            ran = max(0.0, self._clock.now() - ended.started_at)
            self._mean_run_s = 0.8 * self._mean_run_s + 0.2 * ran  # a moving average
        self._cancels.pop(ended.id, None)

    def _on_slot_started(self, slot: SlotState, job_id: str) -> None:
        """The slot started its next job: it is now the running one."""
        if slot.next is None or slot.next.id != job_id:
            return  # handed over while the slot was free: already counted as running
        self._forget_displaced(slot, slot.next)
        if slot.job is not None:
            self._call_ended(slot)  # its SlotIdle is still on the way
        slot.job = slot.next.replace(state=JobState.LOADING, started_at=self._clock.now())
        slot.next, slot.recalling = None, False
        self._count_start(slot.next_swaps)
        reason = self._cancels.get(job_id)
        if reason is not None:  # cancelled while handed over, and the recall came too late
            slot.tell(CancelCall(job_id, reason))
        self._dispatch()

    def _forget_displaced(self, slot: SlotState, job: Job) -> None:
        """``job`` starts on ``slot``: if it swaps the slot's model out, count that model
        gone from the GPU until the ResidencyTracker says otherwise. Loading another model
        may evict it, and the tracker knows only after a poll taken after that load; till
        then, jobs for the model just loaded are the ones that need no swap."""
        if slot.cloud:
            return
        previous = slot.job.spec.model_key if slot.job is not None else slot.model_key
        if previous is None or previous == job.spec.model_key:
            return
        slot.model_key = job.spec.model_key
        host = self._hosts.of(slot)
        host.fresh.discard(previous)
        if host.tracked is not None:
            host.tracked = host.tracked - {previous}

    def _count_start(self, swaps: bool) -> None:
        self._counters["dispatched"] += 1
        self._counters["dispatched_cold"] += swaps

    def _on_preemption_declined(self, slot: SlotState, job_id: str) -> None:
        """The slot kept its call (its client has seen output that cannot be resumed): it is
        no victim while that job runs. The job it was to make way for is given back if the
        slot held it as its next, and may have another slot preempted for it instead."""
        if slot.job is None or slot.job.id != job_id or not slot.preempting:
            return  # stale: that call ended, or the slot restarted
        waiting, slot.preempted_for = slot.preempted_for, None
        slot.preempting, slot.keeps_its_call = False, True
        self._counters["preemptions"] -= 1
        self._counters["preemptions_declined"] += 1
        if waiting is None:
            return
        if slot.next is not None and slot.next.id == waiting.id:
            recall(slot)  # back in the queue, it looks for another victim
        elif waiting.id in self._queue:
            self._maybe_preempt(waiting, self._clock.now())

    def _on_recalled(self, slot: SlotState, job_id: str) -> None:
        """The slot gave its next job back unstarted: it is queued again (or cancelled)."""
        if slot.next is None or slot.next.id != job_id:
            return  # the slot restarted meanwhile; the job was recovered then
        job, slot.next, slot.recalling = slot.next, None, False
        self._counters["recalls"] += 1
        self._on_job_queued(job)

    def _recall_displaced(self, job: Job) -> None:
        """Recall next jobs that ``job``, ready now, should run before."""
        for slot in self._slots.values():
            if slot.next is not None and displaces(
                job, slot.next, None if slot.job is None else slot.job.spec.chain_id
            ):
                recall(slot)

    def _recover_dispatch(self, slot_id: str, given: Job) -> None:
        """A slot restarted while it had ``given``: make sure that job is not lost.

        The old instance reports its jobs back (JobQueued) before it exits, so those
        reports are already here. What can be missing is a Dispatch that died unread
        in the old instance's mailbox: the store then still has the job queued, and
        nobody else holds it, so it goes back in the queue. The store is the judge.
        """
        if given.id in self._queue or any(
            given.id in (s.job and s.job.id, s.next and s.next.id) for s in self._slots.values()
        ):
            return
        job: Job = ask_while_up(self._store, GetJob(given.id))
        if job.state is not JobState.QUEUED:
            return  # it ended, or its report is on its way; the store decides
        self._counters["dispatches_recovered"] += 1
        log.warning("dispatch_recovered", job_id=job.id, slot=slot_id)
        self._on_job_queued(job)

    def _on_cancel(self, job_id: str, reason: CancelReason) -> str:
        job = self._queue.remove(job_id)
        if job is not None:
            self._cancel_in_store(job_id, reason)
            return CancelOutcome.QUEUED
        for slot in self._slots.values():
            if slot.job is not None and slot.job.id == job_id:
                # If the slot restarts instead, the job comes back (JobQueued): cancel it then.
                self._cancels[job_id] = reason
                slot.tell(CancelCall(job_id, reason))
                return CancelOutcome.RUNNING
            if slot.next is not None and slot.next.id == job_id:
                # Handed to a busy slot but not started: cancelled when the slot gives it
                # back, or at once if it started meanwhile.
                self._cancels[job_id] = reason
                recall(slot)
                return CancelOutcome.QUEUED
        queued = JobState.QUEUED
        with contextlib.suppress(JobNotFoundError):  # a chunk of the reload may hold it
            if self._unloaded and ask_while_up(self._store, GetJob(job_id)).state is queued:
                self._cancels[job_id] = reason  # cancelled when it comes
                return CancelOutcome.QUEUED
        return CancelOutcome.NOT_FOUND

    def _cancel_in_store(self, job_id: str, reason: CancelReason) -> None:
        ask_while_up(
            self._store,
            Transition(
                job_id,
                JobState.CANCELLED,
                expected=frozenset({JobState.QUEUED}),
                error=reason.value,
            ),
        )
        self._counters["cancelled_queued"] += 1

    def _dispatch(self) -> bool:
        """Give work to every free slot (placement), then a next job to every busy local one
        (prefetch); True if a free slot got work."""
        if self._paused:
            return False
        now = self._clock.now()
        # The cloud goes first: it takes only jobs that should not wait for a local slot.
        dispatched = bool(self._cloud_jobs) and self._dispatch_cloud(now)
        hosts = self._hosts
        for placed in hosts.place(self._queue, now, self._policy):
            dispatched = self._start(placed, now) or dispatched
        if self._policy.prefetch:
            for slot_id, slot in hosts.local():
                busy = slot.job is not None and slot.next is None and not slot.recalling
                if busy and not hosts.of(slot).down:
                    self._hand_over(slot_id, slot, now)
        self._arm_wakeup()
        return dispatched

    def _start(self, placed: Placed, now: float) -> bool:
        """Give a free slot the job placement chose for it; False (the job kept) if the slot
        cannot take messages."""
        slot, job = self._slots[placed.slot_id], placed.job
        if not self._tell_dispatch(slot, job, now):
            return False
        log.debug("dispatched", job_id=job.id, slot=placed.slot_id, lane=job.spec.lane.value)
        self._forget_displaced(slot, job)
        slot.job = job.replace(state=JobState.LOADING, started_at=now)
        self._hosts.of(slot).last_used = now
        self._count_start(placed.swaps)
        return True

    def _tell_dispatch(self, slot: SlotState, job: Job, now: float) -> bool:
        """Tell ``slot`` to run ``job``; if it cannot take messages, keep the job queued (a
        new instance reports idle)."""
        charge = self._suspects.charge(job.id, job.spec.max_attempts)
        if slot.tell(Dispatch(job, next(self._call_ids), slot.incarnation, charge_outage=charge)):
            return True
        self._queue.add(job, now)
        slot.known = False
        self._counters["dispatches_refused"] += 1
        return False

    def _hand_over(self, slot_id: str, slot: SlotState, now: float) -> None:
        """Give the busy ``slot`` the best job its backend may take next (prefetch).

        A next job that should preempt the running call (internal work over external)
        cancels that call at once, so it starts as soon as the slot is free; a slot that
        declined a preemption, or one that serves the job worse than another victim would,
        gets no such job, which waits for its better slot instead.
        """
        job = self._hosts.pop_for(slot.backend, self._queue, now, self._policy)
        if job is None:
            return
        assert slot.job is not None
        preempts = choose_preemption(job, [SlotView(slot_id, slot.job)], now, self._policy)
        victim = choose_preemption(job, self._hosts.victims(job), now, self._policy)
        if preempts and (slot.keeps_its_call or victim is None or victim.slot_id != slot_id):
            self._queue.add(job, now)  # it wants a GPU now, which another slot gives better
            return
        if not self._tell_dispatch(slot, job, now):
            return
        swaps = job.spec.model_key not in self._hosts.resident(slot.backend)
        slot.next, slot.next_swaps = job, swaps  # counted once it starts (it may come back)
        if preempts and not slot.preempting:
            self._preempt(slot_id, slot, job)

    def _dispatch_cloud(self, now: float) -> bool:
        """Give idle cloud slots the queued jobs that ``send_to_cloud`` routes there, oldest
        first, and arm a wake-up for the next job that will qualify as time passes."""
        idle = [s for s in self._slots.values() if s.cloud and s.known and s.job is None]
        local = [s for s in self._slots.values() if not s.cloud]
        fits = self._hosts.up_fits()  # once per round: a deep queue has many cloud jobs
        busy_local = sum(s.job is not None for s in local)
        depths = self._queue.depths()
        dispatched = False
        next_due: float | None = None
        for job_id, job in list(self._cloud_jobs.items()):
            holder = None  # the local slot holding it as its next job, if one does
            if job_id in self._queue:
                ahead = busy_local + queued_ahead(job, depths)
            else:
                holder = next(
                    (s for s in local if s.next is not None and s.next.id == job_id), None
                )
                if holder is None:
                    del self._cloud_jobs[job_id]  # running locally, or cancelled meanwhile
                    continue
                ahead = busy_local  # only the calls running now are ahead of it
            down = not any(fit.can_run(job.spec.model_key, job.spec.labels) for fit in fits)
            outlook = LocalOutlook(ahead, max(1, len(local)), self._mean_run_s, down)
            if idle and send_to_cloud(job, now, outlook, self._cloud):
                if holder is not None:
                    recall(holder)  # back to the queue first, then to the cloud
                    continue
                self._queue.remove(job_id)
                del self._cloud_jobs[job_id]
                slot = idle.pop()
                slot.job = job.replace(state=JobState.LOADING, started_at=now)
                slot.ref.tell(Dispatch(job, next(self._call_ids)))
                self._counters["dispatched_cloud"] += 1
                dispatched = True
                log.info("dispatched_to_cloud", job_id=job_id, waited=now - job.created_at)
                continue
            due = cloud_deadline(job, outlook, self._cloud)
            if due is not None and due > now and (next_due is None or due < next_due):
                next_due = due
        if self._cloud_wakeup is not None:
            self._cloud_wakeup.cancel()
        due, me = next_due, self.actor_ref
        self._cloud_wakeup = None if due is None else self._timers.send_at(due, me, TimersDue())
        return dispatched

    def _maybe_preempt(self, incoming: Job, now: float) -> None:
        """Preempt the best victim for ``incoming``, unless a slot already makes way for it
        (it was handed over as a busy slot's next job): one internal job, one victim."""
        if any(
            slot.preempted_for is not None and slot.preempted_for.id == incoming.id
            for slot in self._slots.values()
        ):
            return
        victim = choose_preemption(incoming, self._hosts.victims(incoming), now, self._policy)
        if victim is not None:
            self._preempt(victim.slot_id, self._slots[victim.slot_id], incoming)

    def _preempt(self, slot_id: str, slot: SlotState, incoming: Job) -> None:
        """Cancel the slot's running call so ``incoming`` can have the GPU."""
        assert slot.job is not None
        if not slot.tell(CancelCall(slot.job.id, CancelReason.PREEMPTED)):
            return
        slot.preempting, slot.preempted_for = True, incoming
        self._counters["preemptions"] += 1
        log.info("preempting", victim=slot.job.id, slot=slot_id, for_job=incoming.id)

    def _arm_wakeup(self) -> None:
        due = self._queue.next_due()
        if due is None or (
            self._wakeup is not None and not self._wakeup.cancelled and self._wakeup.deadline <= due
        ):
            return
        if self._wakeup is not None:
            self._wakeup.cancel()
        self._wakeup = self._timers.send_at(due, self.actor_ref, TimersDue())

    def _snapshot(self) -> Mapping[str, Any]:
        return arbiter_view(
            self._slots, self._queue.depths(), len(self._queue) + self._unloaded,
            paused=self._paused, hosts=self._hosts, counters=self._counters,
        )  # fmt: skip
