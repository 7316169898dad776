"""Stable references: addresses that always reach a supervised child's current instance.

A :class:`StableRef` is a plain thread-safe object, not an actor, so any actor's
thread and the host thread can use it without a round trip through the supervisor.
The supervisor binds each new instance into it; while no instance is ready the
ref holds messages (bounded) or fails fast, as the child's spec says. Asks sent
through it are tracked, so an instance that dies before answering fails them with
:class:`ChildExitedError` instead of leaving the asker waiting.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal, overload

import pykka
import structlog

from actors.runtime._future import LatchFuture
from actors.runtime._vocabulary import (
    ChildExitedError,
    ChildRestartingError,
    ChildState,
    ChildStoppedError,
    ExitReason,
    HoldBufferFullError,
    WhileRestarting,
)

__all__ = ["StableRef", "StableRefs"]

log = structlog.get_logger(__name__)

DEFAULT_HOLD_LIMIT = 1000


class PendingAsk:
    """The reply slot of one ask sent through a stable ref; the first answer wins."""

    __slots__ = ("_on_settled", "future")

    def __init__(self, on_settled: Callable[[PendingAsk], None]) -> None:
        self.future: pykka.Future[Any] = LatchFuture()
        self._on_settled = on_settled

    def resolve(self, value: Any) -> None:
        """Answer with ``value`` unless an answer was already given."""
        try:
            self.future.set(value)
        except queue.Full:  # pykka's signal that the future already holds a result
            return
        self._on_settled(self)

    def fail(self, error: BaseException) -> None:
        """Answer with ``error`` unless an answer was already given."""
        try:
            self.future.set_exception((type(error), error, error.__traceback__))
        except queue.Full:
            return
        self._on_settled(self)


class StableAsk:
    """The envelope a stable ref tells an instance; SupervisedActor unwraps it and answers.

    Sent as a tell (not a pykka ask) so the reply slot stays with the stable ref,
    which can fail it when the instance dies with the message still in its inbox.
    """

    __slots__ = ("message", "pending")

    def __init__(self, message: Any, pending: PendingAsk) -> None:
        self.message = message
        self.pending = pending


class StableRef:
    """The address of a supervised child that survives its restarts.

    ``tell`` and ``ask`` reach the current instance. While the child is starting
    or restarting, HOLD buffers up to ``hold_limit`` messages and delivers them in
    order to the next instance once it is ready (then raises HoldBufferFullError);
    FAIL_FAST raises ChildRestartingError at once. A child stopped for good raises
    ChildStoppedError. Ask errors surface from the future, as with pykka.
    """

    def __init__(
        self,
        child_id: str,
        while_restarting: WhileRestarting = WhileRestarting.HOLD,
        hold_limit: int = DEFAULT_HOLD_LIMIT,
    ) -> None:
        self.child_id = child_id
        self._while_restarting = while_restarting
        self._hold_limit = hold_limit
        self._lock = threading.Lock()
        self._instance: pykka.ActorRef[Any] | None = None  # set only while RUNNING
        self._pending_instance: pykka.ActorRef[Any] | None = None  # bound, not ready yet
        self._state = ChildState.STARTING
        self._held: collections.deque[tuple[Any, PendingAsk | None]] = collections.deque()
        self._inflight: set[PendingAsk] = set()

    def __repr__(self) -> str:
        return f"StableRef({self.child_id!r}, {self.state.value})"

    @property
    def state(self) -> ChildState:
        """The child's state as seen by senders."""
        with self._lock:
            return self._state

    @property
    def held(self) -> int:
        """How many messages wait for the next instance."""
        with self._lock:
            return len(self._held)

    def tell(self, message: Any) -> None:
        """Deliver ``message`` to the current instance, or hold it / raise per the spec."""
        with self._lock:
            if self._send_locked(message, None):
                return
            self._hold_locked(message, None)

    @overload
    def ask(
        self, message: Any, *, block: Literal[True] = ..., timeout: float | None = ...
    ) -> Any: ...

    @overload
    def ask(
        self, message: Any, *, block: Literal[False], timeout: float | None = ...
    ) -> pykka.Future[Any]: ...

    def ask(self, message: Any, *, block: bool = True, timeout: float | None = None) -> Any:
        """Send ``message`` and wait for the reply (or get a future with ``block=False``).

        Raises what the handler raised, ChildExitedError if the instance ended
        first, the hold/fail-fast errors above, or pykka.Timeout.
        """
        pending = PendingAsk(self._forget)
        try:
            with self._lock:
                if not self._send_locked(message, pending):
                    self._hold_locked(message, pending)
        except (ChildRestartingError, HoldBufferFullError, ChildStoppedError) as error:
            pending.fail(error)
        if block:
            return pending.future.get(timeout=timeout)
        return pending.future

    # --- used by the supervisor ---------------------------------------------------------

    def configure(self, while_restarting: WhileRestarting, hold_limit: int) -> None:
        """Adopt the policy of the child spec that owns this id."""
        with self._lock:
            self._while_restarting = while_restarting
            self._hold_limit = hold_limit

    def bind(self, instance: pykka.ActorRef[Any]) -> None:
        """A new instance was started; messages are still held (or refused) until :meth:`ready`."""
        with self._lock:
            self._instance = None
            self._pending_instance = instance
            if self._state is ChildState.STOPPED:
                self._state = ChildState.STARTING

    def ready(self) -> None:
        """The bound instance finished on_start: deliver what was held, in order, then run."""
        with self._lock:
            instance = self._pending_instance
            if instance is None:
                return
            self._pending_instance = None
            self._instance = instance
            self._state = ChildState.RUNNING
            while self._held:
                message, pending = self._held[0]
                if not self._send_locked(message, pending):
                    return  # the instance died at once; keep the rest for the next one
                self._held.popleft()

    def suspend(self, state: ChildState) -> None:
        """Stop sending to the instance (it is being stopped); in-flight asks may still finish."""
        with self._lock:
            self._instance = None
            self._pending_instance = None
            self._state = state

    def detach(self, reason: ExitReason, state: ChildState) -> None:
        """The instance ended: fail its unanswered asks; if stopped for good, the held ones too."""
        with self._lock:
            self._instance = None
            self._pending_instance = None
            self._state = state
            orphans = list(self._inflight)
            self._inflight.clear()
            dropped: list[tuple[Any, PendingAsk | None]] = []
            if state is ChildState.STOPPED:
                dropped = list(self._held)
                self._held.clear()
        for pending in orphans:
            pending.fail(ChildExitedError(self.child_id, reason))
        for _, held_ask in dropped:
            if held_ask is not None:
                held_ask.fail(ChildStoppedError(self.child_id))
        if dropped:
            log.warning("held_messages_dropped", child=self.child_id, count=len(dropped))

    # --- internals ----------------------------------------------------------------------

    def _send_locked(self, message: Any, pending: PendingAsk | None) -> bool:
        """Tell the running instance; False when there is none (or it just died)."""
        instance = self._instance
        if instance is None or self._state is not ChildState.RUNNING:
            return False
        envelope = message if pending is None else StableAsk(message, pending)
        if pending is not None:
            self._inflight.add(pending)
        try:
            instance.tell(envelope)
        except pykka.ActorDeadError:
            # Dead before its supervisor heard of it: treat it as restarting from now on.
            if pending is not None:
                self._inflight.discard(pending)
            self._instance = None
            self._state = ChildState.RESTARTING
            return False
        return True

    def _hold_locked(self, message: Any, pending: PendingAsk | None) -> None:
        """Buffer the message for the next instance, or raise what the policy says."""
        if self._state is ChildState.STOPPED:
            raise ChildStoppedError(self.child_id)
        if self._while_restarting is WhileRestarting.FAIL_FAST:
            raise ChildRestartingError(self.child_id)
        if len(self._held) >= self._hold_limit:
            raise HoldBufferFullError(self.child_id, self._hold_limit)
        self._held.append((message, pending))

    def _forget(self, pending: PendingAsk) -> None:
        """An ask was answered: stop tracking it."""
        with self._lock:
            self._inflight.discard(pending)


class StableRefs:
    """A thread-safe directory of stable refs by child id, shared by a whole tree.

    Create it before the supervisors and pass it to each of them, so that a
    nested supervisor's new incarnation binds the same refs its siblings hold.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, StableRef] = {}

    def ref_for(self, child_id: str) -> StableRef:
        """The stable ref of ``child_id``; KeyError if no supervisor declared that child."""
        with self._lock:
            return self._refs[child_id]

    def declare(
        self, child_id: str, while_restarting: WhileRestarting, hold_limit: int
    ) -> StableRef:
        """Create the ref of ``child_id``, or adopt the policy into the existing one."""
        with self._lock:
            ref = self._refs.get(child_id)
            if ref is None:
                ref = self._refs[child_id] = StableRef(child_id, while_restarting, hold_limit)
                return ref
        ref.configure(while_restarting, hold_limit)
        return ref

    def __contains__(self, child_id: object) -> bool:
        with self._lock:
            return child_id in self._refs

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._refs))

    def close(self, reason: ExitReason) -> None:
        """The tree stopped: every ref now raises ChildStoppedError and drops what it held."""
        with self._lock:
            refs = list(self._refs.values())
        for ref in refs:
            ref.detach(reason, ChildState.STOPPED)
