"""The ResidencyTracker actor: which models are loaded where, and until when.

It learns from two sources. GPU slots tell it at once (``ModelLoaded`` when a call
produced output or finished, ``ModelEvicted`` when a slot switched away from a
model); a timer makes it ask the backend's ``loaded_models()`` (Ollama's
``/api/ps``), which is the truth and also catches what slots cannot see: a
keep_alive running out, another client loading a model, a server restart. A model a
slot switched away from counts as gone at once (loading the next one may evict it),
and a model newly loaded makes it poll at once, so the picture is true again as soon
as the load is done instead of a poll interval later. The
poll and the pins are slow I/O, so they run on the tracker's worker thread and
come back as messages (docs/architecture.md section 8).

Keys are residency keys (``JobSpec.model_key``: the model plus the runner options
that force a reload). ``/api/ps`` reports names only (``llama3.2:latest`` for
``llama3.2``): a polled name is normalised and mapped to the key a slot last loaded
for that model, or to the bare name. Whenever the resident set changes, the tracker
tells the arbiter ``ResidencyChanged``.

It pins ``residency.chat_model`` and ``residency.embedding_model`` with keep_alive
(two-slot residency) at start, after a settings change, and again whenever a poll
finds a pinned model gone.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pykka
import structlog

from actors.backends.base import Backend
from actors.runtime import (
    ActorAddress,
    Clock,
    SupervisedActor,
    TimerHandle,
    Timers,
    WorkerThread,
)
from protocol import LoadedModel, ResidencySettings, normalise_model_name
from protocol.messages import (
    ApplyResidency,
    ModelEvicted,
    ModelLoaded,
    PinFinished,
    PollResidency,
    ResidencyChanged,
    ResidencyPolled,
    ResidencyPollFailed,
    ResidencySnapshot,
)

__all__ = ["ResidencyTracker", "model_of_key"]

log = structlog.get_logger(__name__)


def model_of_key(key: str) -> str:
    """The model name part of a residency key (``llama3.2|num_ctx=8192`` → ``llama3.2``)."""
    return key.partition("|")[0]


class ResidencyTracker(SupervisedActor):
    """Owns the resident-model picture; never starts calls (docs/architecture.md section 2).

    ``backend`` None: no polling and no pins, slot events only (tests with a fake GPU).
    ``arbiter`` hears ``ResidencyChanged``.
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
    ) -> None:
        super().__init__()
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
        self._counters = {
            "loads_reported": 0,
            "loading_s": 0.0,
            "polls": 0,
            "poll_failures": 0,
            "pins": 0,
            "pin_failures": 0,
        }

    def on_start(self) -> None:
        """Start the worker, pin the configured models, poll once, tell the arbiter."""
        if self._backend is not None:
            self._worker = WorkerThread("gpulane-residency")
            self._pin_missing()
            self._poll()
        self._publish()

    def on_stop(self) -> None:
        """Drop the poll timer and join the worker."""
        if self._next_poll is not None:
            self._next_poll.cancel()
        if self._worker is not None:
            self._worker.stop(self._shutdown_timeout_s)

    def on_receive(self, message: Any) -> Any:
        """Dispatch on the message type."""
        match message:
            case ModelLoaded(slot_id=slot_id, model_key=key, load_s=load_s):
                newly_loaded = key not in self.resident()
                self._by_slot[slot_id] = (key, self._clock.now())
                self._last_key[model_of_key(key)] = key
                self._counters["loads_reported"] += 1
                self._counters["loading_s"] += load_s
                if newly_loaded:
                    self._poll_after_load()
            case ModelEvicted(slot_id=slot_id, model_key=key):
                self._on_evicted(slot_id, key)
            case PollResidency():
                self._next_poll = None
                self._poll()
            case ResidencyPolled(models=models, asked_at=asked_at):
                self._on_polled(models, asked_at)
            case ResidencyPollFailed(error=error):
                self._polling = False
                self._counters["poll_failures"] += 1
                self._evicted_meanwhile.clear()
                log.warning("residency_poll_failed", error=error)
                self._schedule_poll()
                self._poll_again_if_asked()
            case PinFinished(model=model, error=error):
                self._on_pinned(model, error)
            case ApplyResidency(settings=settings):
                self._settings = settings
                if self._next_poll is not None:
                    self._next_poll.cancel()
                    self._next_poll = None
                    self._schedule_poll()
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
        self._polled = {self._key_for(m.name): m for m in models}
        for key in self._evicted_meanwhile:
            self._polled.pop(key, None)
        self._evicted_meanwhile.clear()
        self._polled_at = asked_at
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

    def _on_pinned(self, model: str, error: str | None) -> None:
        self._pinning.discard(model)
        if error is not None:
            self._counters["pin_failures"] += 1
            log.warning("pin_failed", model=model, error=error)
            return
        self._counters["pins"] += 1
        key = normalise_model_name(model)
        self._last_key.setdefault(key, key)
        self._polled[self._key_for(model)] = LoadedModel(name=key)

    def _poll(self) -> None:
        backend, worker = self._backend, self._worker
        if backend is None or worker is None or self._polling:
            return
        self._polling = True
        me, asked_at = self.actor_ref, self._clock.now()

        def ask() -> None:
            try:
                reply: Any = ResidencyPolled(backend.loaded_models(), asked_at)
            except Exception as exc:  # any failure of the poll is reported, never raised here
                reply = ResidencyPollFailed(repr(exc), asked_at)
            _tell_quietly(me, reply)

        worker.submit(ask)

    def _schedule_poll(self) -> None:
        if self._backend is None or self._next_poll is not None:
            return
        self._next_poll = self._timers.send_after(
            self._settings.poll_interval_s, self.actor_ref, PollResidency()
        )

    def _pin_missing(self) -> None:
        backend, worker = self._backend, self._worker
        if backend is None or worker is None:
            return
        loaded = {model_of_key(key) for key in self.resident()}
        keep_alive = self._settings.pin_keep_alive_s
        me = self.actor_ref
        for model in self._settings.pinned:
            if normalise_model_name(model) in loaded or model in self._pinning:
                continue
            self._pinning.add(model)

            def pin(model: str = model) -> None:
                try:
                    backend.load(model, keep_alive=keep_alive)
                except Exception as exc:  # a failed pin is reported and retried at the next poll
                    _tell_quietly(me, PinFinished(model, repr(exc)))
                else:
                    _tell_quietly(me, PinFinished(model, None))

            worker.submit(pin)

    def _publish(self) -> None:
        resident = self.resident()
        if resident != self._told and self._arbiter is not None:
            self._arbiter.tell(ResidencyChanged(resident))
        self._told = resident

    def _snapshot(self) -> Any:
        return MappingProxyType(
            {
                "resident": tuple(sorted(self.resident())),
                "slots": MappingProxyType({s: key for s, (key, _) in self._by_slot.items()}),
                "polled": MappingProxyType(
                    {key: m.expires_at for key, m in sorted(self._polled.items())}
                ),
                "polled_at": self._polled_at,
                "pinned": self._settings.pinned,
                "counters": MappingProxyType(dict(self._counters)),
            }
        )


def _tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        log.debug("residency_tracker_gone", message=type(message).__name__)
