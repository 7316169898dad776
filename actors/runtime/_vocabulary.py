"""The vocabulary of supervision: restart types, strategies, exit reasons, snapshots, errors.

Plain immutable values (docs/architecture.md sections 7 and 8); the behaviour lives in
the supervisor, supervised actor and stable reference modules beside this one.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = [
    "ActorKilledError",
    "Backoff",
    "ChildExited",
    "ChildExitedError",
    "ChildReady",
    "ChildRestartingError",
    "ChildSnapshot",
    "ChildState",
    "ChildStoppedError",
    "ChildUnavailableError",
    "ExitKind",
    "ExitReason",
    "GetSnapshot",
    "HoldBufferFullError",
    "RestartDue",
    "RestartType",
    "Strategy",
    "SupervisionError",
    "SupervisorSnapshot",
    "WhileRestarting",
]


class RestartType(enum.Enum):
    """When a child that ended is started again (OTP's meaning)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit
    TEMPORARY = "temporary"  # never


class Strategy(enum.Enum):
    """Which children restart when one of them exits and is to be restarted."""

    ONE_FOR_ONE = "one_for_one"  # only that child
    ONE_FOR_ALL = "one_for_all"  # every child
    REST_FOR_ONE = "rest_for_one"  # that child and the ones started after it


class WhileRestarting(enum.Enum):
    """What a stable reference does with a message while its child is not running."""

    HOLD = "hold"  # buffer it (bounded) and deliver it, in order, to the next instance
    FAIL_FAST = "fail_fast"  # raise ChildRestartingError at once


class ChildState(enum.Enum):
    """Where a child is in its life, as a supervisor and its stable reference see it."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


class ExitKind(enum.Enum):
    """How an actor ended; everything but NORMAL is abnormal."""

    NORMAL = "normal"  # stopped on request, on_stop returned
    CRASHED = "crashed"  # an exception in a tell handler
    START_FAILED = "start_failed"  # the factory or on_start raised
    STOP_FAILED = "stop_failed"  # on_stop raised
    KILLED = "killed"  # a BaseException (not an Exception) escaped the actor
    ESCALATED = "escalated"  # a supervisor gave up: too many restarts


@dataclasses.dataclass(frozen=True, slots=True)
class ExitReason:
    """Why an actor ended: its kind, and the error type and text when there was one."""

    kind: ExitKind
    error_type: str = ""
    detail: str = ""

    @property
    def abnormal(self) -> bool:
        """True for every exit but a normal stop (transient children restart on these)."""
        return self.kind is not ExitKind.NORMAL

    @classmethod
    def normal(cls) -> ExitReason:
        """A clean stop."""
        return cls(ExitKind.NORMAL)

    @classmethod
    def from_exception(cls, kind: ExitKind, error: BaseException) -> ExitReason:
        """An exit of ``kind`` caused by ``error`` (kept as type name and text, not the object)."""
        return cls(kind, type(error).__name__, str(error))

    def __str__(self) -> str:
        if not self.error_type:
            return self.kind.value + (f": {self.detail}" if self.detail else "")
        return f"{self.kind.value}: {self.error_type}({self.detail!r})"


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before a restart: ``initial_s * factor**(attempt-1)``, capped, with +/- jitter.

    ``attempt`` counts the supervisor's restarts inside its intensity window, so the
    delay grows while a child keeps failing and falls back once things calm down.
    A zero ``initial_s`` restarts at once.
    """

    initial_s: float = 0.0
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < 0:
            raise ValueError("back-off delays must be 0 or more")
        if self.factor < 1:
            raise ValueError("back-off factor must be 1 or more")
        if not 0 <= self.jitter < 1:
            raise ValueError("back-off jitter must be in [0, 1)")

    def delay(self, attempt: int, unit_random: float) -> float:
        """Seconds before restart number ``attempt`` (1-based); ``unit_random`` in [0, 1)."""
        base = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        return base * (1.0 + self.jitter * (2.0 * unit_random - 1.0))

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The smallest and largest delay :meth:`delay` can give for ``attempt``."""
        return self.delay(attempt, 0.0), self.delay(attempt, 1.0)


# --- messages a supervisor receives ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ChildReady:
    """Told by a supervised actor once its ``on_start`` returned (the instance ``urn``)."""

    child_id: str
    urn: str


@dataclasses.dataclass(frozen=True, slots=True)
class ChildExited:
    """Told exactly once by a supervised actor as it ends, whatever the way."""

    child_id: str
    urn: str
    reason: ExitReason


@dataclasses.dataclass(frozen=True, slots=True)
class RestartDue:
    """A supervisor's own back-off timer fired; ``token`` tells a stale timer from the live one."""

    token: int


@dataclasses.dataclass(frozen=True, slots=True)
class GetSnapshot:
    """Ask a supervisor for its :class:`SupervisorSnapshot`."""


@dataclasses.dataclass(frozen=True, slots=True)
class ChildSnapshot:
    """One child's state and counters; ``supervisor`` is filled in for a nested supervisor."""

    child_id: str
    state: ChildState
    restart: RestartType
    restarts: int
    exits: int
    last_exit: ExitReason | None
    supervisor: SupervisorSnapshot | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SupervisorSnapshot:
    """A supervisor's strategy, restart counter and children, in start order."""

    name: str
    strategy: Strategy
    restarts: int
    children: tuple[ChildSnapshot, ...]

    def child(self, child_id: str) -> ChildSnapshot:
        """The snapshot of the child called ``child_id`` (KeyError if there is none)."""
        for child in self.children:
            if child.child_id == child_id:
                return child
        raise KeyError(child_id)


# --- errors a sender sees -------------------------------------------------------------


class SupervisionError(Exception):
    """Base of the errors the runtime raises: a message that could not reach its actor."""


class ChildUnavailableError(SupervisionError):
    """A message could not reach a supervised child; ``child_id`` says which."""

    def __init__(self, child_id: str, text: str) -> None:
        self.child_id = child_id
        super().__init__(text)


class ChildRestartingError(ChildUnavailableError):
    """The child is (re)starting and its spec says FAIL_FAST: try again shortly."""

    def __init__(self, child_id: str) -> None:
        super().__init__(child_id, f"child {child_id!r} is restarting; try again shortly")


class HoldBufferFullError(ChildUnavailableError):
    """The child is (re)starting and already holds ``limit`` messages for its next instance."""

    def __init__(self, child_id: str, limit: int) -> None:
        self.limit = limit
        super().__init__(child_id, f"child {child_id!r} is restarting and holds {limit} messages")


class ChildExitedError(ChildUnavailableError):
    """An ask was in flight to an instance that ended before answering; ``reason`` says how."""

    def __init__(self, child_id: str, reason: ExitReason) -> None:
        self.reason = reason
        super().__init__(child_id, f"child {child_id!r} exited before answering ({reason})")


class ChildStoppedError(ChildUnavailableError):
    """The child has stopped for good (temporary, transient after a normal exit, tree stopped)."""

    def __init__(self, child_id: str) -> None:
        super().__init__(child_id, f"child {child_id!r} is stopped and will not restart")


class ActorKilledError(SupervisionError):
    """A BaseException escaped a supervised actor, which was stopped alone (not the process)."""
