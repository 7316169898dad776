"""The simulated GPU's residency: the model runners loaded (or loading), their keep_alive
expiry and load time, on the server's Clock, and the stats a test reads (ServerStats).

The rules are Ollama's where gpulane depends on them (docs/architecture.md section 9):
one request at a time per model (OLLAMA_NUM_PARALLEL=1), ``max_loaded_models`` runners
at most (OLLAMA_MAX_LOADED_MODELS), the least recently used idle runner evicted to make
room, a runner reloaded when a load option such as ``num_ctx`` changes, and a runner
unloaded when its keep_alive runs out after its last request.

keep_alive is sticky, as in server/sched.go: a runner keeps the duration it was loaded
with (the request's keep_alive, else OLLAMA_KEEP_ALIVE's default) until a request that
carries a keep_alive changes it (useLoadedRunner); a request without one leaves it as it
is. Once idle, the runner unloads after that duration (0: at once; negative: never).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Mapping

from actors.backends.simulated._catalog import ModelProfile
from actors.backends.simulated._loopback import Aborted
from actors.backends.simulated._wire import KeepAlive
from actors.runtime import Clock

__all__ = ["Residency", "ResidentModel", "Runner", "ServerStats"]


@dataclasses.dataclass(frozen=True, slots=True)
class ServerStats:
    """A snapshot of what the server saw. A call is a chat or generate request that
    produces text; ``calls_disconnected`` counts calls stopped because the client went
    away. ``loading`` names the models whose load is under way."""

    requests: int = 0
    calls_started: int = 0
    calls_finished: int = 0
    calls_disconnected: int = 0
    calls_faulted: int = 0
    tokens_generated: int = 0
    embed_requests: int = 0
    loads: int = 0
    unloads: int = 0
    evictions: int = 0
    reloads: int = 0
    active_calls: int = 0
    peak_active_calls: int = 0
    loaded: tuple[str, ...] = ()
    loading: tuple[str, ...] = ()


_COUNTERS = tuple(
    field.name
    for field in dataclasses.fields(ServerStats)
    if field.name not in ("loaded", "loading")
)


@dataclasses.dataclass(slots=True)
class Runner:
    """A model resident (or being loaded) on the simulated GPU."""

    name: str
    profile: ModelProfile
    runner_options: tuple[tuple[str, object], ...]
    loading_since: float  # clock time the load began
    ready_at: float  # clock time the load ends
    session: float | None  # seconds it stays loaded once idle; None: forever
    busy: bool = True
    ready: bool = False
    expires_at: float | None = None  # clock time; None: never
    last_used: int = 0  # when it was last given back, as a count of uses: the LRU order
    unload_when_idle: bool = False

    @property
    def context_length(self) -> int:
        """The num_ctx this runner was loaded with."""
        value = dict(self.runner_options)["num_ctx"]
        return value if isinstance(value, int) else self.profile.context_length


@dataclasses.dataclass(frozen=True, slots=True)
class ResidentModel:
    """One loaded model as ``/api/ps`` reports it."""

    name: str
    profile: ModelProfile
    expires_at: float | None  # clock time; None: never
    context_length: int


class Residency:
    """The runners of one simulated server, guarded by the server's condition ``cond``.

    Counters go through ``bump_locked`` (called with ``cond`` held). A load takes the
    profile's ``load_seconds`` divided by ``speed``, on ``clock``. A runner loaded by a
    request without keep_alive stays ``default_keep_alive`` seconds (None: forever).
    """

    def __init__(
        self,
        cond: threading.Condition,
        bump_locked: Callable[[str], None],
        clock: Clock,
        *,
        max_loaded_models: int,
        speed: float,
        default_keep_alive: float | None,
    ) -> None:
        self._cond = cond
        self._bump_locked = bump_locked
        self._clock = clock
        self._max_loaded_models = max_loaded_models
        self._speed = speed
        self._default_keep_alive = default_keep_alive
        self._runners: dict[str, Runner] = {}
        self._uses = itertools.count(1)

    def acquire(
        self,
        name: str,
        profile: ModelProfile,
        runner_options: tuple[tuple[str, object], ...],
        keep_alive: KeepAlive | None,
        interrupt: threading.Event,
    ) -> tuple[Runner, bool]:
        """Take the model's runner for one request, waiting while it or the GPU is busy;
        the request's ``keep_alive``, if it has one, becomes the runner's duration.

        Returns the runner and whether it still has to be loaded (until its ``ready_at``).
        """
        with self._cond:
            while True:
                if interrupt.is_set():
                    raise Aborted
                self.sweep_locked()
                runner = self._runners.get(name)
                if runner is not None and not runner.busy:
                    if runner.runner_options == runner_options:
                        runner.busy = True
                        if keep_alive is not None:
                            runner.session = keep_alive.seconds
                        return runner, False
                    self._drop_locked(runner, "reloads")
                    continue
                if runner is None:
                    if len(self._runners) < self._max_loaded_models:
                        now = self._clock.now()
                        ready_at = now + profile.load_seconds / self._speed
                        session = self._default_keep_alive
                        if keep_alive is not None:
                            session = keep_alive.seconds
                        runner = Runner(name, profile, runner_options, now, ready_at, session)
                        self._runners[name] = runner
                        self._cond.notify_all()  # stats show it loading
                        return runner, True
                    idle = [r for r in self._runners.values() if not r.busy]
                    if idle:
                        self._drop_locked(min(idle, key=lambda r: r.last_used), "evictions")
                        continue
                self._cond.wait()

    def loaded(self, runner: Runner) -> None:
        """The runner's load finished."""
        with self._cond:
            runner.ready = True
            self._bump_locked("loads")

    def release(self, runner: Runner) -> None:
        """Give the runner back; it stays resident for its ``session`` (None: forever).

        A runner whose load never finished (the server stopped) is forgotten.
        """
        with self._cond:
            runner.busy = False
            runner.last_used = next(self._uses)
            session = runner.session
            runner.expires_at = None if session is None else self._clock.now() + session
            if not runner.ready:
                self._runners.pop(runner.name, None)
            elif session == 0 or runner.unload_when_idle:
                self._drop_locked(runner, "unloads")
            self._cond.notify_all()

    def unload(self, name: str) -> None:
        """Unload now, or as soon as the request running on it ends."""
        with self._cond:
            runner = self._runners.get(name)
            if runner is None:
                return
            if runner.busy:
                runner.unload_when_idle = True
            else:
                self._drop_locked(runner, "unloads")

    def resident(self) -> list[ResidentModel]:
        """The loaded models, most recently used first (what ``/api/ps`` lists)."""
        with self._cond:
            self.sweep_locked()
            runners = sorted(
                (r for r in self._runners.values() if r.ready), key=lambda r: -r.last_used
            )
            return [
                ResidentModel(r.name, r.profile, r.expires_at, r.context_length) for r in runners
            ]

    def stats_locked(self, counters: Mapping[str, int]) -> ServerStats:
        """The stats: ``counters`` and the runners now (``cond`` held)."""
        self.sweep_locked()
        runners = self._runners.values()
        return ServerStats(
            **{name: counters.get(name, 0) for name in _COUNTERS},
            loaded=tuple(sorted(r.name for r in runners if r.ready)),
            loading=tuple(sorted(r.name for r in runners if not r.ready)),
        )

    def next_expiry_locked(self) -> float | None:
        """The clock time the next idle runner's keep_alive runs out (None: none will)."""
        times = [
            r.expires_at for r in self._runners.values() if not r.busy and r.expires_at is not None
        ]
        return min(times, default=None)

    def sweep_locked(self) -> None:
        """Unload every idle runner whose keep_alive has run out (``cond`` held)."""
        now = self._clock.now()
        for runner in list(self._runners.values()):
            if not runner.busy and runner.expires_at is not None and runner.expires_at <= now:
                self._drop_locked(runner, "unloads")

    def _drop_locked(self, runner: Runner, reason: str) -> None:
        """Forget ``runner`` and count why (``cond`` held)."""
        del self._runners[runner.name]
        self._bump_locked(reason)
