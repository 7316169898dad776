"""Debounced alerts: the Alerter actor, and the lane's alerting that outlives it.

:class:`Alerting` belongs to the facade: the rules' state (``actors.alert_rules``) and
the webhook (``actors.alert_webhook``), so a restart of the Alerter neither forgets what
is firing nor sends it twice, and the tree giving up (which stops the Alerter) is still
announced. Each notice goes to the log (``alert_firing``, a warning; ``alert_resolved``)
and to the webhook, if one is configured; :meth:`Alerting.firing` answers the alerts
announced and not yet resolved, for ``GpuLane.status()["alerts"]``.

:class:`Alerter` is the last child of the tree (``actors.tree``), after the actors it
reads, so a crash of its own restarts nothing else. Every ``alerts.sample_s`` on the lane
clock its worker asks the arbiter, the tracker, the limiter and the root supervisor for
their snapshots (never its own thread: the root cannot answer while it stops the
Alerter) and reports back; the store's commit listener tells it the jobs preempted many
times, which a sample would miss once they end. docs/operations.md, "Alerts".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import httpx
import pykka
import structlog

from actors.alert_rules import AlertNotice, AlertRules, LaneSample
from actors.alert_webhook import AlertWebhook
from actors.hosts import tracker_id_for
from actors.runtime import (
    ChildUnavailableError,
    Clock,
    ExitReason,
    GetSnapshot,
    StableRef,
    StableRefs,
    SupervisedActor,
    TimerHandle,
    Timers,
    WorkerThread,
)
from actors.status_view import residency_total, supervision_view
from protocol.config import LOCAL_BACKEND, AlertSettings
from protocol.messages import (
    ApplyAlerts,
    LaneSampled,
    LimiterSnapshot,
    PreemptionsCommitted,
    QueueSnapshot,
    ResidencySnapshot,
    SampleLane,
)

__all__ = ["Alerter", "Alerting"]

log = structlog.get_logger(__name__)

_SAMPLE_TIMEOUT_S = 10.0  # a snapshot not answered by then is left out of the sample
_POLL_S = 0.05  # how often a waiting sample looks whether the Alerter is stopping

Root = Callable[[], pykka.ActorRef[Any] | None]


class Alerting:
    """The rules' state and the webhook of one lane; thread-safe (see the module docstring).

    ``root()`` gives the root supervisor, whose snapshot the Alerter samples (None until
    the tree is started). ``transport`` is the webhook's httpx transport (the test seam).
    """

    def __init__(
        self,
        settings: AlertSettings,
        clock: Clock,
        timers: Timers,
        root: Root,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.clock = clock
        self.root = root
        self._lock = threading.Lock()
        self._rules = AlertRules(settings)
        self._firing: dict[tuple[str, str], AlertNotice] = {}  # the last firing notice of each
        self._webhook = AlertWebhook(settings, timers, transport=transport)

    def observe(self, decide: Callable[[AlertRules], list[AlertNotice]]) -> None:
        """Ask the rules (one caller at a time) and deliver the notices they answer."""
        with self._lock:
            notices = decide(self._rules)
            for notice in notices:
                if notice.firing:
                    self._firing[notice.rule, notice.subject] = notice
                else:
                    self._firing.pop((notice.rule, notice.subject), None)
        for notice in notices:
            fields = notice.to_dict()
            del fields["source"], fields["state"]
            if notice.firing:
                log.warning("alert_firing", **fields)
            else:
                log.info("alert_resolved", **fields)
            self._webhook.send(notice)

    def firing(self) -> tuple[Mapping[str, Any], ...]:
        """The alerts firing now, oldest first: each one's rule, subject, ``since`` (when its
        condition began), ``last_notice_at`` (its latest firing notice, a reminder included),
        ``summary`` (that notice's text), ``value`` and ``threshold``. Lane clock times."""
        with self._lock:
            notices = sorted(self._firing.values(), key=lambda n: (n.since, n.rule, n.subject))
        return tuple(
            MappingProxyType(
                {
                    "rule": n.rule,
                    "subject": n.subject,
                    "since": n.since,
                    "last_notice_at": n.at,
                    "summary": n.summary,
                    "value": n.value,
                    "threshold": n.threshold,
                }
            )
            for n in notices
        )

    def apply(self, settings: AlertSettings) -> None:
        """New settings; a rule turned off resolves its alerts."""
        self._webhook.apply(settings)
        self.observe(lambda rules: rules.apply(settings, self.clock.now()))

    def gave_up(self, reason: ExitReason) -> None:
        """The root supervisor gave up (the Alerter is stopped with the tree): announce it."""
        self.observe(lambda rules: rules.gave_up(str(reason), self.clock.now()))

    def close(self) -> None:
        """Post what is queued, then stop the webhook's worker (the lane is ending)."""
        self._webhook.close()


class Alerter(SupervisedActor):
    """Samples the lane on a timer and hears what a sample would miss; see the module
    docstring. ``settings`` are those in force when it (re)starts; ``backends`` names the
    backends whose trackers it reads (their totals, as ``GpuLane.status()`` has them)."""

    def __init__(
        self,
        *,
        alerting: Alerting,
        settings: AlertSettings,
        refs: StableRefs,
        clock: Clock,
        timers: Timers,
        backends: tuple[str, ...] = (LOCAL_BACKEND,),
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        super().__init__()
        self._alerting = alerting
        self._backends = backends
        self._settings = settings
        self._refs = refs
        self._clock = clock
        self._timers = timers
        self._shutdown_timeout_s = shutdown_timeout_s
        self._worker: WorkerThread | None = None
        self._next: TimerHandle | None = None
        self._sampling = False
        self._stopping = threading.Event()  # tells a sample in progress to give up

    def on_start(self) -> None:
        """Take the settings in force, start the worker and sample at once."""
        self._alerting.apply(self._settings)
        self._worker = WorkerThread("gpulane-alerter")
        self._sample()

    def on_end(self) -> None:
        """Stopped or crashed: drop the timer and join the worker (a sample in progress gives
        up), so no thread outlives this instance."""
        self._wind_up()

    def _wind_up(self) -> None:
        """Stop sampling: a sample in progress gives up, the timer is dropped, the worker joined."""
        self._stopping.set()
        if self._next is not None:
            self._next.cancel()
        if self._worker is not None:
            self._worker.stop(self._shutdown_timeout_s)

    def on_receive(self, message: Any) -> Any:
        """Dispatch on the message type."""
        match message:
            case SampleLane():
                self._next = None
                self._sample()
            case LaneSampled(at=at, status=status):
                self._sampling = False
                sample = LaneSample.from_status(at, status)
                self._alerting.observe(lambda rules: rules.sample(sample))
                self._arm()
            case PreemptionsCommitted(job=job):
                now = self._clock.now()
                self._alerting.observe(lambda rules: rules.job(job, now))
            case ApplyAlerts(settings=settings):
                self._settings = settings
                self._alerting.apply(settings)
                if self._next is not None:  # the next sample at the new pace
                    self._next.cancel()
                    self._next = None
                    self._arm()
            case _:
                raise TypeError(f"Alerter cannot handle {type(message).__name__}")
        return None

    def _arm(self) -> None:
        """Sample again after ``sample_s`` (one sample at a time)."""
        if self._next is None and not self._sampling:
            self._next = self._timers.send_after(
                self._settings.sample_s, self.actor_ref, SampleLane()
            )

    def _sample(self) -> None:
        """Have the worker read the lane's state; it reports back with LaneSampled."""
        worker = self._worker
        if worker is None or self._sampling:
            return
        self._sampling = True
        me, clock = self.actor_ref, self._clock

        def read() -> None:
            try:
                sampled = self._read()
            except Exception:  # a snapshot of an unexpected shape: this sample sees nothing
                log.exception("alert_sample_failed")
                sampled = LaneSampled(clock.now(), MappingProxyType({}))
            _tell_quietly(me, sampled)

        worker.submit(read)

    def _read(self) -> LaneSampled:
        """On the worker: the snapshots the rules watch, as ``GpuLane.status()`` shapes them."""
        at = self._clock.now()
        refs = self._refs
        asks = {
            "queue": _send(refs.ref_for("arbiter"), QueueSnapshot()),
            "admission": _send(refs.ref_for("limiter"), LimiterSnapshot()),
            "tree": _send(self._alerting.root(), GetSnapshot()),
        }
        trackers = {
            name: _send(refs.ref_for(tracker_id_for(name)), ResidencySnapshot())
            for name in self._backends
        }
        deadline = time.monotonic() + _SAMPLE_TIMEOUT_S
        got = {name: self._answer(future, deadline) for name, future in asks.items()}
        tracked = {name: self._answer(future, deadline) for name, future in trackers.items()}
        answered = {name: snapshot for name, snapshot in tracked.items() if snapshot is not None}
        status: dict[str, Any] = {}
        if got["queue"] is not None:
            status["queued"] = got["queue"]["queued"]
        if answered:  # the totals over the backends whose trackers answered
            total = residency_total(answered)
            status["swaps"] = total["swaps"]
            status["health"] = total["health"]
        if got["admission"] is not None:
            status["admission"] = got["admission"]
        if got["tree"] is not None:
            status["supervision"] = supervision_view(got["tree"])
        return LaneSampled(at, MappingProxyType(status))

    def _answer(self, future: pykka.Future[Any] | None, deadline: float) -> Any:
        """The answer, or None once the deadline passed, the ask failed or we are stopping."""
        while future is not None and not self._stopping.is_set():
            try:
                return future.get(timeout=_POLL_S)
            except pykka.Timeout:
                if time.monotonic() > deadline:
                    log.info("alert_sample_timeout")
                    return None
            except (pykka.ActorDeadError, ChildUnavailableError):
                return None  # restarting or gone: this sample goes without it
        return None


def _send(ref: StableRef | pykka.ActorRef[Any] | None, message: Any) -> pykka.Future[Any] | None:
    """Ask without waiting; None if there is no one to ask."""
    if ref is None:
        return None
    try:
        return ref.ask(message, block=False)
    except pykka.ActorDeadError:
        return None


def _tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        log.debug("alerter_gone", message=type(message).__name__)
