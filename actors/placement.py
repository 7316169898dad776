"""Placement: which backend may take a job, and which backend gives up its model first.

Thread-free values and functions beside the arbiter (docs/architecture.md section 4,
docs/scheduling.md "Placement"). A job may run only on a backend whose catalog lists its
model and which carries every label the job requires; a backend takes jobs for the
models it has loaded first (the warm pass), and when a backend must swap, the one whose
loaded models nobody waits for, then the one used least recently, goes first (the cold
pass), preferring a model loaded on no other backend, so each host drains its own model
instead of all of them loading the same one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from protocol import LOCAL_BACKEND, Job, SchedulingPolicy, model_of_key, normalise_model_name

if TYPE_CHECKING:
    from actors.scheduling import ReadyQueue

__all__ = [
    "ANY_HOST",
    "FreeHost",
    "HostFit",
    "HostLoad",
    "Placed",
    "cold_order",
    "place",
    "placement_fit",
]


@dataclasses.dataclass(frozen=True, slots=True)
class HostFit:
    """What one backend may take: its catalog against every backend's.

    ``catalog`` is the normalised names the backend can run, None while unknown (with one
    backend: it may run anything). ``listed`` is every backend's catalog together, None
    while some backend's is unknown. A model no backend lists may run anywhere (the server
    answers 404 as it would without gpulane), but only once every catalog is known, so a
    job waits for the catalog of the host that may have its model. ``elsewhere`` is the
    model keys other up backends have loaded: a cold backend leaves those to them.
    ``labels`` are the backend's labels: a job requiring labels runs only where all are.
    """

    name: str = LOCAL_BACKEND
    catalog: frozenset[str] | None = None
    listed: frozenset[str] | None = frozenset()
    elsewhere: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()

    def can_run(self, model_key: str, labels: Iterable[str] = ()) -> bool:
        """True if a job for ``model_key`` requiring ``labels`` may run on this backend."""
        if not self.labels.issuperset(labels):
            return False
        if self.catalog is None:
            return True
        name = normalise_model_name(model_of_key(model_key))
        return name in self.catalog or (self.listed is not None and name not in self.listed)


#: One backend that may run anything: a lane with a single backend, or a test.
ANY_HOST = HostFit()


def placement_fit(
    name: str,
    catalogs: Mapping[str, frozenset[str] | None],
    resident: Mapping[str, frozenset[str]],
    labels: Mapping[str, frozenset[str]] | None = None,
) -> HostFit:
    """The HostFit of backend ``name`` among ``catalogs`` (every backend's, None while
    unknown) and ``resident`` (the model keys each up backend has loaded); ``labels`` has
    each backend's labels (none: no backend has any)."""
    known = [catalog for catalog in catalogs.values() if catalog is not None]
    listed = frozenset().union(*known) if len(known) == len(catalogs) else None
    elsewhere = frozenset().union(*(keys for other, keys in resident.items() if other != name))
    catalog = catalogs.get(name)
    if catalog is None and len(catalogs) > 1:
        catalog = frozenset()  # one of several, not read yet: it takes nothing until it is
    carried = frozenset() if labels is None else labels.get(name, frozenset())
    return HostFit(name, catalog, listed, elsewhere, carried)


@dataclasses.dataclass(frozen=True, slots=True)
class HostLoad:
    """What makes a swap on a backend cheap or dear: ``wanted``, queued jobs wait for a
    model it has loaded (a swap would evict it); ``last_used``, when its last call began."""

    name: str
    wanted: bool
    last_used: float


def cold_order(hosts: Iterable[HostLoad]) -> list[str]:
    """The backends that must swap, cheapest first: those whose loaded models nobody waits
    for, then the least recently used, then by name (a stable order)."""
    return [h.name for h in sorted(hosts, key=lambda h: (h.wanted, h.last_used, h.name))]


@dataclasses.dataclass(slots=True)
class FreeHost:
    """A backend with free slots in a dispatch round: ``free`` its free slot ids (taken in
    order), ``chains`` the chains its slots run or last ran, ``last_used`` when its last
    call began."""

    name: str
    free: list[str]
    chains: frozenset[str] = frozenset()
    last_used: float = float("-inf")


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    """One decision of a round: ``job`` runs on ``slot_id`` of backend ``backend``;
    ``swaps``, the backend has to load its model first."""

    slot_id: str
    backend: str
    job: Job
    swaps: bool


def place(
    queue: ReadyQueue,
    now: float,
    policy: SchedulingPolicy,
    free: Sequence[FreeHost],
    catalogs: Mapping[str, frozenset[str] | None],
    resident: Mapping[str, frozenset[str]],
    labels: Mapping[str, frozenset[str]] | None = None,
) -> list[Placed]:
    """Fill the free slots of ``free`` (up backends) from ``queue``: first every backend
    takes the jobs for models it has loaded (the warm pass), then the backends that must
    swap, cheapest first (:func:`cold_order`), take the best job each may run.

    ``catalogs`` has every backend's catalog; ``resident`` the model keys each up backend
    has loaded or is running; ``labels`` each backend's labels. Each choice is one
    ``ReadyQueue.pop``: O(log n) in the jobs queued plus O(models) for residency and
    catalogs.
    """
    loaded = {name: set(keys) for name, keys in resident.items()}
    placed: list[Placed] = []

    def take(host: FreeHost, warm_only: bool) -> bool:
        frozen = {name: frozenset(keys) for name, keys in loaded.items()}
        here = frozen.get(host.name, frozenset())
        job = queue.pop(
            now,
            policy,
            chains=host.chains,
            resident=here,
            host=placement_fit(host.name, catalogs, frozen, labels),
            warm_only=warm_only,
        )
        if job is None:
            return False
        key = job.spec.model_key
        placed.append(Placed(host.free.pop(0), host.name, job, key not in here))
        loaded.setdefault(host.name, set()).add(key)
        return True

    hosts = [FreeHost(h.name, list(h.free), h.chains, h.last_used) for h in free if h.free]
    for host in hosts:
        while host.free and take(host, warm_only=True):
            pass
    loads = (HostLoad(h.name, queue.wants(loaded.get(h.name, ())), h.last_used) for h in hosts)
    by_name = {h.name: h for h in hosts}
    for name in cold_order(h for h in loads if by_name[h.name].free):
        host = by_name[name]
        while host.free and take(host, warm_only=False):
            pass
    return placed
