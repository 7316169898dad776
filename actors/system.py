"""The GpuLane facade: wires the actors, turns calls into messages, holds the callers' sinks.

It is not an actor (ARCHITECTURE.md section 2): a host calls it from any thread or
from asyncio; it never awaits a pykka future on an event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any

import pykka
import structlog

from actors.arbiter import CancelOutcome, PriorityArbiter
from actors.backends.base import Backend
from actors.clock import Clock, SystemClock
from actors.config import Config
from actors.gpu import GpuSlot
from actors.job_store import JobStore
from actors.rate_limiter import RateLimiter
from actors.refs import ActorAddress, Forward
from actors.residency import ResidencyTracker
from actors.sinks import SinkRegistry
from actors.ticket import Ticket
from actors.timers import Timers
from protocol import (
    CancelReason,
    Job,
    JobSpec,
    JobState,
    RetryPolicy,
    SchedulingPolicy,
    SystemStoppedError,
    ValidationError,
)
from protocol.messages import (
    Admit,
    Admitted,
    ApplyLimits,
    ApplyPolicy,
    ApplyResidency,
    CancelQueued,
    CountJobs,
    GetJob,
    GetJobBySeq,
    InsertJob,
    JobEnded,
    JobQueued,
    LimiterSnapshot,
    ListJobs,
    PauseDispatch,
    QueueSnapshot,
    ReleaseAdmission,
    ResidencySnapshot,
    ResumeDispatch,
    SlotSnapshot,
)

__all__ = ["GpuFactory", "GpuLane", "SlotWiring"]

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class SlotWiring:
    """Everything a GPU slot actor is wired to; a GpuFactory turns it into a running actor."""

    slot_id: str
    store: ActorAddress
    arbiter: ActorAddress
    sinks: SinkRegistry
    clock: Clock
    timers: Timers
    policy: SchedulingPolicy
    retry: RetryPolicy
    residency: ActorAddress | None = None  # the ResidencyTracker, told of loads and switches


GpuFactory = Callable[[SlotWiring], pykka.ActorRef[Any]]


def backend_slot_factory(backend: Backend) -> GpuFactory:
    """A GpuFactory that runs real GpuSlots on ``backend``."""

    def start(wiring: SlotWiring) -> pykka.ActorRef[Any]:
        return GpuSlot.start(
            slot_id=wiring.slot_id,
            backend=backend,
            store=wiring.store,
            arbiter=wiring.arbiter,
            sinks=wiring.sinks,
            clock=wiring.clock,
            timers=wiring.timers,
            policy=wiring.policy,
            retry=wiring.retry,
            rng=random.Random(),
            residency=wiring.residency,
        )

    return start


class GpuLane:
    """A running gpulane: submit jobs, watch them, steer the queue. Start with :meth:`start`."""

    def __init__(self, config: Config, clock: Clock, timers: Timers, sinks: SinkRegistry) -> None:
        self._config = config
        self._clock = clock
        self._timers = timers
        self._sinks = sinks
        self._lock = threading.Lock()
        self._stopped = False
        self._store: pykka.ActorRef[Any] | None = None
        self._arbiter: pykka.ActorRef[Any] | None = None
        self._limiter: pykka.ActorRef[Any] | None = None
        self._residency: pykka.ActorRef[Any] | None = None
        self._slots: dict[str, pykka.ActorRef[Any]] = {}
        self._owned: list[Callable[[], None]] = []
        self._counters = {"submitted": 0, "cancel_requests": 0, "retries_requested": 0}

    @classmethod
    def start(
        cls,
        config: Config | None = None,
        *,
        gpu: GpuFactory | None = None,
        backend: Backend | None = None,
        clock: Clock | None = None,
    ) -> GpuLane:
        """Start the actors: store, arbiter, then the GPU slots.

        ``gpu`` replaces the slot actor (tests pass ``actors.testing.FakeGpu``);
        otherwise slots drive ``backend``, or the one ``config.backend`` names. The
        ResidencyTracker polls and pins on ``backend`` (or the one made from the config),
        and without one (``gpu`` alone) learns from the slots only.
        """
        config = config or Config()
        clock = clock or SystemClock()
        timers = Timers(clock).start()
        lane = cls(config, clock, timers, SinkRegistry())
        try:
            lane._wire(gpu, backend)
        except BaseException:
            lane.stop()
            raise
        return lane

    def _wire(self, gpu: GpuFactory | None, backend: Backend | None) -> None:
        config = self._config
        if gpu is None:
            if backend is None:
                backend = self._default_backend()
            gpu = backend_slot_factory(backend)
        self._store = JobStore.start(config.store, self._clock, listener=self._committed)
        slot_ids = [f"gpu{i}" for i in range(config.backend.slots)]
        forwards = {slot_id: Forward(slot_id) for slot_id in slot_ids}
        arbiter_address = Forward("arbiter")
        self._limiter = RateLimiter.start(
            limits=config.limits, clock=self._clock, store=self._store
        )
        self._residency = ResidencyTracker.start(
            settings=config.residency,
            clock=self._clock,
            timers=self._timers,
            backend=backend,
            arbiter=arbiter_address,
        )
        self._arbiter = PriorityArbiter.start(
            store=self._store,
            slots=forwards,
            policy=config.scheduling,
            retry=config.retry,
            clock=self._clock,
            timers=self._timers,
        )
        arbiter_address.point_at(self._arbiter)
        for slot_id in slot_ids:
            ref = gpu(
                SlotWiring(
                    slot_id=slot_id,
                    store=self._store,
                    arbiter=arbiter_address,
                    sinks=self._sinks,
                    clock=self._clock,
                    timers=self._timers,
                    policy=config.scheduling,
                    retry=config.retry,
                    residency=self._residency,
                )
            )
            forwards[slot_id].point_at(ref)
            self._slots[slot_id] = ref
        log.info("gpulane_started", slots=len(slot_ids), store=config.store.path)

    def _committed(self, job: Job) -> None:
        """The store's commit listener: wake the job's caller; an ended job frees its place."""
        self._sinks.committed(job)
        limiter = self._limiter
        if job.state.is_terminal and limiter is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                limiter.tell(JobEnded(job))

    def _default_backend(self) -> Backend:
        from actors.backends.ollama import OllamaBackend

        settings = self._config.backend
        if settings.kind == "simulated":
            from actors.backends.simulated import SimulatedOllama

            server = SimulatedOllama()
            url = server.start()
            self._owned.append(server.stop)
        else:
            url = settings.url
        backend = OllamaBackend(url, timeout=settings.request_timeout_s)
        self._owned.append(backend.close)
        return backend

    # --- the public surface ---------------------------------------------------------

    def submit(self, spec: JobSpec, *, detach: bool = False) -> Ticket:
        """Queue a job durably and return its ticket once the insert is committed.

        Raises RateLimitedError or QueueFullError (limit, figure, retry_after) when the
        RateLimiter refuses ``spec.caller``.
        """
        if not isinstance(spec, JobSpec):
            raise ValidationError("spec", f"must be a JobSpec, got {type(spec).__name__}")
        return self._ticket_for(self._admit_and_insert(InsertJob(spec)), detach)

    def _admit_and_insert(self, insert: InsertJob) -> Job:
        """Ask the RateLimiter, then the store; the admission is bound to the stored job."""
        limiter = self._limiter_ref()
        reservation: int = limiter.ask(Admit(insert.spec.caller, insert.spec.lane), block=True)
        try:
            job: Job = self._ask_store(insert)
        except BaseException:
            limiter.tell(ReleaseAdmission(reservation))
            raise
        limiter.tell(Admitted(reservation, job.id))
        return job

    def _ticket_for(self, job: Job, detach: bool) -> Ticket:
        sink = self._sinks.register(job.id)
        self._arbiter_ref().tell(JobQueued(job))
        with self._lock:
            self._counters["submitted"] += 1
        return Ticket(job, sink, self._cancel_quietly, detach=detach)

    def cancel(self, job_id: str, reason: CancelReason = CancelReason.USER) -> str:
        """Cancel a queued or running job; says which it was ('queued', 'running', 'not_found')."""
        with self._lock:
            self._counters["cancel_requests"] += 1
        outcome = str(self._ask_arbiter(CancelQueued(job_id, reason)))
        if outcome == CancelOutcome.NOT_FOUND:
            self.get(job_id)  # raises JobNotFoundError for an unknown id
        return outcome

    def _cancel_quietly(self, job_id: str) -> None:
        """A caller went away: cancel without waiting, and never raise."""
        if self._stopped or self._arbiter is None:
            return
        with contextlib.suppress(pykka.ActorDeadError):
            self._arbiter.tell(CancelQueued(job_id, CancelReason.CALLER_GONE))

    def retry(self, job_id: str, *, detach: bool = False) -> Ticket:
        """Run a failed or cancelled job again, as a new job with the same spec."""
        old = self.get(job_id)
        if old.state not in (JobState.FAILED, JobState.CANCELLED):
            raise ValidationError(
                "job_id", f"job {job_id} is {old.state.value}", allowed="a failed or cancelled job"
            )
        with self._lock:
            self._counters["retries_requested"] += 1
        job = self._admit_and_insert(InsertJob(old.spec, retry_of=old.id))
        return self._ticket_for(job, detach)

    def get(self, job_id: str | int) -> Job:
        """A job by its id, or by its sequence number."""
        message = GetJobBySeq(job_id) if isinstance(job_id, int) else GetJob(job_id)
        job: Job = self._ask_store(message)
        return job

    def list(self, **filters: Any) -> tuple[Job, ...]:
        """Jobs matching filters (see ``protocol.messages.ListJobs``), newest first."""
        jobs: tuple[Job, ...] = self._ask_store(ListJobs(**filters))
        return jobs

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until a job ends (for jobs submitted elsewhere, e.g. detached)."""
        sink = self._sinks.register(job_id)
        job = self.get(job_id)
        if job.state.is_terminal:
            self._sinks.committed(job)
        final = sink.wait(timeout)
        if final is None:
            raise TimeoutError(f"job {job_id} still running after {timeout}s")
        return final

    def status(self) -> Mapping[str, Any]:
        """Queue depth per lane and priority, the running jobs, resident models, counters."""
        queue: Mapping[str, Any] = self._ask_arbiter(QueueSnapshot())
        slots: dict[str, Mapping[str, Any]] = {
            slot_id: ref.ask(SlotSnapshot(), block=True) for slot_id, ref in self._slots.items()
        }
        residency: Mapping[str, Any] = self._ask(self._residency, ResidencySnapshot())
        admission: Mapping[str, Any] = self._ask(self._limiter, LimiterSnapshot())
        with self._lock:
            counters: dict[str, Any] = dict(self._counters)
        counters.update(queue["counters"])
        counters["loading_s"] = residency["counters"]["loading_s"]
        return MappingProxyType(
            {
                "paused": queue["paused"],
                "queued": queue["queued"],
                "depth": queue["depth"],
                "slots": MappingProxyType(slots),
                "resident_models": tuple(  # loaded, or being loaded by a running call
                    sorted(
                        set(residency["resident"])
                        | {s["model_key"] for s in slots.values() if s["job_id"]}
                    )
                ),
                "residency": residency,
                "admission": admission,
                "jobs": self._ask_store(CountJobs()),
                "counters": MappingProxyType(counters),
            }
        )

    def pause(self) -> None:
        """Stop starting new jobs; running calls finish."""
        self._arbiter_ref().tell(PauseDispatch())

    def resume(self) -> None:
        """Start dispatching again."""
        self._arbiter_ref().tell(ResumeDispatch())

    def reload_config(self, config: Config) -> None:
        """Apply new scheduling (active hours), retry, limits and residency settings.

        The queue, the buckets' fill and the counters are kept.
        """
        if config.store != self._config.store:
            raise ValidationError(
                "store", "the store cannot change while running", allowed="a restart"
            )
        if config.backend != self._config.backend:
            raise ValidationError(
                "backend", "the backend cannot change while running", allowed="a restart"
            )
        message = ApplyPolicy(config.scheduling, config.retry)
        self._arbiter_ref().tell(message)
        for ref in self._slots.values():
            ref.tell(message)
        if self._limiter is not None:
            self._limiter.tell(ApplyLimits(config.limits))
        if self._residency is not None:
            self._residency.tell(ApplyResidency(config.residency))
        self._config = config
        log.info("config_reloaded")

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._config

    @property
    def clock(self) -> Clock:
        """The clock every actor runs on."""
        return self._clock

    def stop(self) -> None:
        """Stop in reverse start order; running calls go back to the queue. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for ref in reversed(list(self._slots.values())):
            ref.stop()
        for ref in (self._arbiter, self._residency, self._limiter, self._store):
            if ref is not None:
                ref.stop()
        self._timers.stop()
        for release in reversed(self._owned):
            release()
        log.info("gpulane_stopped")

    def __enter__(self) -> GpuLane:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _arbiter_ref(self) -> pykka.ActorRef[Any]:
        if self._stopped or self._arbiter is None:
            raise SystemStoppedError("gpulane is stopped")
        return self._arbiter

    def _limiter_ref(self) -> pykka.ActorRef[Any]:
        if self._stopped or self._limiter is None:
            raise SystemStoppedError("gpulane is stopped")
        return self._limiter

    def _ask(self, ref: pykka.ActorRef[Any] | None, message: Any) -> Any:
        if self._stopped or ref is None:
            raise SystemStoppedError("gpulane is stopped")
        return ref.ask(message, block=True)

    def _ask_arbiter(self, message: Any) -> Any:
        return self._arbiter_ref().ask(message, block=True)

    def _ask_store(self, message: Any) -> Any:
        if self._stopped or self._store is None:
            raise SystemStoppedError("gpulane is stopped")
        return self._store.ask(message)
