"""The GpuLane facade: wires the actors, turns calls into messages, holds the callers' sinks.

It is not an actor (ARCHITECTURE.md section 2): a host calls it from any thread or
from asyncio; it never awaits a pykka future on an event loop.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, cast

import pykka
import structlog

from actors.arbiter import CancelOutcome, PriorityArbiter
from actors.backends.base import Backend, CancelToken
from actors.clock import Clock, SystemClock
from actors.config import Config
from actors.gpu import GpuSlot
from actors.job_store import JobStore
from actors.refs import ActorAddress, Forward
from actors.sinks import SinkRegistry
from actors.ticket import Ticket
from actors.timers import Timers
from protocol import (
    CancelReason,
    EmbedResult,
    Job,
    JobSpec,
    JobState,
    RetryPolicy,
    SchedulingPolicy,
    SystemStoppedError,
    ValidationError,
    freeze,
)
from protocol.messages import (
    ApplyPolicy,
    CancelQueued,
    CountJobs,
    GetJob,
    GetJobBySeq,
    InsertJob,
    JobQueued,
    ListJobs,
    PauseDispatch,
    QueueSnapshot,
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
        self._slots: dict[str, pykka.ActorRef[Any]] = {}
        self._owned: list[Callable[[], None]] = []
        self._counters = {"submitted": 0, "cancel_requests": 0, "retries_requested": 0}
        self._embed_backend: Backend | None = None
        self._embed_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._embed_calls: set[CancelToken] = set()

    @classmethod
    def start(
        cls,
        config: Config | None = None,
        *,
        gpu: GpuFactory | None = None,
        backend: Backend | None = None,
        clock: Clock | None = None,
        cloud: Backend | None = None,
    ) -> GpuLane:
        """Start the actors: store, arbiter, then the GPU slots.

        ``gpu`` replaces the slot actor (tests pass ``actors.testing.FakeGpu``);
        otherwise slots drive ``backend``, or the one ``config.backend`` names.
        ``backend`` also serves :meth:`embed`. ``cloud`` (or ``config.cloud.enabled``)
        adds ``config.cloud.slots`` cloud slots on that backend (cloud fallback).
        """
        config = config or Config()
        clock = clock or SystemClock()
        timers = Timers(clock).start()
        lane = cls(config, clock, timers, SinkRegistry())
        try:
            lane._wire(gpu, backend, cloud)
        except BaseException:
            lane.stop()
            raise
        return lane

    def _wire(self, gpu: GpuFactory | None, backend: Backend | None, cloud: Backend | None) -> None:
        config = self._config
        if gpu is None:
            if backend is None:
                backend = self._default_backend()
            gpu = backend_slot_factory(backend)
        self._embed_backend = backend
        if cloud is None and config.cloud.enabled:
            cloud = self._cloud_backend()
        self._store = JobStore.start(config.store, self._clock, listener=self._sinks.committed)
        factories = {f"gpu{i}": gpu for i in range(config.backend.slots)}
        cloud_ids = frozenset(f"cloud{i}" for i in range(config.cloud.slots) if cloud is not None)
        if cloud is not None:
            factories.update({slot_id: backend_slot_factory(cloud) for slot_id in cloud_ids})
        forwards = {slot_id: Forward(slot_id) for slot_id in factories}
        arbiter_address = Forward("arbiter")
        self._arbiter = PriorityArbiter.start(
            store=self._store,
            slots=forwards,
            policy=config.scheduling,
            retry=config.retry,
            clock=self._clock,
            timers=self._timers,
            cloud_slots=cloud_ids,
            cloud=config.cloud.policy,
        )
        arbiter_address.point_at(self._arbiter)
        for slot_id, factory in factories.items():
            ref = factory(
                SlotWiring(
                    slot_id=slot_id,
                    store=self._store,
                    arbiter=arbiter_address,
                    sinks=self._sinks,
                    clock=self._clock,
                    timers=self._timers,
                    policy=config.scheduling,
                    retry=config.retry,
                )
            )
            forwards[slot_id].point_at(ref)
            self._slots[slot_id] = ref
        log.info(
            "gpulane_started",
            slots=len(factories) - len(cloud_ids),
            cloud_slots=len(cloud_ids),
            store=config.store.path,
        )

    def _default_backend(self) -> Backend:
        from actors.backends.ollama import OllamaBackend
        from actors.backends.openai_compat import OpenAICompatBackend, ResumeMode

        settings = self._config.backend
        if settings.kind == "openai":
            resume = cast(ResumeMode, settings.resume)  # BackendSettings checked it
            openai = OpenAICompatBackend(
                settings.url, resume=resume, timeout=settings.request_timeout_s
            )
            self._owned.append(openai.close)
            return openai
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

    def _cloud_backend(self) -> Backend:
        from actors.backends.anthropic import AnthropicBackend

        settings = self._config.cloud
        key = os.environ.get(settings.api_key_env, "")
        if not key:
            raise ValidationError(
                "cloud.api_key_env",
                f"cloud fallback is on but ${settings.api_key_env} is empty",
                allowed="an Anthropic API key in that environment variable",
            )
        cloud = AnthropicBackend(
            key,
            model=settings.model,
            base_url=settings.url,
            max_tokens=settings.max_tokens,
            timeout=settings.request_timeout_s,
        )
        self._owned.append(cloud.close)
        return cloud

    # --- the public surface ---------------------------------------------------------

    def submit(self, spec: JobSpec, *, detach: bool = False) -> Ticket:
        """Queue a job durably and return its ticket once the insert is committed."""
        if not isinstance(spec, JobSpec):
            raise ValidationError("spec", f"must be a JobSpec, got {type(spec).__name__}")
        job: Job = self._ask_store(InsertJob(spec))
        return self._ticket_for(job, detach)

    def _ticket_for(self, job: Job, detach: bool) -> Ticket:
        sink = self._sinks.register(job.id)
        self._arbiter_ref().tell(JobQueued(job))
        with self._lock:
            self._counters["submitted"] += 1
        return Ticket(job, sink, self._cancel_quietly, detach=detach)

    def embed(
        self,
        model: str,
        inputs: str | Iterable[str],
        *,
        caller: str = "anonymous",
        options: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> EmbedResult:
        """Embed ``inputs`` with ``model`` straight on the backend, bypassing the GPU queue.

        Embedding calls are short and the embedding model stays resident beside the chat
        model (ARCHITECTURE.md section 3), so they run concurrently on a small thread
        pool (``backend.embed_workers``), never waiting behind a long chat call. Blocks
        until the vectors come back; after ``timeout`` seconds the call is cancelled
        (its connection dropped) and TimeoutError raised.
        """
        texts = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValidationError("inputs", "must be a string or a non-empty list of strings")
        backend = self._embed_backend
        if backend is None:
            raise ValidationError(
                "backend", "no backend to embed with", allowed="GpuLane.start(backend=...)"
            )
        frozen = freeze(dict(options or {}))
        token = CancelToken()
        with self._lock:
            if self._stopped:
                raise SystemStoppedError("gpulane is stopped")
            # Admission: the rate limiter's Admit for (caller, len(texts)) goes here, before
            # the call; embeddings are limited by it, not by the GPU queue.
            if self._embed_pool is None:
                self._embed_pool = concurrent.futures.ThreadPoolExecutor(
                    self._config.backend.embed_workers, thread_name_prefix="gpulane-embed"
                )
            self._embed_calls.add(token)
            future = self._embed_pool.submit(backend.embed, model, texts, frozen, token)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            token.cancel()
            raise TimeoutError(f"embedding with {model} took over {timeout}s") from None
        finally:
            with self._lock:
                self._embed_calls.discard(token)
            log.debug("embedded", caller=caller, model=model, inputs=len(texts))

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
        job: Job = self._ask_store(InsertJob(old.spec, retry_of=old.id))
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
        with self._lock:
            counters = dict(self._counters)
        counters.update(queue["counters"])
        return MappingProxyType(
            {
                "paused": queue["paused"],
                "queued": queue["queued"],
                "depth": queue["depth"],
                "slots": MappingProxyType(slots),
                "resident_models": tuple(
                    sorted({s["model_key"] for s in slots.values() if s["model_key"]})
                ),
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
        """Apply new scheduling and retry settings; the queue and the counters are kept."""
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
        with self._lock:
            pending = list(self._embed_calls)
        for token in pending:
            token.cancel()
        if self._embed_pool is not None:
            self._embed_pool.shutdown(wait=True, cancel_futures=True)
        for ref in (self._arbiter, self._store):
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

    def _ask_arbiter(self, message: Any) -> Any:
        return self._arbiter_ref().ask(message, block=True)

    def _ask_store(self, message: Any) -> Any:
        if self._stopped or self._store is None:
            raise SystemStoppedError("gpulane is stopped")
        return self._store.ask(message)
