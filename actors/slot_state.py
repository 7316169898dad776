"""What the PriorityArbiter knows of one GPU slot (the job it runs, the job handed to it
ahead, the model it holds, where a preemption or recall stands) and of one backend (what
it has loaded, its catalog, its health).

Owned by the arbiter alone (docs/architecture.md section 2); plain state, no thread.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import structlog

from actors.placement import FreeHost, HostFit, Placed, place, placement_fit
from actors.runtime import ActorAddress, ChildUnavailableError
from actors.scheduling import ReadyQueue, SlotView
from protocol import LOCAL_BACKEND, Job, Lane, Priority, SchedulingPolicy
from protocol.messages import Recall

__all__ = [
    "HostState",
    "Hosts",
    "SlotState",
    "arbiter_view",
    "local_resident",
    "recall",
    "running_chains",
]

log = structlog.get_logger(__name__)


@dataclasses.dataclass
class SlotState:
    """One slot as the arbiter sees it (changed only on the arbiter's thread)."""

    ref: ActorAddress
    job: Job | None = None  # running, or handed over while the slot was free
    next: Job | None = None  # handed over while busy, not yet known to have started
    next_swaps: bool = False  # ``next`` needs a model the GPU did not hold when handed over
    recalling: bool = False  # a Recall for ``next`` is on its way
    known: bool = False  # has reported idle at least once, so it can take work
    preempting: bool = False
    preempted_for: Job | None = None  # the job ``preempting`` makes way for
    keeps_its_call: bool = False  # declined a preemption: no victim until its job ends
    model_key: str | None = None
    last_chain: str | None = None
    incarnation: str = ""  # the slot actor instance that last reported idle
    cloud: bool = False  # a cloud slot: takes only jobs that send_to_cloud routes to it
    outage_met: bool = False  # its running call met a backend outage
    backend: str = LOCAL_BACKEND  # the backend it drives

    def tell(self, message: Any) -> bool:
        """Tell the slot; False if it cannot take messages (its hold buffer is full, or it
        stopped)."""
        try:
            self.ref.tell(message)
        except ChildUnavailableError as error:
            log.info("slot_unavailable", slot=error.child_id, message=type(message).__name__)
            return False
        return True

    def view(self) -> Mapping[str, Any]:
        """The slot as the arbiter's snapshot shows it."""
        return MappingProxyType(
            {
                "job_id": None if self.job is None else self.job.id,
                "next_job_id": None if self.next is None else self.next.id,
                "lane": None if self.job is None else self.job.spec.lane.value,
                "model_key": self.model_key,
                "preempting": self.preempting,
                "backend": None if self.cloud else self.backend,
            }
        )


def recall(slot: SlotState) -> None:
    """Ask ``slot`` to give its next job back, unless it is already being asked."""
    if slot.next is not None and not slot.recalling and slot.tell(Recall(slot.next.id)):
        slot.recalling = True


def running_chains(slots: Iterable[SlotState]) -> frozenset[str]:
    """The chains the slots' jobs (running, else last run) belong to: their next jobs go
    first (docs/architecture.md section 4)."""
    chains = (s.job.spec.chain_id if s.job is not None else s.last_chain for s in slots)
    return frozenset(chain for chain in chains if chain is not None)


def local_resident(
    slots: Iterable[SlotState], tracked: frozenset[str] | None, fresh: set[str]
) -> frozenset[str]:
    """Model keys loaded on the local GPU now (the tracker's word, ``tracked``, plus the
    models slots reported idle on since, ``fresh``; else what the local slots last ran),
    plus the models of the local calls running now: a job for one of those needs no
    swap. Cloud slots hold no local model."""
    local = [s for s in slots if not s.cloud]
    running = {s.job.spec.model_key for s in local if s.job is not None}
    if tracked is not None:
        return tracked | fresh | running
    return frozenset({s.model_key for s in local if s.model_key is not None} | running)


@dataclasses.dataclass
class HostState:
    """One backend as the arbiter sees it: ``tracked`` its tracker's resident set (None until
    it speaks) and ``fresh`` the models slots reported idle on since; ``down`` while it
    cannot be reached (outage reports of calls begun before ``up_since`` are stale);
    ``catalog`` the models it can run (None until known); ``last_used`` its last start."""

    tracked: frozenset[str] | None = None
    fresh: set[str] = dataclasses.field(default_factory=set)
    down: bool = False
    up_since: float = -math.inf
    catalog: frozenset[str] | None = None
    last_used: float = -math.inf


class Hosts:
    """The backends and their slots, as placement needs them (docs/architecture.md
    section 4): what each has loaded, what each may run, which have free slots.
    ``labels`` has each backend's labels (a job requiring labels runs only where all are)."""

    def __init__(
        self,
        slots: Mapping[str, SlotState],
        labels: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.slots = slots
        self.labels = MappingProxyType(dict(labels or {}))
        names = dict.fromkeys(s.backend for s in slots.values() if not s.cloud)
        self.states = {name: HostState() for name in names or (LOCAL_BACKEND,)}

    def of(self, slot: SlotState) -> HostState:
        """The state of ``slot``'s backend."""
        return self.states[slot.backend]

    def local(self, backend: str | None = None) -> list[tuple[str, SlotState]]:
        """The local slots that announced themselves (so can take work), of ``backend`` or
        of every backend."""
        return [
            (slot_id, s)
            for slot_id, s in self.slots.items()
            if s.known and not s.cloud and backend in (None, s.backend)
        ]

    def resident(self, backend: str) -> frozenset[str]:
        """Model keys ``backend`` has loaded or is loading (see :func:`local_resident`)."""
        state = self.states[backend]
        mine = (s for s in self.slots.values() if not s.cloud and s.backend == backend)
        return local_resident(mine, state.tracked, state.fresh)

    def up_resident(self) -> dict[str, frozenset[str]]:
        """Each up backend's resident model keys."""
        return {name: self.resident(name) for name, h in self.states.items() if not h.down}

    def catalogs(self) -> dict[str, frozenset[str] | None]:
        """Each backend's catalog (None while unknown)."""
        return {name: h.catalog for name, h in self.states.items()}

    def fit(self, backend: str) -> HostFit:
        """Which jobs ``backend`` may take now."""
        return placement_fit(backend, self.catalogs(), self.up_resident(), self.labels)

    def place(self, queue: ReadyQueue, now: float, policy: SchedulingPolicy) -> list[Placed]:
        """Fill the free slots of the up backends from ``queue`` (:func:`place`)."""
        free = self.free()
        if not free:
            return []
        return place(queue, now, policy, free, self.catalogs(), self.up_resident(), self.labels)

    def pop_for(
        self, backend: str, queue: ReadyQueue, now: float, policy: SchedulingPolicy
    ) -> Job | None:
        """Take from ``queue`` the best job for a busy slot of ``backend`` (prefetch)."""
        chains = running_chains(s for _, s in self.local(backend))
        resident, fit = self.resident(backend), self.fit(backend)
        return queue.pop(now, policy, chains=chains, resident=resident, host=fit)

    def victims(self, incoming: Job) -> list[SlotView]:
        """The busy local slots ``incoming`` could preempt: on up backends that may run it,
        each marked with whether its backend would have to load the model (placement)."""
        views = []
        for slot_id, slot in self.slots.items():
            if slot.job is None or slot.preempting or slot.keeps_its_call or slot.cloud:
                continue
            key = incoming.spec.model_key
            fits = self.fit(slot.backend).can_run(key, incoming.spec.labels)
            if self.of(slot).down or not fits:
                continue
            views.append(SlotView(slot_id, slot.job, key not in self.resident(slot.backend)))
        return views

    def up_fits(self) -> list[HostFit]:
        """What each up backend may take (none: every backend is down)."""
        return [self.fit(name) for name, h in self.states.items() if not h.down]

    def free(self) -> list[FreeHost]:
        """The up backends with free slots (neither running nor holding a next job)."""
        free: dict[str, FreeHost] = {}
        for slot_id, slot in self.local():
            state = self.states[slot.backend]
            if state.down or slot.job is not None or slot.next is not None:
                continue
            if slot.backend not in free:
                chains = running_chains(s for _, s in self.local(slot.backend))
                free[slot.backend] = FreeHost(slot.backend, [], chains, state.last_used)
            free[slot.backend].free.append(slot_id)
        return list(free.values())

    def view(self) -> Mapping[str, Any]:
        """Each backend as the arbiter's snapshot shows it."""
        return MappingProxyType(
            {
                name: MappingProxyType(
                    {
                        "up": not h.down,
                        "resident": tuple(sorted(self.resident(name))),
                        "catalog": None if h.catalog is None else tuple(sorted(h.catalog)),
                    }
                )
                for name, h in self.states.items()
            }
        )


def arbiter_view(
    slots: Mapping[str, SlotState],
    depths: dict[tuple[Lane, Priority], int],
    queued: int,
    *,
    paused: bool,
    hosts: Hosts,
    counters: Mapping[str, int],
) -> Mapping[str, Any]:
    """The arbiter's snapshot: its queue (``depths`` and ``queued`` from the ready queue,
    plus the jobs handed to busy slots as their next, which are still waiting), its
    slots, its backends (``local_backend_up``: one at least is up), the resident models
    (over every backend) and its counters."""
    handed = [slot.next for slot in slots.values() if slot.next is not None]
    for job in handed:
        depths[(job.spec.lane, job.spec.priority)] += 1
    return MappingProxyType(
        {
            "paused": paused,
            "local_backend_up": any(not h.down for h in hosts.states.values()),
            "backends": hosts.view(),
            "queued": queued + len(handed),
            "recalling": sum(slot.recalling for slot in slots.values()),
            "resident": tuple(sorted(set().union(*map(hosts.resident, hosts.states)))),
            "depth": MappingProxyType(
                {f"{lane.value}.{prio.name.lower()}": n for (lane, prio), n in depths.items()}
            ),
            "slots": MappingProxyType({slot_id: slot.view() for slot_id, slot in slots.items()}),
            "counters": MappingProxyType(dict(counters)),
        }
    )
