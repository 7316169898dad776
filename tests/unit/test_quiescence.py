"""Quiescence: quiesce() returns once no message is in flight, no worker busy, no timer due."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.runtime import (
    ManualClock,
    SupervisedActor,
    SystemClock,
    Timers,
    WorkerThread,
    is_quiet,
    outside_wait,
    quiesce,
)


class Relay(SupervisedActor):
    """Passes a countdown back and forth with a partner until it reaches zero."""

    def __init__(self, seen: list[int]) -> None:
        super().__init__()
        self.seen = seen
        self.partner: pykka.ActorRef[Any] | None = None

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, pykka.ActorRef):
            self.partner = message
            return None
        self.seen.append(message)
        if message > 0 and self.partner is not None:
            self.partner.tell(message - 1)
        return None


@pytest.fixture
def relays() -> Iterator[tuple[pykka.ActorRef[Relay], list[int]]]:
    seen: list[int] = []
    a, b = Relay.start(seen), Relay.start(seen)
    a.ask(b)
    b.ask(a)
    yield a, seen
    a.stop()
    b.stop()


def test_quiesce_returns_only_after_a_chain_of_messages_between_actors_has_run_out(
    relays: tuple[pykka.ActorRef[Relay], list[int]],
) -> None:
    first, seen = relays
    first.tell(500)
    quiesce()
    assert seen == list(range(500, -1, -1))
    assert is_quiet()


def test_a_worker_with_work_in_hand_is_busy_until_the_work_returns() -> None:
    release = threading.Event()
    done: list[str] = []
    worker = WorkerThread("test-worker")
    try:
        worker.submit(lambda: (release.wait(5), done.append("first")))
        worker.submit(lambda: done.append("second"))
        assert not is_quiet()
        release.set()
        quiesce()
        assert done == ["first", "second"]
    finally:
        worker.stop(5)


def test_a_worker_waiting_on_the_outside_world_rests_until_its_input_arrives() -> None:
    arrived = threading.Event()
    proceed = threading.Event()
    worker = WorkerThread("test-worker")
    try:

        def wait_for_input() -> None:
            with outside_wait(arrived.is_set):
                arrived.wait(5)
            proceed.wait(5)

        worker.submit(wait_for_input)
        quiesce()  # blocked on the outside: at rest
        arrived.set()
        assert not is_quiet(), "input has arrived: the worker counts busy before it wakes"
        proceed.set()
        quiesce()
    finally:
        arrived.set()
        proceed.set()
        worker.stop(5)


def test_a_timer_due_on_the_system_clock_is_in_flight_until_it_has_fired() -> None:
    fired = threading.Event()
    timers = Timers(SystemClock()).start()
    try:
        timers.call_later(0.0, fired.set)
        quiesce()
        assert fired.is_set()
    finally:
        timers.stop()


def test_a_timer_in_the_manual_clocks_future_lets_the_system_rest_until_the_clock_moves() -> None:
    clock = ManualClock()
    fired: list[float] = []
    timers = Timers(clock).start()
    try:
        timers.call_later(30.0, lambda: fired.append(clock.now()))
        quiesce()
        assert fired == []
        clock.advance(30.0)
        quiesce()
        assert len(fired) == 1
    finally:
        timers.stop()


def test_quiesce_names_what_is_still_busy_when_it_gives_up() -> None:
    release = threading.Event()
    worker = WorkerThread("never-rests")
    try:
        worker.submit(lambda: release.wait(5) and None)
        with pytest.raises(AssertionError, match="never-rests"):
            quiesce(timeout=0.05)
    finally:
        release.set()
        worker.stop(5)
