"""SupervisedActor: every way an actor ends reaches its supervisor as exactly one exit."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest
from supervision_kit import (
    WAIT_S,
    Behaviour,
    Crash,
    Die,
    Doom,
    Echo,
    Fail,
    Halt,
    Probe,
    Recorder,
)

from actors.runtime import ActorKilledError, ExitKind, SupervisedActor
from actors.runtime._supervised_actor import Link, linked_to
from actors.runtime._vocabulary import ChildExited, ChildReady


class Reports:
    """What a stand-in supervisor was told, in order."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.items: list[ChildReady | ChildExited] = []

    def add(self, report: ChildReady | ChildExited) -> None:
        with self.condition:
            self.items.append(report)
            self.condition.notify_all()

    def wait_for(self, predicate: Callable[[list[ChildReady | ChildExited]], bool]) -> None:
        with self.condition:
            assert self.condition.wait_for(lambda: predicate(self.items), WAIT_S)

    def kinds(self) -> list[str]:
        with self.condition:
            return [type(r).__name__ for r in self.items]


class ParentStub(pykka.ThreadingActor):
    """Stands in for a supervisor: records the reports it is told."""

    def __init__(self, reports: Reports) -> None:
        super().__init__()
        self.reports = reports

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, (ChildReady, ChildExited)):
            self.reports.add(message)


@dataclasses.dataclass
class Parent:
    ref: pykka.ActorRef[ParentStub]
    reports: Reports

    def link(self) -> Link:
        return Link(self.ref, "m")

    def settle(self) -> None:
        """Return once everything told to the stub before now has been recorded."""
        self.ref.ask(None, timeout=WAIT_S)


class Mortal(Probe):
    """A probe with a proxy-callable method that raises a BaseException."""

    def doom(self) -> None:
        raise Doom("proxy doom")


@pytest.fixture
def parent() -> Iterator[Parent]:
    reports = Reports()
    ref = ParentStub.start(reports)
    yield Parent(ref, reports)
    ref.stop()


def start_linked(parent: Parent, behaviour: Behaviour) -> pykka.ActorRef[Mortal]:
    with linked_to(parent.link()):
        return Mortal.start("m", Recorder(), behaviour)


def exits_after_death(parent: Parent, child: pykka.ActorRef[Any]) -> list[ChildExited]:
    """The exit reports, once the child's thread has ended (so no late duplicate can come)."""
    parent.reports.wait_for(lambda items: any(isinstance(r, ChildExited) for r in items))
    for thread in threading.enumerate():
        if thread.name.startswith("Mortal-"):
            thread.join(WAIT_S)
    parent.settle()
    with parent.reports.condition:
        exits = [r for r in parent.reports.items if isinstance(r, ChildExited)]
    assert all(e.urn == child.actor_urn and e.child_id == "m" for e in exits)
    return exits


def _tell(message: Any) -> Callable[[pykka.ActorRef[Mortal]], None]:
    return lambda child: child.tell(message)


def _ask_swallowing(message: Any) -> Callable[[pykka.ActorRef[Mortal]], None]:
    def send(child: pykka.ActorRef[Mortal]) -> None:
        with pytest.raises(ActorKilledError):
            child.ask(message, timeout=WAIT_S)

    return send


def _proxy_doom(child: pykka.ActorRef[Mortal]) -> None:
    with pytest.raises(ActorKilledError):
        child.proxy().doom().get(timeout=WAIT_S)


@pytest.mark.parametrize(
    ("behaviour", "action", "kind", "error_type"),
    [
        pytest.param(Behaviour(), lambda c: c.stop(), ExitKind.NORMAL, "", id="stopped"),
        pytest.param(Behaviour(), _tell(Halt()), ExitKind.NORMAL, "", id="stops-itself"),
        pytest.param(Behaviour(), _tell(Crash()), ExitKind.CRASHED, "RuntimeError", id="crash"),
        pytest.param(
            Behaviour(start_failures=1), None, ExitKind.START_FAILED, "RuntimeError", id="start"
        ),
        pytest.param(
            Behaviour(stop_error=OSError("x")),
            lambda c: c.stop(),
            ExitKind.STOP_FAILED,
            "OSError",
            id="on-stop",
        ),
        pytest.param(
            Behaviour(stop_error=Doom("x")),
            lambda c: c.stop(),
            ExitKind.STOP_FAILED,
            "Doom",
            id="base-exception-in-on-stop",
        ),
        pytest.param(Behaviour(), _tell(Die()), ExitKind.KILLED, "Doom", id="base-in-tell"),
        pytest.param(
            Behaviour(), _ask_swallowing(Die()), ExitKind.KILLED, "Doom", id="base-in-ask"
        ),
        pytest.param(Behaviour(), _proxy_doom, ExitKind.KILLED, "Doom", id="base-in-proxy-call"),
    ],
)
def test_every_way_an_actor_ends_reaches_its_supervisor_as_exactly_one_exit(
    parent: Parent,
    behaviour: Behaviour,
    action: Callable[[pykka.ActorRef[Mortal]], None] | None,
    kind: ExitKind,
    error_type: str,
) -> None:
    bystander = pykka.ThreadingActor.start()
    try:
        child = start_linked(parent, behaviour)
        if action is not None:
            action(child)
        exits = exits_after_death(parent, child)
        assert [(e.reason.kind, e.reason.error_type) for e in exits] == [(kind, error_type)]
        assert not child.is_alive()
        assert bystander.is_alive()  # pykka's stop_all never ran
    finally:
        bystander.stop()


def test_a_base_exception_in_on_start_ends_only_that_actor(parent: Parent) -> None:
    class DoomedAtStart(SupervisedActor):
        def on_start(self) -> None:
            raise Doom("no start")

    with linked_to(parent.link()):
        child = DoomedAtStart.start()
    parent.reports.wait_for(bool)
    parent.settle()
    (report,) = parent.reports.items
    assert isinstance(report, ChildExited)
    assert (report.reason.kind, report.reason.error_type) == (ExitKind.START_FAILED, "Doom")
    assert not child.is_alive()


def test_readiness_is_reported_once_on_start_has_returned(parent: Parent) -> None:
    child = start_linked(parent, Behaviour())
    assert child.ask(Echo(1), timeout=WAIT_S) == 1
    child.stop()
    exits_after_death(parent, child)
    assert parent.reports.kinds() == ["ChildReady", "ChildExited"]


def test_an_actor_started_outside_a_supervisor_works_and_reports_nothing() -> None:
    child = Probe.start("solo", Recorder(), Behaviour())
    with pytest.raises(ValueError, match="bad request"):
        child.ask(Fail(), timeout=WAIT_S)
    assert child.ask(Echo(4), timeout=WAIT_S) == 4  # an ask that raised left it alive
    child.stop()


def test_a_subclass_calling_super_hooks_reports_once(parent: Parent) -> None:
    class Layered(Mortal):
        def on_start(self) -> None:
            super().on_start()

        def on_stop(self) -> None:
            super().on_stop()

    with linked_to(parent.link()):
        child = Layered.start("m", Recorder(), Behaviour())
    child.stop()
    parent.reports.wait_for(lambda items: len(items) >= 2)
    parent.settle()
    assert parent.reports.kinds() == ["ChildReady", "ChildExited"]
