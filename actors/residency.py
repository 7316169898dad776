"""The ResidencyTracker actor: which models are loaded where, and until when.

It learns from two sources. GPU slots tell it at once (``CallStarting`` when a call
begins, naming the model a slot switched away from, ``ModelLoaded`` when a call
produced output, ``CallEnded`` when it ended); a timer makes it ask the backend's
``loaded_models()`` (Ollama's ``/api/ps``), which is the truth and also catches what
slots cannot see: a keep_alive running out, another client loading a model, a server
restart. A model a slot switched away from counts as gone at once (loading the next one
may evict it), and a model newly loaded makes it poll at once, so the picture is true
again as soon as the load is done instead of a poll interval later. The poll and the
pins are slow I/O, so they run on the tracker's worker thread and come back as
messages (docs/architecture.md section 8).

Keys are residency keys (``JobSpec.model_key``: the model plus the runner options
that force a reload). ``/api/ps`` reports names only (``llama3.2:latest`` for
``llama3.2``): a polled name is normalised and mapped to the key a slot last loaded
for that model, or to the bare name. Whenever the resident set changes, the tracker
tells the arbiter ``ResidencyChanged``.

It pins ``residency.chat_model`` and ``residency.embedding_model`` with keep_alive
(two-slot residency) at start, after a settings change, after the backend comes back,
and again whenever a poll finds a pinned model gone (a restarted server, an admin's
unload). The embedding model is loaded the way Ollama loads one (an empty embed).

Swaps are counted here, from residency (``actors.swap_tally``): a call that starts
for a model not resident (and not already being loaded by another slot) and then
loads it is a swap, as is a pin that loads its model.

It also keeps the backend's health (docs/architecture.md section 13): a slot's
``BackendUnreachable``, or a poll or pin that cannot reach the backend, marks it down;
the tracker tells the arbiter, stops the regular polls and probes instead (a poll)
with capped exponential back-off and jitter; the first probe that gets an answer
marks it up, tells the arbiter, and restores the pins. With no backend to ask (a fake
GPU), a probe is blind: the backend counts as up once its delay has passed.

There is one tracker per backend (issue #17): ``name`` is its backend's, every message
it tells the arbiter names it, and so do its log lines. It also knows the backend's
catalog, the normalised names of the models it can run: the configured ``catalog``
(told at start, never read), else ``Backend.list_models()`` read on the worker at
start, when the backend comes back up and every ``catalog_interval_s``. Whenever the
catalog is first known or changes, and again at start, it tells the arbiter
``CatalogChanged``. A failed read keeps the last catalog (a host that is down keeps its
own, so jobs for its models wait for it); an outage marks the backend down, as a failed
poll does.
"""

from __future__ import annotations

import random
from types import MappingProxyType
from typing import Any

import pykka
import structlog

from actors.backend_health import BackendHealth
from actors.backends.base import Backend
from actors.hosts import tracker_id_for
from actors.runtime import (
    ActorAddress,
    Clock,
    SupervisedActor,
    TimerHandle,
    Timers,
    WorkerThread,
)
from actors.swap_tally import SwapTally
from protocol import (
    LOCAL_BACKEND,
    BackendError,
    LoadedModel,
    ResidencySettings,
    model_of_key,
    normalise_model_name,
)
from protocol.messages import (
    ApplyResidency,
    BackendHealthChanged,
    BackendUnreachable,
    CallEnded,
    CallStarting,
    CatalogChanged,
    CatalogRead,
    CatalogReadFailed,
    ModelLoaded,
    PinFinished,
    PollResidency,
    ReadCatalog,
    RefreshCatalog,
    ResidencyChanged,
    ResidencyPolled,
    ResidencyPollFailed,
    ResidencySnapshot,
)

__all__ = ["ResidencyTracker"]

log = structlog.get_logger(__name__)


class ResidencyTracker(SupervisedActor):
    """Owns the resident-model picture; never starts calls (docs/architecture.md section 2).

    ``backend`` None: no polling, no pins and no catalog reads, slot events only (tests
    with a fake GPU). ``arbiter`` hears ``ResidencyChanged``, ``BackendHealthChanged`` and
    ``CatalogChanged``, each naming backend ``name``; ``catalog``, when given, is the
    configured list of the models the backend can run (module docstring).
    """

    def __init__(
        self,
        *,
        settings: ResidencySettings,
        clock: Clock,
        timers: Timers,
        backend: Backend | None = None,
        arbiter: ActorAddress | None = None,
        shutdown_timeout_s: float = 5.0,
        rng: random.Random | None = None,
        name: str = LOCAL_BACKEND,
        catalog: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self._name = name
        self._log = log.bind(backend=name)
        self._configured = catalog is not None  # the catalog is the configuration's, never read
        self._catalog = None if catalog is None else _normalised(catalog)
        self._next_catalog: TimerHandle | None = None
        self._reading_catalog = False
        self._catalog_failing = False  # the last read failed (warned of once per streak)
        self._settings = settings
        self._clock = clock
        self._timers = timers
        self._backend = backend
        self._arbiter = arbiter
        self._shutdown_timeout_s = shutdown_timeout_s
        self._worker: WorkerThread | None = None
        self._next_poll: TimerHandle | None = None
        self._polling = False
        self._poll_again = False  # a model was loaded while a poll was out: ask again after it
        self._evicted_meanwhile: set[str] = set()  # keys slots left while a poll was out
        self._pinning: set[str] = set()
        self._by_slot: dict[str, tuple[str, float]] = {}  # slot -> (key, when it said so)
        self._polled: dict[str, LoadedModel] = {}  # key -> what /api/ps said
        self._polled_at: float | None = None
        self._last_key: dict[str, str] = {}  # model name -> key a slot last loaded for it
        self._told: frozenset[str] | None = None
        self._rng = rng or random.Random()
        self._health = BackendHealth(name, since=clock.now())
        self._tally = SwapTally()
        self._starting: dict[str, tuple[str, bool]] = {}  # slot -> (key, its call swaps)
        self._cut_loads: set[str] = set()  # keys a call was loading when it was cut
        self._pin_warned: set[str] = set()  # pins whose failure was logged as a warning
        self._counters = {
            "polls": 0, "poll_failures": 0, "pins": 0, "pin_failures": 0,
            "catalog_reads": 0, "catalog_failures": 0,
        }  # fmt: skip

    def on_start(self) -> None:
        """Start the worker, read the catalog and poll once, pin the configured models
        (once the catalog is known: a backend pins only what it has), tell the arbiter
        (its health too: a tracker restarted during an outage starts by assuming up; and
        a configured catalog)."""
        if self._backend is not None:
            self._worker = WorkerThread(f"gpulane-{tracker_id_for(self._name)}")
            self._read_catalog()  # first: the worker answers in order, before the poll
            self._pin_missing()
            self._poll()
        self._tell_health()
        self._tell_catalog()
        self._publish()

    def on_end(self) -> None:
        """Stopped or crashed: drop the timers and join the worker, so the next instance's
        are the only ones."""
        for timer in (self._next_poll, self._next_catalog):
            if timer is not None:
                timer.cancel()
        if self._worker is not None:
            self._worker.stop(self._shutdown_timeout_s)

    def on_receive(self, message: Any) -> Any:
        """Dispatch on the message type."""
        match message:
            case CallStarting(slot_id=slot_id, model_key=key, evicted=evicted):
                if evicted is not None:
                    self._on_evicted(slot_id, evicted)
                self._on_call_starting(slot_id, key)
            case ModelLoaded(slot_id=slot_id, model_key=key):
                self._on_loaded(slot_id, key)
            case CallEnded():
                self._on_call_ended(message)
            case BackendUnreachable(error=error, started_at=started_at):
                if self._health.is_stale(started_at):
                    self._log.debug("stale_outage_report", slot=message.slot_id, error=error)
                else:
                    self._went_down(error)
            case PollResidency():
                self._next_poll = None
                self._on_poll_due()
            case ResidencyPolled(models=models, asked_at=asked_at):
                self._on_polled(models, asked_at)
            case ResidencyPollFailed():
                self._on_poll_failed(message)
            case PinFinished():
                self._on_pinned(message)
            case ReadCatalog():
                self._next_catalog = None
                if self._health.up:  # while down, the backend's return reads it
                    self._read_catalog()
            case RefreshCatalog():
                if self._health.up and self._next_catalog is not None:
                    self._next_catalog.cancel()  # the read now stands for the next tick
                    self._next_catalog = None
                    self._read_catalog()
            case CatalogRead(models=models):
                self._on_catalog(models)
            case CatalogReadFailed():
                self._on_catalog_failed(message)
            case ApplyResidency(settings=settings):
                self._settings = settings
                self._rearm_timers()
                self._pin_missing()
            case ResidencySnapshot():
                return self._snapshot()
            case _:
                raise TypeError(f"ResidencyTracker cannot handle {type(message).__name__}")
        self._publish()
        return None

    def resident(self) -> frozenset[str]:
        """Resident keys now: what slots hold, plus what the last poll listed (unexpired)."""
        now = self._clock.now()
        keys = {key for key, _ in self._by_slot.values()}
        keys.update(
            key
            for key, model in self._polled.items()
            if model.expires_at is None or model.expires_at > now
        )
        return frozenset(keys)

    def _on_call_starting(self, slot_id: str, key: str) -> None:
        """A call for ``key`` begins: it swaps if the model is not resident and no other
        slot's call is loading it already (a load a cut call began is now this call's)."""
        loading = any(k == key and swaps for k, swaps in self._starting.values())
        self._cut_loads.discard(key)
        self._starting[slot_id] = (key, key not in self.resident() and not loading)

    def _on_loaded(self, slot_id: str, key: str) -> None:
        newly_loaded = key not in self.resident()
        self._by_slot[slot_id] = (key, self._clock.now())
        self._last_key[model_of_key(key)] = key
        if newly_loaded:
            self._poll_after_load()

    def _on_call_ended(self, ended: CallEnded) -> None:
        """Count the slot's busy time, and the swap if its call loaded a model it lacked."""
        self._tally.busy(ended.busy_s)
        starting = self._starting.pop(ended.slot_id, None)
        if not ended.loaded:
            if starting == (ended.model_key, True):
                # Cut before output while its model loaded (a preemption, a caller gone):
                # the server finishes the load anyway, as Ollama does; the poll that lists
                # the model counts the swap (see _on_polled).
                self._cut_loads.add(ended.model_key)
            return
        if starting == (ended.model_key, True):
            self._tally.swapped(ended.model_key, ended.load_s, self._clock.now())
        self._on_loaded(ended.slot_id, ended.model_key)

    def _went_down(self, error: str) -> None:
        """The backend cannot be reached: stop polling, arm a probe, tell the arbiter (again,
        if it was down already: a restarted arbiter may not know)."""
        if self._health.went_down(error, self._clock.now()):
            self._log.warning("backend_down", error=error)
            if self._next_poll is not None:
                self._next_poll.cancel()
                self._next_poll = None
            self._schedule_poll()
        self._tell_health()

    def _came_up(self) -> None:
        down_for = self._health.came_up(self._clock.now())
        if down_for is None:
            return
        self._log.info("backend_up", down_s=round(down_for, 3), probes=self._health.probes)
        self._tell_health()
        self._read_catalog()

    def _tell_health(self) -> None:
        if self._arbiter is not None:
            health = self._health
            self._arbiter.tell(BackendHealthChanged(health.name, health.up, health.since))

    def _on_poll_due(self) -> None:
        """The poll timer fired: poll (a probe, while down); with no backend to ask, a
        probe is blind and the backend counts as up again."""
        if self._backend is None:
            self._came_up()
        else:
            self._poll()

    def _on_poll_failed(self, failed: ResidencyPollFailed) -> None:
        self._polling = False
        self._evicted_meanwhile.clear()
        if not self._health.up:
            self._health.probe_failed(failed.error)
            self._log.info("backend_probe_failed", error=failed.error)
        elif failed.outage:
            self._went_down(failed.error)
        else:
            self._counters["poll_failures"] += 1
            self._log.warning("residency_poll_failed", error=failed.error)
        self._schedule_poll()
        self._poll_again_if_asked()

    def _key_for(self, name: str) -> str:
        model = normalise_model_name(name)
        return self._last_key.get(model, model)

    def _on_evicted(self, slot_id: str, key: str) -> None:
        """A slot switched from ``key`` to another model. Loading that one may push ``key``
        out of the GPU's memory, so it counts as gone, even if the last poll listed it,
        until a poll taken after the load lists it again (see :meth:`_poll_after_load`)."""
        if self._by_slot.get(slot_id, ("", 0.0))[0] == key:
            del self._by_slot[slot_id]
        self._polled.pop(key, None)
        if self._polling:  # that poll's answer may predate the switch
            self._evicted_meanwhile.add(key)

    def _poll_after_load(self) -> None:
        """A model not resident before has been loaded: ask the backend now what it evicted
        for it (or what it kept), or right after the poll already out."""
        if self._polling:
            self._poll_again = True
        else:
            self._poll()

    def _on_polled(self, models: tuple[LoadedModel, ...], asked_at: float) -> None:
        self._polling = False
        self._counters["polls"] += 1
        if asked_at >= self._health.since:  # an answer to a probe sent during the outage
            self._came_up()
        self._polled = {self._key_for(m.name): m for m in models}
        for key in self._evicted_meanwhile:
            self._polled.pop(key, None)
        self._evicted_meanwhile.clear()
        self._polled_at = asked_at
        for key in self._cut_loads & self._polled.keys():  # loads of cut calls that went on
            self._tally.swapped(key, 0.0, self._clock.now())  # its load time is unknown
        self._cut_loads -= self._polled.keys()
        # The poll is the truth about what a slot reported before it was asked.
        for slot_id, (key, since) in list(self._by_slot.items()):
            if since < asked_at and key not in self._polled:
                del self._by_slot[slot_id]
        self._pin_missing()
        self._schedule_poll()
        self._poll_again_if_asked()

    def _poll_again_if_asked(self) -> None:
        if self._poll_again:
            self._poll_again = False
            self._poll()

    def _on_pinned(self, pinned: PinFinished) -> None:
        """A pin ended: a load (a swap) on success; a failure is warned of once per model
        until a pin of it succeeds, and an unreachable backend is marked down."""
        model, error = pinned.model, pinned.error
        self._pinning.discard(model)
        if error is not None:
            self._counters["pin_failures"] += 1
            warn = model not in self._pin_warned
            self._pin_warned.add(model)
            (self._log.warning if warn else self._log.debug)("pin_failed", model=model, error=error)
            if pinned.outage and self._health.up:
                self._went_down(error)
            return
        self._pin_warned.discard(model)
        self._counters["pins"] += 1
        self._cut_loads.discard(normalise_model_name(model))  # the pin's load counts below
        key = normalise_model_name(model)
        self._last_key.setdefault(key, key)
        resident_key = self._key_for(model)
        self._polled[resident_key] = LoadedModel(name=key)
        self._tally.busy(pinned.load_s)
        self._tally.swapped(resident_key, pinned.load_s, self._clock.now())

    def _poll(self) -> None:
        backend, worker = self._backend, self._worker
        if backend is None or worker is None or self._polling:
            return
        self._polling = True
        me, asked_at, name = self.actor_ref, self._clock.now(), self._name

        def ask() -> None:
            try:
                reply: Any = ResidencyPolled(backend.loaded_models(), asked_at)
            except Exception as exc:  # any failure of the poll is reported, never raised here
                reply = ResidencyPollFailed(_describe(exc), asked_at, _is_outage(exc))
            _tell_quietly(me, reply, name)

        worker.submit(ask)

    def _schedule_poll(self) -> None:
        """Arm the next poll: after the poll interval while up, after the probe back-off
        while down (also with no backend, for the blind probe)."""
        health = self._health
        if self._next_poll is not None or (self._backend is None and health.up):
            return
        if health.up:
            delay = self._settings.poll_interval_s
        else:
            delay = self._settings.probe_delay(health.failed_probes, self._rng.random())
            health.probing(self._clock.now() + delay)
        self._next_poll = self._timers.send_after(delay, self.actor_ref, PollResidency())

    def _pin_missing(self) -> None:
        backend, worker = self._backend, self._worker
        if backend is None or worker is None or not self._health.up:
            return
        loaded = {model_of_key(key) for key in self.resident()}
        keep_alive = self._settings.pin_keep_alive_s
        me, clock, name = self.actor_ref, self._clock, self._name
        for model in self._settings.pinned:
            if normalise_model_name(model) in loaded or model in self._pinning:
                continue
            if self._catalog is None and self._reading_catalog:
                return  # pins wait for the catalog: a backend pins only what it has (#17)
            if self._catalog is not None and normalise_model_name(model) not in self._catalog:
                if model not in self._pin_warned:  # said once, until it is pinned
                    self._pin_warned.add(model)
                    self._log.info("pin_skipped", model=model, why="not in the catalog")
                continue
            self._pinning.add(model)
            embedding = model == self._settings.embedding_model

            def pin(model: str = model, embedding: bool = embedding) -> None:
                began = clock.now()
                try:
                    backend.load(model, keep_alive=keep_alive, embedding=embedding)
                except Exception as exc:  # a failed pin is reported and retried at the next poll
                    failed = PinFinished(model, _describe(exc), 0.0, _is_outage(exc))
                    _tell_quietly(me, failed, name)
                else:
                    _tell_quietly(me, PinFinished(model, None, clock.now() - began), name)

            worker.submit(pin)

    def _read_catalog(self) -> None:
        """Ask the backend which models it can run, on the worker (never for a configured
        catalog; one read at a time)."""
        backend, worker = self._backend, self._worker
        if self._configured or backend is None or worker is None or self._reading_catalog:
            return
        self._reading_catalog = True
        me, name = self.actor_ref, self._name

        def read() -> None:
            try:
                reply: Any = CatalogRead(backend.list_models())
            except Exception as exc:  # any failure of the read is reported, never raised here
                reply = CatalogReadFailed(_describe(exc), _is_outage(exc))
            _tell_quietly(me, reply, name)

        worker.submit(read)

    def _on_catalog(self, models: tuple[str, ...]) -> None:
        """A read answered: tell the arbiter if the catalog is new or changed."""
        self._reading_catalog = False
        self._catalog_failing = False
        self._counters["catalog_reads"] += 1
        catalog = _normalised(models)
        if catalog != self._catalog:
            self._log.info("catalog_changed", models=sorted(catalog))
            self._catalog = catalog
            self._tell_catalog()
        self._pin_missing()  # the first catalog, or a pinned model it has now (pulled)
        self._schedule_catalog()

    def _on_catalog_failed(self, failed: CatalogReadFailed) -> None:
        """A read failed: the last catalog stays (a host that is down keeps its own, so
        jobs for its models wait for it); an outage marks the backend down."""
        self._reading_catalog = False
        self._counters["catalog_failures"] += 1
        warn = not self._catalog_failing and self._health.up
        self._catalog_failing = True
        (self._log.warning if warn else self._log.debug)(
            "catalog_read_failed", error=failed.error, outage=failed.outage
        )
        if failed.outage and self._health.up:
            self._went_down(failed.error)
        self._pin_missing()  # no catalog to go by: pin as with one backend
        self._schedule_catalog()

    def _schedule_catalog(self) -> None:
        """Arm the next read ``catalog_interval_s`` from now, while the backend is up (its
        return from an outage reads at once)."""
        if self._next_catalog is None and self._health.up and not self._configured:
            self._next_catalog = self._timers.send_after(
                self._settings.catalog_interval_s, self.actor_ref, ReadCatalog()
            )

    def _rearm_timers(self) -> None:
        """New settings: an armed poll or catalog read counts its new interval from now."""
        if self._next_poll is not None:
            self._next_poll.cancel()
            self._next_poll = None
            self._schedule_poll()
        if self._next_catalog is not None:
            self._next_catalog.cancel()
            self._next_catalog = None
            self._schedule_catalog()

    def _tell_catalog(self) -> None:
        if self._arbiter is not None and self._catalog is not None:
            self._arbiter.tell(CatalogChanged(self._name, self._catalog))

    def _publish(self) -> None:
        resident = self.resident()
        if resident != self._told and self._arbiter is not None:
            self._arbiter.tell(ResidencyChanged(resident, backend=self._name))
        self._told = resident

    def _snapshot(self) -> Any:
        now = self._clock.now()
        catalog = self._catalog
        return MappingProxyType(
            {
                "backend": self._name,
                "catalog": None if catalog is None else tuple(sorted(catalog)),
                "resident": tuple(sorted(self.resident())),
                "slots": MappingProxyType({s: key for s, (key, _) in self._by_slot.items()}),
                "polled": MappingProxyType(
                    {key: m.expires_at for key, m in sorted(self._polled.items())}
                ),
                "polled_at": self._polled_at,
                "pinned": self._settings.pinned,
                "counters": MappingProxyType(dict(self._counters)),
                "swaps": self._tally.snapshot(now),
                "health": MappingProxyType({self._health.name: self._health.snapshot(now)}),
            }
        )


def _normalised(models: tuple[str, ...]) -> frozenset[str]:
    return frozenset(normalise_model_name(m) for m in models)


def _is_outage(exc: Exception) -> bool:
    return isinstance(exc, BackendError) and exc.outage


def _describe(exc: Exception) -> str:
    """A failure as a log line says it: a BackendError's own words, else its repr."""
    return str(exc) if isinstance(exc, BackendError) else repr(exc)


def _tell_quietly(ref: pykka.ActorRef[Any], message: Any, backend: str) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        log.debug("residency_tracker_gone", backend=backend, message=type(message).__name__)
