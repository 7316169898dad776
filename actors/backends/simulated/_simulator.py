"""SimulatedOllama: the simulated Ollama server that the demo, the tests and the
benchmarks run on, assembled from the package's parts (see the package docstring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from actors.backends.simulated._catalog import DEFAULT_MODELS, ModelProfile, canonical
from actors.backends.simulated._faults import Fault, FaultKind
from actors.backends.simulated._handler import OllamaHandler
from actors.backends.simulated._loopback import FaultQueue, LoopbackServer
from actors.backends.simulated._residency import Residency, ServerStats
from actors.backends.simulated._wire import HTTPError
from actors.runtime import Clock

__all__ = ["SimulatedOllama"]


class SimulatedOllama(LoopbackServer[ServerStats]):
    """An Ollama-compatible HTTP server on loopback with simulated models.

    ``speed`` divides every simulated delay (load, first token, per token), so tests can
    run a realistic profile in milliseconds. Time is ``clock``'s (the SystemClock unless
    given): on a ManualClock, loads, tokens and keep_alive expiry wait for ``advance``.
    State (loaded models, stats, faults) lives here, not in the listener, so
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
    ) -> None:
        if max_loaded_models < 1:
            raise ValueError("max_loaded_models must be at least 1")
        if speed <= 0:
            raise ValueError("speed must be positive")
        super().__init__(OllamaHandler, name="simulated-ollama", host=host, port=port, clock=clock)
        catalog = DEFAULT_MODELS if models is None else models
        self.models: Mapping[str, ModelProfile] = MappingProxyType(
            {canonical(name): profile for name, profile in catalog.items()}
        )
        self.max_loaded_models = max_loaded_models
        self.speed = speed
        self.residency = Residency(
            self.cond,
            self.bump_locked,
            self.clock,
            max_loaded_models=max_loaded_models,
            speed=speed,
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

    def lookup(self, model: str) -> tuple[str, ModelProfile]:
        """The canonical name and profile of ``model``; Ollama's 404 if it is not pulled."""
        name = canonical(model)
        profile = self.models.get(name)
        if profile is None:
            raise HTTPError(404, f'model "{model}" not found, try pulling it first')
        return name, profile
