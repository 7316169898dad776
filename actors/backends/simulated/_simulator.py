"""SimulatedOllama: the simulated Ollama server that the demo, the tests and the
benchmarks run on, assembled from the package's parts (see the package docstring).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from types import MappingProxyType

from actors.backends.simulated._catalog import (
    DEFAULT_MODELS,
    Catalog,
    InstalledModel,
    ModelProfile,
    canonical,
    digest,
)
from actors.backends.simulated._faults import Fault, FaultKind
from actors.backends.simulated._handler import OllamaHandler
from actors.backends.simulated._loopback import FaultQueue, LoopbackServer
from actors.backends.simulated._residency import Residency, ServerStats
from actors.backends.simulated._text import Tokenizer
from actors.backends.simulated._wire import DEFAULT_KEEP_ALIVE, HTTPError
from actors.runtime import Clock

__all__ = ["SimulatedOllama"]


class SimulatedOllama(LoopbackServer[ServerStats]):
    """An Ollama-compatible HTTP server on loopback with simulated models.

    ``models`` are the models it has (``/api/tags``); ``registry`` the models
    ``/api/pull`` can fetch (default: ``DEFAULT_MODELS`` and ``models``; a push adds to
    it). ``speed`` divides every simulated delay (load, first token, per token, download),
    so tests can run a realistic profile in milliseconds. ``default_keep_alive`` is
    OLLAMA_KEEP_ALIVE (seconds, None: forever); ``download_bytes_per_second`` paces a pull
    (None: no time at all). Time is ``clock``'s (the SystemClock unless given): on a
    ManualClock, loads, tokens, downloads and keep_alive expiry wait for ``advance``.
    State (models, loaded models, stats, faults) lives here, not in the listener, so
    :meth:`refuse_connections` and :meth:`accept_connections` keep it across a simulated
    outage.
    """

    def __init__(
        self,
        models: Mapping[str, ModelProfile] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_loaded_models: int = 1,
        speed: float = 1.0,
        clock: Clock | None = None,
        registry: Mapping[str, ModelProfile] | None = None,
        default_keep_alive: float | None = DEFAULT_KEEP_ALIVE,
        download_bytes_per_second: float | None = None,
    ) -> None:
        if max_loaded_models < 1:
            raise ValueError("max_loaded_models must be at least 1")
        if speed <= 0:
            raise ValueError("speed must be positive")
        if default_keep_alive is not None and default_keep_alive < 0:
            raise ValueError("default_keep_alive must not be negative (None is forever)")
        if download_bytes_per_second is not None and not download_bytes_per_second > 0:
            raise ValueError("download_bytes_per_second must be positive (None: instant)")
        super().__init__(OllamaHandler, name="simulated-ollama", host=host, port=port, clock=clock)
        installed = DEFAULT_MODELS if models is None else models
        self.catalog = Catalog(
            InstalledModel(canonical(name), profile, digest(canonical(name)))
            for name, profile in installed.items()
        )
        pullable = {**DEFAULT_MODELS, **installed} if registry is None else registry
        self._registry = {canonical(name): profile for name, profile in pullable.items()}
        self._registry_lock = threading.Lock()
        self.blobs: dict[str, bytes] = {}  # uploaded with POST /api/blobs, by digest
        self.tokenizer = Tokenizer()  # generate's ``context`` ids
        self.max_loaded_models = max_loaded_models
        self.speed = speed
        self.download_seconds_per_byte = (
            0.0 if download_bytes_per_second is None else 1.0 / download_bytes_per_second
        )
        self.residency = Residency(
            self.cond,
            self.bump_locked,
            self.clock,
            max_loaded_models=max_loaded_models,
            speed=speed,
            default_keep_alive=default_keep_alive,
        )
        self._faults: FaultQueue[Fault] = FaultQueue()

    # ------------------------------------------------------------------- faults

    def inject(
        self,
        kind: FaultKind,
        *,
        path: str | None = None,
        times: int | None = 1,
        after_chunks: int = 0,
        delay: float = 0.0,
        message: str | None = None,
    ) -> Fault:
        """Make the next ``times`` matching requests fail as ``kind`` says (see Fault)."""
        return self._faults.add(Fault(kind, path, times, after_chunks, delay, message))

    @property
    def faults(self) -> tuple[Fault, ...]:
        """The faults still pending, with ``times`` counting what is left."""
        return tuple(dataclasses.replace(f, times=left) for f, left in self._faults.pending())

    def clear_faults(self) -> None:
        """Remove every pending fault."""
        self._faults.clear()

    def take_fault(self, path: str) -> Fault | None:
        """The fault the next request to ``path`` gets, if any (counts one of its times)."""
        return self._faults.take(path)

    # -------------------------------------------------------------------- stats

    @property
    def loaded_models(self) -> tuple[str, ...]:
        """The names of the models resident now (Ollama's ``name:tag`` form)."""
        return self.stats().loaded

    def snapshot_locked(self) -> ServerStats:
        """The counters and the runners now (``cond`` held)."""
        return self.residency.stats_locked(self.counters)

    def next_change_locked(self) -> float | None:
        """When the next keep_alive runs out: the stats change then by themselves."""
        return self.residency.next_expiry_locked()

    def bump_locked(self, counter: str, amount: int = 1) -> None:
        """Count, keeping the peak of ``active_calls`` too."""
        super().bump_locked(counter, amount)
        if counter == "active_calls":
            peak = max(self.counters["peak_active_calls"], self.counters["active_calls"])
            self.counters["peak_active_calls"] = peak

    # ---------------------------------------------------------------- catalog

    @property
    def models(self) -> Mapping[str, ModelProfile]:
        """The models the server has now, by full name (``name:tag``), as they came."""
        return MappingProxyType({m.name: m.profile for m in self.catalog.all()})

    def lookup(self, model: str) -> InstalledModel:
        """The installed ``model``; Ollama's 404 if it is not pulled."""
        found = self.catalog.get(canonical(model))
        if found is None:
            raise HTTPError(404, f'model "{model}" not found, try pulling it first')
        return found

    def registry_profile(self, name: str) -> ModelProfile | None:
        """What pulling ``name`` (canonical) fetches; None if the registry has no such model."""
        with self._registry_lock:
            return self._registry.get(name)

    def publish(self, name: str, profile: ModelProfile) -> None:
        """Put ``name`` (canonical) in the registry: what a push does."""
        with self._registry_lock:
            self._registry[name] = profile

    def download_seconds(self, size: int) -> float:
        """How long (clock seconds) moving ``size`` bytes to or from the registry takes."""
        return size * self.download_seconds_per_byte / self.speed
