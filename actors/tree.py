"""The lane's supervision tree, declared in one place (docs/architecture.md section 7).

:func:`lane_tree` is gpulane's OTP ``init/1``: a pure function from the settings, the
wiring and the injected factories to the root supervisor's spec. It starts nothing; the
facade hands the spec to ``Supervisor.start_spec``, and a test can check the tree's
shape without a thread. The root is rest_for_one over store, limiter, one
ResidencyTracker per backend (``actors.hosts.tracker_id_for``) and arbiter (each later
child depends on the earlier ones), then a nested one_for_one ``gpus`` supervisor for
every backend's slots, so one slot crashing does not restart its siblings, then the
webhook delivery actor and the Alerter, which read the others and so come last; the
Alerter, last of all, restarts nothing else when it crashes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import pykka

from actors.alerts import Alerter, Alerting
from actors.arbiter import PriorityArbiter
from actors.backends.base import Backend
from actors.config import CLOUD_BACKEND, Config
from actors.gpu import GpuSlot
from actors.hosts import tracker_id_for
from actors.job_store import JobStore
from actors.rate_limiter import RateLimiter
from actors.residency import ResidencyTracker
from actors.runtime import (
    ActorAddress,
    Backoff,
    ChildSpec,
    ChildUnavailableError,
    Clock,
    StableRefs,
    Strategy,
    SupervisorSpec,
    Timers,
    WhileRestarting,
)
from actors.sinks import SinkRegistry
from actors.webhooks import WebhookDelivery
from protocol import (
    LOCAL_BACKEND,
    Job,
    ResidencySettings,
    RetryPolicy,
    SchedulingPolicy,
    ValidationError,
)
from protocol.cluster import LeaseHold
from protocol.messages import WebhookDue

__all__ = [
    "CHILD_ORDER",
    "DEFAULT_FACTORIES",
    "WATCHERS",
    "ChildFactory",
    "GpuFactory",
    "LaneWiring",
    "SlotWiring",
    "SupervisionSettings",
    "backend_slots",
    "lane_tree",
]


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
    residency: ActorAddress | None = None  # its backend's ResidencyTracker (None: cloud)
    pins: ResidencySettings = ResidencySettings()  # a pinned model's calls carry its keep_alive
    backend: str = LOCAL_BACKEND  # the name of the backend the slot drives (CLOUD_BACKEND)


GpuFactory = Callable[[SlotWiring], pykka.ActorRef[Any]]


@dataclasses.dataclass(frozen=True)
class LaneWiring:
    """What a child factory may use to (re)start its actor; read it at start time.

    ``config()`` and ``paused()`` give the settings in force now, so an actor that
    restarts picks up the host's latest ``reload_config`` and ``pause``. The
    ``"residency"`` factory is called once per backend, with ``backend_name`` and
    ``backend`` naming that backend.
    """

    refs: StableRefs
    slot_ids: tuple[str, ...]
    sinks: SinkRegistry
    clock: Clock
    timers: Timers
    config: Callable[[], Config]
    paused: Callable[[], bool]
    listener: Callable[[Job], None]  # the store's commit listener
    alerting: Alerting  # the Alerter's rules and webhook, kept by the facade across restarts
    cloud_slot_ids: frozenset[str] = frozenset()  # slots on the cloud backend (cloud fallback)
    # each local slot's backend name, by slot id (cloud slots have none)
    slot_backends: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # each backend's client, by name: what its tracker polls and pins on (None: slots only)
    backends: Mapping[str, Backend | None] = dataclasses.field(default_factory=dict)
    backend_name: str = LOCAL_BACKEND  # a tracker's backend (see the class docstring)
    backend: Backend | None = None  # ... and its client
    lease: LeaseHold | None = None  # the leader's lease on PostgreSQL: the store's fence


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


def backend_slots(backend: Backend, join_s: float = 5.0) -> GpuFactory:
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
            pins=wiring.pins,
            backend_name=wiring.backend,
        )

    return start


def _start_store(wiring: LaneWiring) -> pykka.ActorRef[Any]:
    """The JobStore; recovery of loading/running jobs waits for the arbiter's ask."""
    return JobStore.start(
        wiring.config().store,
        wiring.clock,
        listener=_and_webhooks(wiring),
        recover_on_open=False,
        timers=wiring.timers,
        lease=wiring.lease,
    )


def _and_webhooks(wiring: LaneWiring) -> Callable[[Job], None]:
    """The host's commit listener, then ``WebhookDue`` to the webhook delivery actor for an
    ended job that names a webhook (its outbox row was committed with it). While that actor
    cannot take it, the row waits in the outbox, read again when the actor starts."""
    listener, refs = wiring.listener, wiring.refs

    def committed(job: Job) -> None:
        listener(job)
        if job.spec.webhook is not None and job.state.is_terminal:
            with contextlib.suppress(ChildUnavailableError, KeyError):
                refs.ref_for("webhooks").tell(WebhookDue(job.seq))

    return committed


def _start_limiter(wiring: LaneWiring) -> pykka.ActorRef[Any]:
    """The RateLimiter, with the limits in force now; it recounts queued jobs from the store."""
    return RateLimiter.start(
        limits=wiring.config().limits, clock=wiring.clock, store=wiring.refs.ref_for("store")
    )


def _start_residency(wiring: LaneWiring) -> pykka.ActorRef[Any]:
    """The ResidencyTracker of ``wiring.backend_name``, its catalog the configured models
    (else the server's); it tells the arbiter (held until the arbiter is up)."""
    config = wiring.config()
    host = next(h for h in config.hosts if h.name == wiring.backend_name)
    return ResidencyTracker.start(
        settings=config.residency,
        clock=wiring.clock,
        timers=wiring.timers,
        backend=wiring.backend,
        arbiter=wiring.refs.ref_for("arbiter"),
        name=host.name,
        catalog=host.models,
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
        slot_backends=wiring.slot_backends,
        backend_labels={host.name: frozenset(host.labels) for host in config.hosts},
    )


def _start_alerter(wiring: LaneWiring) -> pykka.ActorRef[Any]:
    """The Alerter, with the alert settings in force now; its rules' state is the facade's."""
    return Alerter.start(
        alerting=wiring.alerting,
        settings=wiring.config().alerts,
        refs=wiring.refs,
        clock=wiring.clock,
        timers=wiring.timers,
        backends=tuple(host.name for host in wiring.config().hosts),
    )


def _start_webhooks(wiring: LaneWiring) -> pykka.ActorRef[Any]:
    """The WebhookDelivery actor; it reads the settings in force at each post."""
    return WebhookDelivery.start(
        store=wiring.refs.ref_for("store"),
        config=wiring.config,
        clock=wiring.clock,
        timers=wiring.timers,
    )


#: The root's children before the GPU slots, in start order (rest_for_one); ``residency``
#: is one tracker per backend, named by ``actors.hosts.tracker_id_for``.
CHILD_ORDER: tuple[str, ...] = ("store", "limiter", "residency", "arbiter")
#: The root's children after the GPU slots: they serve what the store committed (the
#: webhook delivery actor) or watch the others (the Alerter, last, so its crash restarts
#: nothing else).
WATCHERS: tuple[str, ...] = ("webhooks", "alerter")
#: The factory each child starts with; ``GpuLane.start(factories=...)`` replaces some.
DEFAULT_FACTORIES: Mapping[str, ChildFactory] = MappingProxyType(
    {
        "store": _start_store,
        "limiter": _start_limiter,
        "residency": _start_residency,
        "arbiter": _start_arbiter,
        "alerter": _start_alerter,
        "webhooks": _start_webhooks,
    }
)
# What a message to a child meets while it restarts: every child holds it for its next
# instance (docs/supervision.md explains why). The store's hold covers reports from
# every slot plus submits during its restart; a slot gets a dispatch, cancels, a policy;
# a watcher, the jobs the commit listener tells the Alerter.
HOLD_LIMIT = 100_000
SLOT_HOLD_LIMIT = 1_000


def lane_tree(
    wiring: LaneWiring,
    supervision: SupervisionSettings,
    factories: Mapping[str, ChildFactory],
    slots: Mapping[str, GpuFactory],
) -> SupervisorSpec:
    """The root supervisor's spec: the core children (a tracker per backend of
    ``wiring.config().hosts``), the ``gpus`` supervisor, then the watchers.

    ``factories`` gives each core child's factory by id (see :data:`DEFAULT_FACTORIES`);
    ``slots`` gives each slot id, in order, the GpuFactory it starts with. Pure: it
    declares, and starts nothing.
    """
    missing = sorted({*CHILD_ORDER, *WATCHERS} - set(factories))
    if missing:
        raise ValidationError(
            "factories", f"no factory for {missing[0]!r}", allowed=(*CHILD_ORDER, *WATCHERS)
        )
    core = tuple(
        ChildSpec(
            child_id,
            _bind(factories[factory], child_wiring),
            shutdown_s=supervision.shutdown_s,
            while_restarting=WhileRestarting.HOLD,
            hold_limit=HOLD_LIMIT,
        )
        for factory in CHILD_ORDER
        for child_id, child_wiring in _instances(factory, wiring)
    )
    watchers = tuple(
        ChildSpec(
            child_id,
            _bind(factories[child_id], wiring),
            shutdown_s=supervision.shutdown_s,
            while_restarting=WhileRestarting.HOLD,
            hold_limit=SLOT_HOLD_LIMIT,
        )
        for child_id in WATCHERS
    )
    gpus = SupervisorSpec(
        "gpus",
        Strategy.ONE_FOR_ONE,
        tuple(
            ChildSpec(
                slot_id,
                _bind_slot(gpu, slot_id, wiring),
                shutdown_s=supervision.shutdown_s,
                while_restarting=WhileRestarting.HOLD,
                hold_limit=SLOT_HOLD_LIMIT,
            )
            for slot_id, gpu in slots.items()
        ),
        intensity=supervision.intensity,
        period_s=supervision.period_s,
        backoff=supervision.backoff,
    )
    return SupervisorSpec(
        "gpulane",
        Strategy.REST_FOR_ONE,
        (
            *core,
            gpus.child(
                refs=wiring.refs,
                timers=wiring.timers,
                shutdown_s=supervision.shutdown_s * (len(slots) + 1),
            ),
            *watchers,
        ),
        intensity=supervision.intensity,
        period_s=supervision.period_s,
        backoff=supervision.backoff,
    )


def _instances(factory: str, wiring: LaneWiring) -> tuple[tuple[str, LaneWiring], ...]:
    """The children a core factory starts, with their ids and wirings: one tracker per
    backend, named and wired for it; one child of any other factory."""
    if factory != "residency":
        return ((factory, wiring),)
    return tuple(
        (
            tracker_id_for(host.name),
            dataclasses.replace(
                wiring, backend_name=host.name, backend=wiring.backends.get(host.name)
            ),
        )
        for host in wiring.config().hosts
    )


def _bind(factory: ChildFactory, wiring: LaneWiring) -> Callable[[], pykka.ActorRef[Any]]:
    """A ChildSpec factory: ``factory`` applied to the wiring at each (re)start."""
    return lambda: factory(wiring)


def _bind_slot(gpu: GpuFactory, slot_id: str, wiring: LaneWiring) -> Callable[[], Any]:
    """A ChildSpec factory for one GPU slot, wired to its backend's tracker with the
    settings in force at its start."""

    cloud = slot_id in wiring.cloud_slot_ids
    backend = CLOUD_BACKEND if cloud else wiring.slot_backends.get(slot_id, LOCAL_BACKEND)

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
                residency=None if cloud else wiring.refs.ref_for(tracker_id_for(backend)),
                pins=config.residency,
                backend=backend,
            )
        )

    return start
