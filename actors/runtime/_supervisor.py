"""OTP-style supervisors for pykka actors (docs/architecture.md section 7).

A :class:`Supervisor` is itself a supervised pykka actor, so supervisors nest. It
starts its children in order (each ready before the next), restarts them by
strategy with back-off on the injected clock, counts restarts against an
intensity/period budget, and when the budget is spent stops its children in
reverse order and exits abnormally: its parent then decides, and at the top the
host's ``on_escalate`` callback hears of it. Children are addressed through
:class:`StableRef` objects that survive restarts. See docs/supervision.md.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import pykka
import structlog

from actors.runtime._clock import Clock, SystemClock
from actors.runtime._stable_refs import DEFAULT_HOLD_LIMIT, StableRef, StableRefs
from actors.runtime._supervised_actor import Link, SupervisedActor, linked_to
from actors.runtime._timers import TimerHandle, Timers
from actors.runtime._vocabulary import (
    Backoff,
    ChildExited,
    ChildReady,
    ChildSnapshot,
    ChildState,
    ExitKind,
    ExitReason,
    GetSnapshot,
    RestartDue,
    RestartType,
    Strategy,
    SupervisorSnapshot,
    WhileRestarting,
)

__all__ = ["ChildSpec", "Supervisor", "SupervisorSpec"]

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to run one child: its id, how to start it, when to restart it, how to stop it.

    ``factory`` is a plain zero-argument callable returning the ActorRef of a
    SupervisedActor (``lambda: Store.start(path)``); tests swap it for a fake.
    ``shutdown_s`` bounds the wait for the child to stop (wall-clock, since it
    bounds a real thread); give a nested supervisor enough for its own children.
    ``while_restarting`` and ``hold_limit`` say what its StableRef does with
    messages sent while it is not running.
    """

    id: str
    factory: Callable[[], pykka.ActorRef[Any]]
    restart: RestartType = RestartType.PERMANENT
    shutdown_s: float = 5.0
    while_restarting: WhileRestarting = WhileRestarting.HOLD
    hold_limit: int = DEFAULT_HOLD_LIMIT
    tree: SupervisorSpec | None = None  # the nested supervisor this child runs, if it is one

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a child spec needs a non-empty id")
        if self.shutdown_s <= 0:
            raise ValueError(f"child {self.id!r}: shutdown_s must be more than 0")
        if self.hold_limit < 0:
            raise ValueError(f"child {self.id!r}: hold_limit must be 0 or more")


@dataclasses.dataclass(frozen=True, slots=True)
class SupervisorSpec:
    """A supervisor's flags and children, as an OTP ``init/1`` returns them: data, no threads.

    :meth:`Supervisor.start_spec` runs it; :meth:`child` makes it the child of another
    supervisor, so a whole tree is one value a test can inspect without starting it.
    """

    name: str
    strategy: Strategy
    children: tuple[ChildSpec, ...]
    intensity: int = 3
    period_s: float = 5.0
    backoff: Backoff = Backoff()

    def child(self, *, refs: StableRefs, timers: Timers, shutdown_s: float) -> ChildSpec:
        """A ChildSpec that runs this supervisor (sharing ``refs`` and ``timers``) as a child."""
        return ChildSpec(
            self.name,
            lambda: Supervisor.start_spec(self, refs=refs, timers=timers),
            shutdown_s=shutdown_s,
            tree=self,
        )


@dataclasses.dataclass(eq=False, slots=True)
class _Child:
    """The supervisor's private record of one child."""

    spec: ChildSpec
    index: int
    ref: StableRef
    instance: pykka.ActorRef[Any] | None = None
    state: ChildState = ChildState.STARTING
    restarts: int = 0
    exits: int = 0
    last_exit: ExitReason | None = None

    @property
    def id(self) -> str:
        """The child's id (from its spec)."""
        return self.spec.id


class Supervisor(SupervisedActor):
    """Runs child actors by their specs and keeps them running (start with ``Supervisor.start``).

    ``refs`` is the directory of stable refs the host (and the children) address
    the children through; share one across a tree. ``timers`` (or a ``clock``, for
    which the supervisor then owns its own Timers) drives back-off and the
    intensity window. ``on_escalate`` is called, on the supervisor's thread, when
    a supervisor with no parent exits abnormally; the tree is already stopped.
    """

    ready_after_on_start = False  # ready once every child has had its first start

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        refs: StableRefs,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 3,
        period_s: float = 5.0,
        backoff: Backoff | None = None,
        timers: Timers | None = None,
        clock: Clock | None = None,
        name: str = "supervisor",
        on_escalate: Callable[[ExitReason], None] | None = None,
        rng: random.Random | None = None,
        snapshot_timeout_s: float = 2.0,
    ) -> None:
        super().__init__()
        ids = [spec.id for spec in children]
        if len(set(ids)) != len(ids):
            raise ValueError(f"supervisor {name!r}: child ids must be unique, got {ids}")
        if intensity < 0 or period_s <= 0:
            raise ValueError(f"supervisor {name!r}: need intensity >= 0 and period_s > 0")
        if timers is not None and clock is not None and timers.clock is not clock:
            raise ValueError(f"supervisor {name!r}: timers run on a different clock")
        self.name = name
        self.refs = refs
        self._strategy = strategy
        self._intensity = intensity
        self._period_s = period_s
        self._backoff = backoff if backoff is not None else Backoff()
        self._owns_timers = timers is None
        self._timers = (
            timers if timers is not None else Timers(clock if clock is not None else SystemClock())
        )
        self._on_escalate = on_escalate
        self._rng = rng if rng is not None else random.Random()
        self._snapshot_timeout_s = snapshot_timeout_s
        self._children = [
            _Child(spec, index, refs.declare(spec.id, spec.while_restarting, spec.hold_limit))
            for index, spec in enumerate(children)
        ]
        for spec in children:
            if spec.tree is not None:
                _declare_descendants(refs, spec.tree)
        self._by_id = {child.id: child for child in self._children}
        self._start_queue: list[_Child] = []
        self._starting: _Child | None = None
        self._pending: set[str] = set()
        self._restart_timer: TimerHandle | None = None
        self._restart_token = 0
        self._restart_times: list[float] = []
        self._restarts = 0
        self._first_pass_done = False
        self._shut_down = False
        self._log = log.bind(supervisor=name)

    @classmethod
    def start_spec(
        cls,
        spec: SupervisorSpec,
        *,
        refs: StableRefs,
        timers: Timers,
        on_escalate: Callable[[ExitReason], None] | None = None,
    ) -> pykka.ActorRef[Supervisor]:
        """Start a supervisor as ``spec`` declares it; returns its ref."""
        return cls.start(
            list(spec.children),
            refs=refs,
            strategy=spec.strategy,
            intensity=spec.intensity,
            period_s=spec.period_s,
            backoff=spec.backoff,
            timers=timers,
            name=spec.name,
            on_escalate=on_escalate,
        )

    # --- pykka hooks --------------------------------------------------------------------

    def on_start(self) -> None:
        """Start the children in order; readiness is announced when the first pass is done."""
        if self._owns_timers:
            self._timers.start()
        self._log.info(
            "supervisor_started", strategy=self._strategy.value, children=len(self._children)
        )
        self._start_queue = list(self._children)
        self._start_next()

    def on_end(self) -> None:
        """Stop every child, last started first: on a stop, and on a crash of the
        supervisor itself (a bug), which must still take the children down."""
        self._shutdown()

    def on_receive(self, message: Any) -> Any:
        """Handle the children's reports, back-off timers and snapshot requests."""
        if isinstance(message, ChildReady):
            self._on_ready(message)
        elif isinstance(message, ChildExited):
            child = self._current(message.child_id, message.urn)
            if child is not None:
                self._on_exit(child, message.reason)
        elif isinstance(message, RestartDue):
            self._on_restart_due(message)
        elif isinstance(message, GetSnapshot):
            return self._snapshot()
        else:
            return super().on_receive(message)
        return None

    # --- starting -----------------------------------------------------------------------

    def _start_next(self) -> None:
        """Start queued children one at a time, in spec order.

        The next starts only once the previous is ready and no earlier child is
        waiting out its back-off, so a child never runs before those it follows.
        """
        while not self._shut_down and self._starting is None and self._start_queue:
            following = self._start_queue[0].index
            if any(self._by_id[pending].index < following for pending in self._pending):
                return
            self._launch(self._start_queue.pop(0))
        if self._shut_down or self._first_pass_done:
            return
        if self._starting is None and not self._start_queue:
            self._first_pass_done = True
            self._announce_ready()

    def _launch(self, child: _Child) -> None:
        """Call the factory with the link set; a factory error or wrong result is a failed start."""
        try:
            with linked_to(Link(self.actor_ref, child.id)):
                instance = child.spec.factory()
        except Exception as error:
            self._log.exception("child_factory_failed", child=child.id)
            self._on_exit(child, ExitReason.from_exception(ExitKind.START_FAILED, error))
            return
        if not (
            isinstance(instance, pykka.ActorRef)
            and issubclass(instance.actor_class, SupervisedActor)
        ):
            if isinstance(instance, pykka.ActorRef):
                self._stop_and_wait(instance, child)
            detail = f"factory must return the ActorRef of a SupervisedActor, got {instance!r}"
            self._on_exit(child, ExitReason(ExitKind.START_FAILED, "TypeError", detail))
            return
        child.instance = instance
        child.ref.bind(instance)
        self._starting = child

    def _on_ready(self, message: ChildReady) -> None:
        """The current instance finished on_start: open its ref and start the next child."""
        child = self._current(message.child_id, message.urn)
        if child is None:
            return
        child.state = ChildState.RUNNING
        child.ref.ready()
        event = "child_restarted" if child.restarts else "child_started"
        self._log.info(event, child=child.id, urn=message.urn, restarts=child.restarts)
        if self._starting is child:
            self._starting = None
            self._start_next()

    def _current(self, child_id: str, urn: str) -> _Child | None:
        """The child whose live instance is ``urn``; None for stale news or a factory's helper."""
        child = self._by_id.get(child_id)
        if child is None or child.instance is None or child.instance.actor_urn != urn:
            return None
        return child

    # --- exits and restarts -------------------------------------------------------------

    def _on_exit(self, child: _Child, reason: ExitReason) -> None:
        """One child instance ended: restart it (and its group) or leave it stopped."""
        child.instance = None
        child.exits += 1
        child.last_exit = reason
        if self._starting is child:
            self._starting = None
        emit = self._log.warning if reason.abnormal else self._log.info
        emit("child_exited", child=child.id, reason=str(reason), kind=reason.kind.value)
        restart = child.spec.restart is RestartType.PERMANENT or (
            child.spec.restart is RestartType.TRANSIENT and reason.abnormal
        )
        if not restart:
            child.state = ChildState.STOPPED
            child.ref.detach(reason, ChildState.STOPPED)
            self._pending.discard(child.id)
            self._start_next()
            return
        child.state = ChildState.RESTARTING
        child.ref.detach(reason, ChildState.RESTARTING)
        now = self._timers.clock.now()
        self._restart_times = [t for t in self._restart_times if t > now - self._period_s]
        self._restart_times.append(now)
        if len(self._restart_times) > self._intensity:
            self._escalate(child, reason)
            return
        self._restarts += 1
        group = self._group(child)
        for sibling in reversed(group):
            if sibling is not child:
                self._take_down(sibling)
        members = [c for c in group if c.state is ChildState.RESTARTING]
        for member in members:
            member.restarts += 1
        delay = self._backoff.delay(len(self._restart_times), self._rng.random())
        self._log.info(
            "child_restarting",
            child=child.id,
            group=[c.id for c in members],
            delay_s=round(delay, 6),
        )
        self._schedule_restart(members, delay)
        self._start_next()

    def _group(self, child: _Child) -> list[_Child]:
        """The children the strategy restarts with ``child``; those ended for good stay so."""
        if self._strategy is Strategy.ONE_FOR_ONE:
            return [child]
        start = 0 if self._strategy is Strategy.ONE_FOR_ALL else child.index
        return [
            c for c in self._children[start:] if c is child or c.state is not ChildState.STOPPED
        ]

    def _take_down(self, sibling: _Child) -> None:
        """Stop a sibling that restarts with the group (a temporary one is not restarted)."""
        final = (
            ChildState.STOPPED
            if sibling.spec.restart is RestartType.TEMPORARY
            else ChildState.RESTARTING
        )
        if sibling in self._start_queue:
            self._start_queue.remove(sibling)
        if self._starting is sibling:
            self._starting = None
        if final is ChildState.STOPPED:
            self._pending.discard(sibling.id)
        self._stop_child(sibling, final)

    def _schedule_restart(self, members: list[_Child], delay: float) -> None:
        """Restart ``members`` (with any already waiting) after ``delay`` on the clock."""
        self._pending.update(c.id for c in members)
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        self._restart_token += 1
        due = RestartDue(self._restart_token)
        if delay <= 0:
            self._restart_timer = None
            self.actor_ref.tell(due)  # at once, but after the exit being handled now
        else:
            self._restart_timer = self._timers.send_after(delay, self.actor_ref, due)

    def _on_restart_due(self, message: RestartDue) -> None:
        """The back-off is over: queue the waiting children, in spec order."""
        if self._shut_down or message.token != self._restart_token:
            return
        self._restart_timer = None
        due = [c for c in self._children if c.id in self._pending]
        self._pending.clear()
        queued = {c.id for c in self._start_queue}
        self._start_queue.extend(c for c in due if c.id not in queued)
        self._start_queue.sort(key=lambda c: c.index)
        self._start_next()

    def _escalate(self, child: _Child, reason: ExitReason) -> None:
        """The restart budget is spent: stop the children and exit abnormally."""
        detail = (
            f"{self.name}: more than {self._intensity} restarts in {self._period_s:g}s; "
            f"last: child {child.id!r} {reason}"
        )
        escalation = ExitReason(ExitKind.ESCALATED, detail=detail)
        self._log.error("supervisor_escalated", reason=detail)
        self._terminate(escalation)

    # --- stopping -----------------------------------------------------------------------

    def _stop_child(self, child: _Child, final: ChildState) -> None:
        """Stop ``child``'s instance (waiting up to its shutdown time) and leave it in ``final``."""
        instance, child.instance = child.instance, None
        child.ref.suspend(final)  # new messages wait (or fail); queued ones are still handled
        if instance is not None:
            self._stop_and_wait(instance, child)
        child.state = final
        child.ref.detach(ExitReason.normal(), final)

    def _shutdown(self) -> None:
        """Stop every child, last started first; at the top, close the stable refs."""
        if self._shut_down:
            return
        self._shut_down = True
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        self._start_queue.clear()
        self._starting = None
        self._pending.clear()
        top = self._supervision_link is None
        # Below the top, the parent may start a new incarnation that rebinds these refs,
        # so they keep holding; at the top nothing will, so they fail from now on.
        final = ChildState.STOPPED if top else ChildState.RESTARTING
        for child in reversed(self._children):
            self._stop_child(child, final)
            child.state = ChildState.STOPPED
        if top:
            self.refs.close(ExitReason.normal())
        if self._owns_timers:
            self._timers.stop()
        self._log.info("supervisor_stopped")

    def _terminate(self, reason: ExitReason) -> None:
        """Take the children down before this supervisor ends, whatever ended it."""
        self._shutdown()
        super()._terminate(reason)

    def _announce_exit(self, reason: ExitReason) -> None:
        """Report to the parent; with no parent, tell the host about an abnormal end."""
        first = not self._supervision_exit_reported
        super()._announce_exit(reason)
        if not first or self._supervision_link is not None or not reason.abnormal:
            return
        if self._on_escalate is not None:
            try:
                self._on_escalate(reason)
            except Exception:
                self._log.exception("on_escalate_failed")

    # --- observability ------------------------------------------------------------------

    def _snapshot(self) -> SupervisorSnapshot:
        """Each child's state and counters, nested supervisors included.

        Waits (bounded by ``snapshot_timeout_s``) for running nested supervisors'
        own snapshots; one that does not answer in time is shown without its subtree.
        """
        asks: dict[str, pykka.Future[Any]] = {}
        for child in self._children:
            instance = child.instance
            if (
                instance is not None
                and child.state is ChildState.RUNNING
                and issubclass(instance.actor_class, Supervisor)
            ):
                asks[child.id] = instance.ask(GetSnapshot(), block=False)
        deadline = time.monotonic() + self._snapshot_timeout_s
        nested: dict[str, SupervisorSnapshot | None] = {}
        for child_id, future in asks.items():
            try:
                nested[child_id] = future.get(timeout=max(0.0, deadline - time.monotonic()))
            except (pykka.Timeout, pykka.ActorDeadError):
                nested[child_id] = None
        children = tuple(
            ChildSnapshot(
                child_id=c.id,
                state=c.state,
                restart=c.spec.restart,
                restarts=c.restarts,
                exits=c.exits,
                last_exit=c.last_exit,
                supervisor=nested.get(c.id),
            )
            for c in self._children
        )
        return SupervisorSnapshot(self.name, self._strategy, self._restarts, children)

    def _stop_and_wait(self, instance: pykka.ActorRef[Any], child: _Child) -> None:
        """Ask ``instance`` to stop and wait for it (its queued messages are handled first)."""
        try:
            instance.stop(block=True, timeout=child.spec.shutdown_s)
        except pykka.Timeout:
            self._log.error(
                "child_shutdown_timeout", child=child.id, timeout_s=child.spec.shutdown_s
            )


def _declare_descendants(refs: StableRefs, tree: SupervisorSpec) -> None:
    """Declare the refs of a nested tree's children up front, so an earlier sibling can
    address them before the nested supervisor starts (its messages are held till then)."""
    for spec in tree.children:
        refs.declare(spec.id, spec.while_restarting, spec.hold_limit)
        if spec.tree is not None:
            _declare_descendants(refs, spec.tree)
