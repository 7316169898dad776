"""The messages of the ResidencyTracker: what slots tell it of their calls, its polls,
pins, probes and catalog reads, and what it tells the arbiter (each naming its backend;
docs/architecture.md sections 2 and 13).
Re-exported by ``protocol.messages``, where every actor's messages are named."""

from __future__ import annotations

import dataclasses

from protocol.backend import LoadedModel
from protocol.config import LOCAL_BACKEND, ResidencySettings

__all__ = [
    "ApplyResidency",
    "BackendHealthChanged",
    "BackendUnreachable",
    "CallEnded",
    "CallStarting",
    "CatalogChanged",
    "CatalogRead",
    "CatalogReadFailed",
    "ModelLoaded",
    "PinFinished",
    "PollResidency",
    "ReadCatalog",
    "RefreshCatalog",
    "ResidencyChanged",
    "ResidencyPollFailed",
    "ResidencyPolled",
    "ResidencySnapshot",
]


# --- ResidencyTracker -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ModelLoaded:
    """Slot ``slot_id`` has ``model_key`` loaded (its call produced output)."""

    slot_id: str
    model_key: str


@dataclasses.dataclass(frozen=True, slots=True)
class CallStarting:
    """Slot ``slot_id`` starts a call for ``model_key``; ``evicted`` is the model it held
    before, if it switched (loading the new one may push that one out)."""

    slot_id: str
    model_key: str
    evicted: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CallEnded:
    """Slot ``slot_id``'s call for ``model_key`` ended after ``busy_s``; ``loaded``: it
    produced output or an answer (so the model is loaded), with ``load_s`` the load time
    the backend reported (0 when unknown)."""

    slot_id: str
    model_key: str
    busy_s: float
    loaded: bool
    load_s: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class BackendUnreachable:
    """A slot's call for ``job_id``, begun at ``started_at``, met a backend outage
    (docs/architecture.md section 13): the tracker marks the backend down, unless it came
    up after that call began."""

    slot_id: str
    job_id: str
    error: str
    started_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class BackendHealthChanged:
    """The tracker's word on a backend's health, told to the arbiter: ``up`` since ``at``."""

    backend: str
    up: bool
    at: float


@dataclasses.dataclass(frozen=True, slots=True)
class PollResidency:
    """Timer tick: ask the backend which models are loaded (off the tracker's thread)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ResidencyPolled:
    """The backend's loaded models, as asked at ``asked_at``."""

    models: tuple[LoadedModel, ...]
    asked_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class ResidencyPollFailed:
    """Asking the backend for its loaded models failed; ``outage``: it was unreachable."""

    error: str
    asked_at: float
    outage: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ReadCatalog:
    """Timer tick: read the backend's catalog again (off the tracker's thread)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RefreshCatalog:
    """Read the backend's catalog now, not at the next tick: a model was pulled, created,
    copied or deleted on it through the gateway, and placement must know at once."""


@dataclasses.dataclass(frozen=True, slots=True)
class CatalogRead:
    """The model names the backend can run (``Backend.list_models``), as it spells them."""

    models: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CatalogReadFailed:
    """Reading the backend's catalog failed; ``outage``: it was unreachable."""

    error: str
    outage: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class PinFinished:
    """Loading pinned ``model`` with keep_alive ended after ``load_s``; ``error`` is None
    on success; ``outage``: the backend was unreachable."""

    model: str
    error: str | None
    load_s: float = 0.0
    outage: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyResidency:
    """New residency settings (poll interval, pinned models)."""

    settings: ResidencySettings


@dataclasses.dataclass(frozen=True, slots=True)
class ResidencySnapshot:
    """Ask the tracker what is loaded where and until when (a read-only mapping)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ResidencyChanged:
    """The resident model keys on ``backend`` changed (its tracker tells the arbiter)."""

    resident: frozenset[str]
    backend: str = LOCAL_BACKEND


@dataclasses.dataclass(frozen=True, slots=True)
class CatalogChanged:
    """The models ``backend`` can run (normalised names, ``protocol.normalise_model_name``)
    are first known or changed; its tracker tells the arbiter, and again when it starts."""

    backend: str
    models: frozenset[str]
