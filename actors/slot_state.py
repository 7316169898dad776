"""What the PriorityArbiter knows of one GPU slot: the job it runs, the job handed to it
ahead (prefetch), the model it holds, and where a preemption or recall stands.

Owned by the arbiter alone (docs/architecture.md section 2); plain state, no thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from actors.runtime import ActorAddress
from protocol import Job, Lane, Priority

__all__ = ["SlotState", "arbiter_view"]


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
