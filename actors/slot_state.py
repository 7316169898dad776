"""What the PriorityArbiter knows of one GPU slot: the job it runs, the job handed to it
ahead (prefetch), the model it holds, and where a preemption or recall stands.

Owned by the arbiter alone (docs/architecture.md section 2); plain state, no thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import structlog

from actors.runtime import ActorAddress, ChildUnavailableError
from protocol import Job, Lane, Priority
from protocol.messages import Recall

__all__ = ["SlotState", "arbiter_view", "local_resident", "recall", "running_chains"]

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


def arbiter_view(
    slots: Mapping[str, SlotState],
    depths: dict[tuple[Lane, Priority], int],
    queued: int,
    *,
    paused: bool,
    local_up: bool,
    resident: frozenset[str],
    counters: Mapping[str, int],
) -> Mapping[str, Any]:
    """The arbiter's snapshot: its queue (``depths`` and ``queued`` from the ready queue,
    plus the jobs handed to busy slots as their next, which are still waiting), its
    slots, the resident models and its counters."""
    handed = [slot.next for slot in slots.values() if slot.next is not None]
    for job in handed:
        depths[(job.spec.lane, job.spec.priority)] += 1
    return MappingProxyType(
        {
            "paused": paused,
            "local_backend_up": local_up,
            "queued": queued + len(handed),
            "recalling": sum(slot.recalling for slot in slots.values()),
            "resident": tuple(sorted(resident)),
            "depth": MappingProxyType(
                {f"{lane.value}.{prio.name.lower()}": n for (lane, prio), n in depths.items()}
            ),
            "slots": MappingProxyType({slot_id: slot.view() for slot_id, slot in slots.items()}),
            "counters": MappingProxyType(dict(counters)),
        }
    )
