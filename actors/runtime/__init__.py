"""gpulane's actor runtime: what pykka leaves to its users, for any pykka application.

OTP-style supervision (child specs, supervisors that nest, restart strategies with an
intensity budget and back-off, stable references that outlive restarts, an actor whose
every way of ending reaches its supervisor once), a lighter mailbox and ask future, a
batching inbox for group commit, timers on an injectable clock, a worker thread for
slow work, and quiescence (knowing that nothing is in flight) for tests.

It imports nothing of gpulane's domain (a test checks it). The modules behind this
one are private; this ``__all__`` is the API. docs/supervision.md explains the tree.
"""

from actors.runtime._addressing import ActorAddress, ask_through_restarts, ask_while_up
from actors.runtime._batching import BatchingInbox, Delivery, Wanted
from actors.runtime._clock import Clock, ManualClock, SystemClock
from actors.runtime._future import LatchFuture
from actors.runtime._mailbox import Mailbox
from actors.runtime._quiescence import is_quiet, outside_wait, quiesce
from actors.runtime._stable_refs import StableRef, StableRefs
from actors.runtime._supervised_actor import SupervisedActor
from actors.runtime._supervisor import ChildSpec, Supervisor, SupervisorSpec
from actors.runtime._timers import Tellable, TimerHandle, Timers
from actors.runtime._vocabulary import (
    ActorKilledError,
    Backoff,
    ChildExitedError,
    ChildRestartingError,
    ChildSnapshot,
    ChildState,
    ChildStoppedError,
    ChildUnavailableError,
    ExitKind,
    ExitReason,
    GetSnapshot,
    HoldBufferFullError,
    RestartType,
    Strategy,
    SupervisionError,
    SupervisorSnapshot,
    WhileRestarting,
)
from actors.runtime._worker import WorkerThread

__all__ = [
    "ActorAddress",
    "ActorKilledError",
    "Backoff",
    "BatchingInbox",
    "ChildExitedError",
    "ChildRestartingError",
    "ChildSnapshot",
    "ChildSpec",
    "ChildState",
    "ChildStoppedError",
    "ChildUnavailableError",
    "Clock",
    "Delivery",
    "ExitKind",
    "ExitReason",
    "GetSnapshot",
    "HoldBufferFullError",
    "LatchFuture",
    "Mailbox",
    "ManualClock",
    "RestartType",
    "StableRef",
    "StableRefs",
    "Strategy",
    "SupervisedActor",
    "SupervisionError",
    "Supervisor",
    "SupervisorSnapshot",
    "SupervisorSpec",
    "SystemClock",
    "Tellable",
    "TimerHandle",
    "Timers",
    "Wanted",
    "WhileRestarting",
    "WorkerThread",
    "ask_through_restarts",
    "ask_while_up",
    "is_quiet",
    "outside_wait",
    "quiesce",
]
