"""The backends a lane drives (``Config.hosts``): each one's client, slots and embedding
executor, built once at the lane's start (docs/architecture.md section 2).

One ``[backend]`` keeps the names a one-GPU lane always had (``gpu0``); each of several
``[[backends]]`` gets its own (``a100.gpu0``, ``actors.hosts``); the cloud fallback's
slots come last (``cloud0``). A request field is refused unless every backend can carry
it, since a job may run on any backend whose catalog has its model, and a job requiring
labels no backend carries is refused; an embedding goes to one backend, chosen from the
trackers' view.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from actors.backend_factory import BuiltBackend, local_backend
from actors.backends.base import Backend, refuse_unsupported
from actors.config import BackendSettings, Config
from actors.embedding import EmbeddingExecutor
from actors.hosts import slot_id_for
from actors.tree import GpuFactory, backend_slots
from protocol import (
    BackendRequest,
    ResidencySettings,
    ValidationError,
    model_of_key,
    normalise_model_name,
)

__all__ = ["Host", "LaneHosts", "embed_host"]


@dataclasses.dataclass(frozen=True)
class Host:
    """One backend of the lane: its settings, the client its slots and tracker drive (None
    with a fake GPU and no client), the URL it serves on, its slots and its embedder."""

    settings: BackendSettings
    client: Backend | None
    url: str
    slot_ids: tuple[str, ...]
    embedder: EmbeddingExecutor | None

    @property
    def name(self) -> str:
        """The backend's name (``local`` for ``[backend]``)."""
        return self.settings.name

    def view(self) -> Mapping[str, Any]:
        """What ``status["backends"]`` shows of its settings."""
        settings = self.settings
        return MappingProxyType(
            {
                "kind": settings.kind,
                "url": self.url,
                "labels": settings.labels,
                "slots": self.slot_ids,
            }
        )


class LaneHosts:
    """The lane's backends in config order, the cloud fallback's backend (if any), and the
    GPU factory of each of their slots."""

    def __init__(
        self, hosts: tuple[Host, ...], slots: Mapping[str, GpuFactory], cloud: Backend | None
    ) -> None:
        self.hosts = hosts
        self.slots = MappingProxyType(dict(slots))  # slot id -> factory, backend by backend
        self.cloud = cloud

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        gpu: GpuFactory | None,
        backend: Backend | None,
        cloud: Backend | None,
        join_s: float,
        own: Callable[[BuiltBackend], Backend],
        residency: Callable[[], ResidencySettings],
        guard: Callable[[Backend], Backend] = lambda backend: backend,
    ) -> LaneHosts:
        """Each backend ``config`` names, with slots on ``gpu`` (a fake GPU) if given, else
        on its client: ``backend`` for the one backend, else one built from its settings
        (``own`` keeps it, for the lane to close); then ``cloud.slots`` on ``cloud``. Each
        client is used through ``guard`` (a leader's lease check, ``LaneLease.guard``)."""
        settings = config.hosts
        if backend is not None and len(settings) > 1:
            raise ValidationError(
                "backend",
                f"one client for {len(settings)} backends",
                allowed="no backend=: the lane builds each one from its [[backends]] table",
            )
        hosts, slots = [], {}
        for host in settings:
            client, url, factory = backend, host.url, gpu
            if factory is None:
                if client is None:
                    built = local_backend(host)
                    client, url = own(built), built.url
                client = guard(client)
                factory = backend_slots(client, join_s)
            slot_ids = tuple(slot_id_for(host.name, i) for i in range(host.slots))
            slots.update(dict.fromkeys(slot_ids, factory))
            embedder = (
                None if client is None else EmbeddingExecutor(client, host.embed_workers, residency)
            )
            hosts.append(Host(host, client, url, slot_ids, embedder))
        if cloud is not None:
            slots.update(dict.fromkeys(_cloud_ids(config), backend_slots(guard(cloud), join_s)))
        return cls(tuple(hosts), slots, cloud)

    @property
    def slot_backends(self) -> Mapping[str, str]:
        """Each slot's backend name."""
        return MappingProxyType({s: host.name for host in self.hosts for s in host.slot_ids})

    @property
    def cloud_slot_ids(self) -> frozenset[str]:
        """The slots on the cloud fallback's backend."""
        return frozenset(self.slots.keys() - self.slot_backends.keys())

    @property
    def clients(self) -> Mapping[str, Backend | None]:
        """Each backend's client by name (None with a fake GPU)."""
        return MappingProxyType({host.name: host.client for host in self.hosts})

    def views(self) -> Mapping[str, Mapping[str, Any]]:
        """Each backend's settings and slots as ``status["backends"]`` shows them."""
        return MappingProxyType({host.name: host.view() for host in self.hosts})

    def refuse_uncarried(
        self, request: BackendRequest, *, allow_cloud: bool, labels: tuple[str, ...] = ()
    ) -> None:
        """ValidationError naming a field of ``request`` that some backend (or, with
        ``allow_cloud``, the cloud's) cannot carry, or naming ``labels`` when no backend
        carries every one of the job's ``labels`` (it could never run on one)."""
        self._refuse_labels(labels)
        clouds = (self.cloud,) if allow_cloud else ()
        for client in (*(host.client for host in self.hosts), *clouds):
            if client is not None:
                refuse_unsupported(client, request)

    def _refuse_labels(self, labels: tuple[str, ...]) -> None:
        """ValidationError naming ``labels`` unless some backend carries all of them."""
        if not labels or any(set(labels) <= set(h.settings.labels) for h in self.hosts):
            return
        carried = [f"{h.name}: [{', '.join(h.settings.labels)}]" for h in self.hosts]
        raise ValidationError(
            "labels",
            f"no backend carries every one of {list(labels)}",
            allowed=carried or "no labels: the lane has no backend",
        )

    def embedder_for(
        self, model: str, trackers: Callable[[Iterable[str]], Mapping[str, Mapping[str, Any]]]
    ) -> EmbeddingExecutor:
        """The embedder of the backend an embedding with ``model`` goes to: the one backend
        with a client, or among several the one :func:`embed_host` picks from their
        trackers' snapshots (``trackers(names)``)."""
        embedders = self._embedders()
        if not embedders:
            raise ValidationError(
                "backend", "no backend to embed with", allowed="GpuLane.start(backend=...)"
            )
        if len(embedders) == 1:
            (only,) = embedders.values()
            return only
        return embedders[embed_host(model, trackers(embedders))]

    def _embedders(self) -> dict[str, EmbeddingExecutor]:
        """The backends that can embed (those with a client), by name, in config order."""
        return {host.name: host.embedder for host in self.hosts if host.embedder is not None}

    def stop(self) -> None:
        """Stop every embedder (calls in flight are cancelled)."""
        for embedder in self._embedders().values():
            embedder.stop()


def embed_host(model: str, trackers: Mapping[str, Mapping[str, Any]]) -> str:
    """The backend an embedding with ``model`` goes to, from its trackers' snapshots (by
    name, in config order): one whose catalog lists the model (any, when none lists it),
    preferring one that is up, then one with the model resident, then the first."""
    wanted = normalise_model_name(model)
    listed = [
        name
        for name, tracked in trackers.items()
        if tracked["catalog"] is not None and wanted in tracked["catalog"]
    ]

    def rank(name: str) -> tuple[bool, bool]:
        tracked = trackers[name]
        up = all(health["state"] == "up" for health in tracked["health"].values())
        resident = any(
            normalise_model_name(model_of_key(key)) == wanted for key in tracked["resident"]
        )
        return (not up, not resident)

    return min(listed or trackers, key=rank)


def _cloud_ids(config: Config) -> tuple[str, ...]:
    """The ids of the cloud fallback's slots."""
    return tuple(f"cloud{i}" for i in range(config.cloud.slots))
