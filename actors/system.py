"""The GpuLane facade: builds the supervision tree, turns calls into messages, holds sinks.

It is not an actor (ARCHITECTURE.md section 2): a host calls it from any thread or
from asyncio; it never awaits a pykka future on an event loop. The actors run under
a root Supervisor (section 7; docs/supervision.md, "gpulane's tree") and address each
other, and are addressed by the facade, through the tree's StableRefs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, cast

import pykka
import structlog

from actors.arbiter import CancelOutcome, PriorityArbiter
from actors.backends.base import Backend, CancelToken
from actors.config import Config
from actors.gpu import GpuSlot
from actors.job_store import JobStore
from actors.rate_limiter import RateLimiter
from actors.residency import ResidencyTracker
from actors.runtime import (
    ActorAddress,
    Backoff,
    ChildExitedError,
    ChildRestartingError,
    ChildSnapshot,
    ChildSpec,
    ChildState,
    ChildUnavailableError,
    Clock,
    ExitReason,
    GetSnapshot,
    HoldBufferFullError,
    StableRef,
    StableRefs,
    Strategy,
    Supervisor,
    SupervisorSnapshot,
    SystemClock,
    Timers,
    WhileRestarting,
)
from actors.sinks import SinkRegistry
from actors.ticket import Ticket
from protocol import (
    CancelReason,
    EmbedResult,
    Job,
    JobSpec,
    JobState,
    Lane,
    RetryPolicy,
    SchedulingPolicy,
    SystemStoppedError,
    ValidationError,
    freeze,
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
from protocol.spec import check_json_data, check_text

__all__ = [
    "DEFAULT_FACTORIES",
    "ChildFactory",
    "GpuFactory",
    "GpuLane",
    "LaneWiring",
    "SlotWiring",
    "SupervisionSettings",
]

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


@dataclasses.dataclass(frozen=True)
class LaneWiring:
    """What a child factory may use to (re)start its actor; read it at start time.

    ``config()`` and ``paused()`` give the settings in force now, so an actor that
    restarts picks up the host's latest ``reload_config`` and ``pause``.
    """

    refs: StableRefs
    slot_ids: tuple[str, ...]
    sinks: SinkRegistry
    clock: Clock
    timers: Timers
    config: Callable[[], Config]
    paused: Callable[[], bool]
    listener: Callable[[Job], None]  # the store's commit listener
    backend: Backend | None  # what the ResidencyTracker polls and pins on (None: slots only)
    cloud_slot_ids: frozenset[str] = frozenset()  # slots on the cloud backend (cloud fallback)


ChildFactory = Callable[[LaneWiring], pykka.ActorRef[Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class SupervisionSettings:
    """The root's restart budget and back-off (docs/supervision.md).

    More than ``intensity`` restarts within ``period_s`` seconds (on the lane's clock)
    stops the tree and reports the failure to the host. ``shutdown_s`` bounds each
    actor's stop; a GPU slot joins its worker within ``slot_join_s`` (less, so its
    report still reaches the store before the supervisor moves on).
    """

    intensity: int = 5
    period_s: float = 10.0
    backoff: Backoff = Backoff(initial_s=0.0)
    shutdown_s: float = 10.0
    slot_join_s: float = 5.0
    call_timeout_s: float = 30.0  # how long a facade call waits through restarts

    def __post_init__(self) -> None:
        if self.slot_join_s >= self.shutdown_s:
            raise ValidationError("slot_join_s", "must be less than shutdown_s")


def backend_slot_factory(backend: Backend, join_s: float = 5.0) -> GpuFactory:
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
            shutdown_timeout_s=join_s,
            residency=wiring.residency,
        )

    return start


def _start_store(wiring: LaneWiring) -> pykka.ActorRef[Any]:
    """The JobStore; recovery of loading/running jobs waits for the arbiter's ask."""
    return JobStore.start(
        wiring.config().store, wiring.clock, listener=wiring.listener, recover_on_open=False
    )


def _start_limiter(wiring: LaneWiring) -> pykka.ActorRef[Any]:
    """The RateLimiter, with the limits in force now; it recounts queued jobs from the store."""
    return RateLimiter.start(
        limits=wiring.config().limits, clock=wiring.clock, store=wiring.refs.ref_for("store")
    )


def _start_residency(wiring: LaneWiring) -> pykka.ActorRef[Any]:
    """The ResidencyTracker; it tells the arbiter (held until the arbiter is up)."""
    return ResidencyTracker.start(
        settings=wiring.config().residency,
        clock=wiring.clock,
        timers=wiring.timers,
        backend=wiring.backend,
        arbiter=wiring.refs.ref_for("arbiter"),
    )


def _start_arbiter(wiring: LaneWiring) -> pykka.ActorRef[Any]:
    """The PriorityArbiter, with the policy and pause state in force now."""
    config = wiring.config()
    return PriorityArbiter.start(
        store=wiring.refs.ref_for("store"),
        slots={slot_id: wiring.refs.ref_for(slot_id) for slot_id in wiring.slot_ids},
        policy=config.scheduling,
        retry=config.retry,
        clock=wiring.clock,
        timers=wiring.timers,
        paused=wiring.paused(),
        cloud_slots=wiring.cloud_slot_ids,
        cloud=config.cloud.policy,
    )


#: The root's children before the GPU slots, in start order (rest_for_one).
_CHILD_ORDER: tuple[str, ...] = ("store", "limiter", "residency", "arbiter")
#: The factory each child starts with; ``GpuLane.start(factories=...)`` replaces some.
DEFAULT_FACTORIES: Mapping[str, ChildFactory] = MappingProxyType(
    {
        "store": _start_store,
        "limiter": _start_limiter,
        "residency": _start_residency,
        "arbiter": _start_arbiter,
    }
)
#: What a message to a child meets while it restarts (docs/supervision.md explains why).
_WHILE_RESTARTING: Mapping[str, WhileRestarting] = MappingProxyType(
    {child_id: WhileRestarting.HOLD for child_id in _CHILD_ORDER}
)
_HOLD_LIMIT = 100_000  # reports from every slot plus submits during a store restart
_SLOT_HOLD_LIMIT = 1_000  # a slot gets a dispatch, cancels, a policy: few messages
_RETRYABLE = (ChildRestartingError, HoldBufferFullError, ChildExitedError)


class GpuLane:
    """A running gpulane: submit jobs, watch them, steer the queue. Start with :meth:`start`."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        timers: Timers,
        sinks: SinkRegistry,
        supervision: SupervisionSettings,
        on_failure: Callable[[ExitReason], None] | None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._timers = timers
        self._sinks = sinks
        self._supervision = supervision
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._stopped = False
        self._paused = False
        self._failure: ExitReason | None = None
        self._released = False
        self._refs = StableRefs()
        self._root: pykka.ActorRef[Any] | None = None
        self._slot_ids: tuple[str, ...] = ()
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
        factories: Mapping[str, ChildFactory] | None = None,
        supervision: SupervisionSettings | None = None,
        on_failure: Callable[[ExitReason], None] | None = None,
        cloud: Backend | None = None,
    ) -> GpuLane:
        """Build and start the supervision tree: store, arbiter, then the GPU slots.

        ``gpu`` replaces the slot actor (tests pass ``actors.testing.FakeGpu``);
        otherwise slots drive ``backend``, or the one ``config.backend`` names.
        ``factories`` replaces other children by id (``"store"``, ``"arbiter"``); a
        factory gets a :class:`LaneWiring` and returns a SupervisedActor's ref.
        ``on_failure(reason)`` is called once if the tree gives up (restart budget
        spent); the lane is stopped then, and every later call raises SystemStoppedError.
        ``backend`` also serves :meth:`embed`. ``cloud`` (or ``config.cloud.enabled``)
        adds ``config.cloud.slots`` cloud slots on that backend (cloud fallback).
        """
        config = config or Config()
        unknown = sorted(set(factories or {}) - set(_CHILD_ORDER))
        if unknown:
            raise ValidationError(
                "factories", f"unknown child {unknown[0]!r}", allowed=_CHILD_ORDER
            )
        clock = clock or SystemClock()
        timers = Timers(clock).start()
        lane = cls(
            config,
            clock,
            timers,
            SinkRegistry(),
            supervision or SupervisionSettings(),
            on_failure,
        )
        try:
            lane._build_tree(gpu, backend, cloud, {**DEFAULT_FACTORIES, **(factories or {})})
        except BaseException:
            lane.stop()
            raise
        return lane

    def _build_tree(
        self,
        gpu: GpuFactory | None,
        backend: Backend | None,
        cloud: Backend | None,
        factories: Mapping[str, ChildFactory],
    ) -> None:
        """Start the root supervisor and wait until every child has had its first start."""
        settings = self._supervision
        config = self._config
        if gpu is None:
            if backend is None:
                backend = self._default_backend()
            gpu = backend_slot_factory(backend, settings.slot_join_s)
        # With ``gpu`` alone (a fake GPU) the tracker learns from the slots only.
        self._embed_backend = backend
        if cloud is None and config.cloud.enabled:
            cloud = self._cloud_backend()
        slot_factories: dict[str, GpuFactory] = {
            f"gpu{i}": gpu for i in range(config.backend.slots)
        }
        if cloud is not None:
            cloud_factory = backend_slot_factory(cloud, settings.slot_join_s)
            slot_factories.update({f"cloud{i}": cloud_factory for i in range(config.cloud.slots)})
        self._slot_ids = tuple(slot_factories)
        self._cloud_slot_ids = frozenset(s for s in self._slot_ids if s.startswith("cloud"))
        wiring = LaneWiring(
            refs=self._refs,
            slot_ids=self._slot_ids,
            sinks=self._sinks,
            clock=self._clock,
            timers=self._timers,
            config=lambda: self._config,
            paused=lambda: self._paused,
            listener=self._committed,
            backend=backend,
            cloud_slot_ids=self._cloud_slot_ids,
        )
        specs = [
            ChildSpec(
                child_id,
                _bind(factories[child_id], wiring),
                shutdown_s=settings.shutdown_s,
                while_restarting=_WHILE_RESTARTING[child_id],
                hold_limit=_HOLD_LIMIT,
            )
            for child_id in _CHILD_ORDER
        ]
        for slot_id in self._slot_ids:  # the arbiter starts before the slots' supervisor
            self._refs.declare(slot_id, WhileRestarting.HOLD, _SLOT_HOLD_LIMIT)
        slot_specs = [
            ChildSpec(
                slot_id,
                _bind_slot(slot_factories[slot_id], slot_id, wiring),
                shutdown_s=settings.shutdown_s,
                while_restarting=WhileRestarting.HOLD,
                hold_limit=_SLOT_HOLD_LIMIT,
            )
            for slot_id in self._slot_ids
        ]
        specs.append(
            ChildSpec(
                "gpus",
                lambda: Supervisor.start(
                    slot_specs,
                    refs=self._refs,
                    strategy=Strategy.ONE_FOR_ONE,
                    intensity=settings.intensity,
                    period_s=settings.period_s,
                    backoff=settings.backoff,
                    timers=self._timers,
                    name="gpus",
                ),
                shutdown_s=settings.shutdown_s * (len(slot_specs) + 1),
            )
        )
        root = Supervisor.start(
            specs,
            refs=self._refs,
            strategy=Strategy.REST_FOR_ONE,
            intensity=settings.intensity,
            period_s=settings.period_s,
            backoff=settings.backoff,
            timers=self._timers,
            name="gpulane",
            on_escalate=self._escalated,
        )
        self._root = root
        self._wait_until_started()
        log.info(
            "gpulane_started",
            slots=len(self._slot_ids) - len(self._cloud_slot_ids),
            cloud_slots=len(self._cloud_slot_ids),
            store=config.store.path,
        )

    def _wait_until_started(self) -> None:
        """Block until each child has started once (or the tree gave up, which raises)."""
        deadline = time.monotonic() + self._supervision.call_timeout_s
        while True:
            if self._failure is not None:
                raise SystemStoppedError(f"gpulane failed to start: {self._failure}")
            snapshot = self.supervision()
            if snapshot is not None and _all_started(snapshot):
                return
            if time.monotonic() > deadline:
                raise SystemStoppedError("gpulane did not start in time")
            time.sleep(0.005)

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
        return self._ticket_for(self._admit_and_insert(InsertJob(spec)), detach)

    def _admit_and_insert(self, insert: InsertJob) -> Job:
        """Ask the RateLimiter, then the store; the admission is bound to the stored job.

        Raises RateLimitedError or QueueFullError (limit, figure, retry_after) when the
        RateLimiter refuses ``spec.caller``.
        """
        spec = insert.spec
        reservation: int = self._ask("limiter", Admit(spec.caller, spec.lane))
        limiter = self._refs.ref_for("limiter")
        try:
            job: Job = self._ask("store", insert, retry_exited=False)
        except BaseException:
            with contextlib.suppress(ChildUnavailableError):
                limiter.tell(ReleaseAdmission(reservation))
            raise
        with contextlib.suppress(ChildUnavailableError):
            limiter.tell(Admitted(reservation, job.id))
        return job

    def _committed(self, job: Job) -> None:
        """The store's commit listener: wake the job's caller; an ended job frees its place."""
        self._sinks.committed(job)
        if job.state.is_terminal:
            with contextlib.suppress(ChildUnavailableError, KeyError):
                self._refs.ref_for("limiter").tell(JobEnded(job))

    def _ticket_for(self, job: Job, detach: bool) -> Ticket:
        sink = self._sinks.register(job.id)
        self._tell_arbiter(JobQueued(job))
        with self._lock:
            self._counters["submitted"] += 1
        return Ticket(job, sink, self._cancel_quietly, detach=detach)

    def embed(
        self,
        model: str,
        inputs: str | Iterable[str],
        *,
        caller: str = "anonymous",
        lane: Lane = Lane.EXTERNAL,
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
        for index, text in enumerate(texts):
            check_text(f"inputs[{index}]", text)
        if not isinstance(model, str) or not model.strip():
            raise ValidationError("model", "must be a non-empty string")
        try:
            frozen = freeze(dict(options or {}))
        except TypeError as exc:
            raise ValidationError("options", str(exc)) from None
        check_json_data("options", frozen)
        backend = self._embed_backend
        if backend is None:
            raise ValidationError(
                "backend", "no backend to embed with", allowed="GpuLane.start(backend=...)"
            )
        # Embeddings skip the GPU queue but not the RateLimiter's embeddings budget.
        self._ask("limiter", Admit(caller, lane, embedding=True))
        token = CancelToken()
        with self._lock:
            if self._stopped:
                raise SystemStoppedError("gpulane is stopped")
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
        outcome = str(self._ask("arbiter", CancelQueued(job_id, reason)))
        if outcome == CancelOutcome.NOT_FOUND:
            self.get(job_id)  # raises JobNotFoundError for an unknown id
        return outcome

    def _cancel_quietly(self, job_id: str) -> None:
        """A caller went away: cancel without waiting, and never raise."""
        if self._stopped or self._failure is not None:
            return
        try:
            self._refs.ref_for("arbiter").tell(CancelQueued(job_id, CancelReason.CALLER_GONE))
        except ChildUnavailableError:
            log.info("cancel_dropped", job_id=job_id)

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
        job: Job = self._ask("store", message)
        return job

    def list(self, **filters: Any) -> tuple[Job, ...]:
        """Jobs matching filters (see ``protocol.messages.ListJobs``), newest first."""
        jobs: tuple[Job, ...] = self._ask("store", ListJobs(**filters))
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
        """Queue depth per lane and priority, the running jobs, resident models, counters,
        and the supervision tree (each child's state and restart count)."""
        queue: Mapping[str, Any] = self._ask("arbiter", QueueSnapshot())
        slots = {slot_id: self._slot_status(slot_id) for slot_id in self._slot_ids}
        residency: Mapping[str, Any] = self._ask("residency", ResidencySnapshot())
        admission: Mapping[str, Any] = self._ask("limiter", LimiterSnapshot())
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
                "jobs": self._ask("store", CountJobs()),
                "counters": MappingProxyType(counters),
                "supervision": _supervision_view(self.supervision()),
            }
        )

    def _slot_status(self, slot_id: str) -> Mapping[str, Any]:
        """A slot's own snapshot, or a placeholder while it restarts."""
        try:
            snapshot: Mapping[str, Any] = self._refs.ref_for(slot_id).ask(
                SlotSnapshot(), timeout=self._supervision.call_timeout_s
            )
        except ChildUnavailableError as error:
            state = "stopped" if self._failure or self._stopped else "restarting"
            log.debug("slot_status_unavailable", slot=slot_id, error=str(error))
            return MappingProxyType(
                {
                    "slot_id": slot_id,
                    "job_id": None,
                    "model_key": None,
                    "since": None,
                    "cancelling": None,
                    "state": state,
                }
            )
        return MappingProxyType({**snapshot, "state": "running"})

    def supervision(self) -> SupervisorSnapshot | None:
        """The root supervisor's snapshot (children, states, restart counts); None once stopped."""
        root = self._root
        if root is None:
            return None
        try:
            snapshot: SupervisorSnapshot = root.ask(
                GetSnapshot(), block=True, timeout=self._supervision.call_timeout_s
            )
        except (pykka.ActorDeadError, pykka.Timeout):
            return None
        return snapshot

    def ref_for(self, child_id: str) -> StableRef:
        """The stable address of a child ("store", "arbiter", "gpu0", ...).

        For tests and diagnostics, such as telling a child a fault to inject; hosts
        should use the facade's methods.
        """
        return self._refs.ref_for(child_id)

    def pause(self) -> None:
        """Stop starting new jobs; running calls finish. Kept across an arbiter restart."""
        self._check_running()
        self._paused = True
        self._tell_arbiter(PauseDispatch())

    def resume(self) -> None:
        """Start dispatching again."""
        self._check_running()
        self._paused = False
        self._tell_arbiter(ResumeDispatch())

    def reload_config(self, config: Config) -> None:
        """Apply new scheduling (active hours), retry, limits and residency settings.

        The queue, the buckets' fill and the counters are kept.
        """
        self._check_running()
        if config.store != self._config.store:
            raise ValidationError(
                "store", "the store cannot change while running", allowed="a restart"
            )
        if config.backend != self._config.backend:
            raise ValidationError(
                "backend", "the backend cannot change while running", allowed="a restart"
            )
        self._config = config  # first, so an actor that restarts meanwhile starts with it
        message = ApplyPolicy(config.scheduling, config.retry)
        self._tell_arbiter(message)
        for child_id, update in (
            *((slot_id, message) for slot_id in self._slot_ids),
            ("limiter", ApplyLimits(config.limits)),
            ("residency", ApplyResidency(config.residency)),
        ):
            # A child that is restarting reads the new config when it starts.
            with contextlib.suppress(ChildUnavailableError):
                self._refs.ref_for(child_id).tell(update)
        log.info("config_reloaded")

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._config

    @property
    def clock(self) -> Clock:
        """The clock every actor runs on."""
        return self._clock

    @property
    def failure(self) -> ExitReason | None:
        """Why the tree gave up, if it did (the lane is stopped then)."""
        return self._failure

    def stop(self) -> None:
        """Stop the tree, last started first; running calls go back to the queue. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        root = self._root
        if root is not None:
            try:
                root.stop(block=True, timeout=self._supervision.shutdown_s * 4)
            except pykka.Timeout:
                log.error("gpulane_stop_timeout")
        with self._lock:
            pending = list(self._embed_calls)
        for token in pending:
            token.cancel()
        if self._embed_pool is not None:
            self._embed_pool.shutdown(wait=True, cancel_futures=True)
        self._sinks.fail_all(SystemStoppedError("gpulane was stopped before the job ended"))
        self._release()
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

    # --- failure at the top -----------------------------------------------------------

    def _escalated(self, reason: ExitReason) -> None:
        """The root gave up (its tree is already stopped): fail waiters, tell the host.

        Runs on the root supervisor's thread; it only records, wakes and releases, so
        it returns promptly and nothing waits on a dead tree.
        """
        self._failure = reason
        log.error("gpulane_failed", reason=str(reason))
        error = SystemStoppedError(f"gpulane stopped after a failure: {reason}")
        failed = self._sinks.fail_all(error)
        log.info("waiting_callers_failed", count=failed)
        if self._on_failure is not None:
            try:
                self._on_failure(reason)
            except Exception:
                log.exception("on_failure_callback_failed")
        self._release()

    def _release(self) -> None:
        """Stop the timer thread and what the lane owns (a backend, a simulated server)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._timers.stop()
        for release in reversed(self._owned):
            release()

    def _check_running(self) -> None:
        if self._failure is not None:
            raise SystemStoppedError(f"gpulane stopped after a failure: {self._failure}")
        if self._stopped:
            raise SystemStoppedError("gpulane is stopped")

    # --- talking to the tree ----------------------------------------------------------

    def _tell_arbiter(self, message: Any) -> None:
        """Tell the arbiter; while it restarts the message is held for the next instance."""
        self._check_running()
        try:
            self._refs.ref_for("arbiter").tell(message)
        except ChildUnavailableError as error:
            self._check_running()
            raise SystemStoppedError(f"the arbiter cannot take messages: {error}") from error

    def _ask(self, child_id: str, message: Any, *, retry_exited: bool = True) -> Any:
        """Ask a child, waiting through its restarts up to ``call_timeout_s``.

        A child that is restarting holds the ask (HOLD) or refuses it at once
        (FAIL_FAST); either way it is tried again until the deadline. An instance
        that died with the ask unanswered (ChildExitedError) is retried only for
        reads: a submit that met it is reported to the caller as not acknowledged
        (ChildExitedError), so a retry can never store a job twice. Once the tree
        has given up, SystemStoppedError with the reason.
        """
        self._check_running()
        ref = self._refs.ref_for(child_id)
        deadline = time.monotonic() + self._supervision.call_timeout_s
        while True:
            try:
                return ref.ask(message, timeout=max(0.0, deadline - time.monotonic()))
            except (ChildUnavailableError, pykka.Timeout) as error:
                self._check_running()
                retry = isinstance(error, _RETRYABLE) and (
                    retry_exited or not isinstance(error, ChildExitedError)
                )
                if not retry or time.monotonic() > deadline:
                    raise
                log.info("call_retried", child=child_id, error=type(error).__name__)
                time.sleep(0.01)


def _bind(factory: ChildFactory, wiring: LaneWiring) -> Callable[[], pykka.ActorRef[Any]]:
    """A ChildSpec factory: ``factory`` applied to the wiring at each (re)start."""
    return lambda: factory(wiring)


def _bind_slot(gpu: GpuFactory, slot_id: str, wiring: LaneWiring) -> Callable[[], Any]:
    """A ChildSpec factory for one GPU slot, wired with the settings in force at its start."""

    def start() -> pykka.ActorRef[Any]:
        config = wiring.config()
        return gpu(
            SlotWiring(
                slot_id=slot_id,
                store=wiring.refs.ref_for("store"),
                arbiter=wiring.refs.ref_for("arbiter"),
                sinks=wiring.sinks,
                clock=wiring.clock,
                timers=wiring.timers,
                policy=config.scheduling,
                retry=config.retry,
                residency=wiring.refs.ref_for("residency"),
            )
        )

    return start


def _all_started(snapshot: SupervisorSnapshot) -> bool:
    """True when every child (and every nested supervisor's child) has started."""
    for child in snapshot.children:
        if child.state is not ChildState.RUNNING:
            return False
        if child.supervisor is not None and not _all_started(child.supervisor):
            return False
    return True


def _supervision_view(snapshot: SupervisorSnapshot | None) -> Mapping[str, Any]:
    """The tree as plain data for ``status()``: per child its state, restarts and last exit."""
    if snapshot is None:
        return MappingProxyType({"state": "stopped", "restarts": 0, "children": {}})
    children: dict[str, Mapping[str, Any]] = {}

    def add(child: ChildSnapshot) -> None:
        children[child.child_id] = MappingProxyType(
            {
                "state": child.state.value,
                "restarts": child.restarts,
                "exits": child.exits,
                "last_exit": None if child.last_exit is None else str(child.last_exit),
            }
        )
        if child.supervisor is not None:
            for grandchild in child.supervisor.children:
                add(grandchild)

    for child in snapshot.children:
        add(child)
    return MappingProxyType(
        {"state": "running", "restarts": snapshot.restarts, "children": MappingProxyType(children)}
    )
