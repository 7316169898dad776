"""Test helpers for supervision: a recording probe actor and a small tree builder.

The probe records what happens to it (``a:init``, ``a:start``, ``a:up``, ``a:stop``,
``a:failed``, ``a:got:1``) in a Recorder that tests wait on, so nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import pykka

from actors.runtime import (
    ChildSpec,
    GetSnapshot,
    StableRef,
    StableRefs,
    SupervisedActor,
    Supervisor,
    SupervisorSnapshot,
    Timers,
)

WAIT_S = 5.0


class Doom(BaseException):
    """A BaseException that is not an Exception (like SystemExit), raised by Die."""


@dataclasses.dataclass(frozen=True)
class Crash:
    """Tell it: the handler raises RuntimeError (a crash)."""


@dataclasses.dataclass(frozen=True)
class Die:
    """The handler raises Doom, a BaseException."""


@dataclasses.dataclass(frozen=True)
class Echo:
    """Ask it: recorded, then answered with ``value``."""

    value: int


@dataclasses.dataclass(frozen=True)
class Fail:
    """Ask it: the handler raises ValueError (a validation error)."""


@dataclasses.dataclass(frozen=True)
class Note:
    """Tell it: recorded as ``<name>:got:<value>``."""

    value: int


@dataclasses.dataclass(frozen=True)
class Block:
    """The handler waits for ``gate`` (bounded), to keep messages queued behind it."""

    gate: threading.Event


@dataclasses.dataclass(frozen=True)
class Halt:
    """The actor stops itself: a normal exit."""


class Recorder:
    """A thread-safe event list that tests wait on."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._events: list[str] = []

    def add(self, event: str) -> None:
        with self._condition:
            self._events.append(event)
            self._condition.notify_all()

    @property
    def events(self) -> list[str]:
        with self._condition:
            return list(self._events)

    def count(self, event: str) -> int:
        with self._condition:
            return self._events.count(event)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = WAIT_S) -> None:
        with self._condition:
            if not self._condition.wait_for(lambda: predicate(self._events), timeout):
                raise AssertionError(f"timed out; events so far: {self._events}")

    def wait_count(self, event: str, count: int, timeout: float = WAIT_S) -> None:
        self.wait_for(lambda events: events.count(event) >= count, timeout)


@dataclasses.dataclass
class Behaviour:
    """What a probe does, shared by all its incarnations and changed by the test."""

    start_failures: int = 0
    start_gate: threading.Event | None = None
    stop_error: BaseException | None = None


class Probe(SupervisedActor):
    """A supervised actor that does what its messages and Behaviour say, and records it."""

    def __init__(self, name: str, recorder: Recorder, behaviour: Behaviour) -> None:
        super().__init__()
        self.name = name
        self.recorder = recorder
        self.behaviour = behaviour
        recorder.add(f"{name}:init")

    def on_start(self) -> None:
        self.recorder.add(f"{self.name}:start")
        if self.behaviour.start_gate is not None:
            self.behaviour.start_gate.wait(timeout=WAIT_S)
        if self.behaviour.start_failures > 0:
            self.behaviour.start_failures -= 1
            raise RuntimeError("start failed")
        self.recorder.add(f"{self.name}:up")

    def on_stop(self) -> None:
        self.recorder.add(f"{self.name}:stop")
        if self.behaviour.stop_error is not None:
            raise self.behaviour.stop_error

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.recorder.add(f"{self.name}:failed")

    def on_receive(self, message: Any) -> Any:
        match message:
            case Crash():
                raise RuntimeError("crash")
            case Die():
                raise Doom("doom")
            case Echo(value):
                self.recorder.add(f"{self.name}:echo:{value}")
                return value
            case Fail():
                raise ValueError("bad request")
            case Note(value):
                self.recorder.add(f"{self.name}:got:{value}")
            case Block(gate):
                gate.wait(timeout=WAIT_S)
            case Halt():
                self.stop()
            case _:
                return super().on_receive(message)
        return None


class Tree:
    """Builds probe specs and supervisors on shared timers and refs; stops them all at the end."""

    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self.refs = StableRefs()
        self.recorder = Recorder()
        self.behaviours: dict[str, Behaviour] = {}
        self._supervisors: list[pykka.ActorRef[Supervisor]] = []

    def spec(self, name: str, **options: Any) -> ChildSpec:
        """A spec whose factory starts a Probe called ``name`` (its Behaviour in behaviours)."""
        behaviour = self.behaviours.setdefault(name, Behaviour())
        recorder = self.recorder
        return ChildSpec(name, lambda: Probe.start(name, recorder, behaviour), **options)

    def specs(self, names: Iterable[str], **options: Any) -> list[ChildSpec]:
        return [self.spec(name, **options) for name in names]

    def start(self, specs: Iterable[ChildSpec], **options: Any) -> pykka.ActorRef[Supervisor]:
        options.setdefault("timers", self.timers)
        supervisor = Supervisor.start(list(specs), refs=self.refs, **options)
        self._supervisors.append(supervisor)
        return supervisor

    def ref(self, child_id: str) -> StableRef:
        return self.refs.ref_for(child_id)

    def stop(self) -> None:
        for supervisor in reversed(self._supervisors):
            supervisor.stop(block=True, timeout=30)


def snapshot(supervisor: pykka.ActorRef[Supervisor]) -> SupervisorSnapshot:
    """The supervisor's snapshot (a round trip through its mailbox)."""
    result: SupervisorSnapshot = supervisor.ask(GetSnapshot(), block=True, timeout=WAIT_S)
    return result
