"""Supervisors: strategies, restart types, intensity and escalation, back-off, ordering, refs."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
import structlog
from supervision_kit import (
    WAIT_S,
    Block,
    Crash,
    Die,
    Echo,
    Fail,
    Halt,
    Note,
    Tree,
    snapshot,
)

from actors.runtime import (
    Backoff,
    ChildExitedError,
    ChildRestartingError,
    ChildSpec,
    ChildState,
    ChildStoppedError,
    ExitKind,
    ExitReason,
    HoldBufferFullError,
    ManualClock,
    RestartType,
    StableRefs,
    Strategy,
    Supervisor,
    Timers,
    WhileRestarting,
)
from actors.testing import quiesce, wait_until


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timers(clock: ManualClock) -> Iterator[Timers]:
    timers = Timers(clock).start()
    yield timers
    timers.stop()


@pytest.fixture
def tree(timers: Timers) -> Iterator[Tree]:
    tree = Tree(timers)
    yield tree
    tree.stop()


def running(tree: Tree, name: str, incarnation: int = 1) -> None:
    """Wait until instance number ``incarnation`` of ``name`` is up and its ref reaches it."""
    tree.recorder.wait_count(f"{name}:up", incarnation)
    wait_until(lambda: tree.ref(name).state is ChildState.RUNNING)


def restarted(tree: Tree, name: str, times: int) -> None:
    """Wait until ``name`` has been restarted ``times`` times and is running again."""
    running(tree, name, times + 1)


def after(events: list[str], marker: str, occurrence: int = 1) -> list[str]:
    """The events recorded after the ``occurrence``-th ``marker``."""
    seen = 0
    for index, event in enumerate(events):
        if event == marker:
            seen += 1
            if seen == occurrence:
                return events[index + 1 :]
    raise AssertionError(f"{marker} x{occurrence} not in {events}")


# --- ordering -------------------------------------------------------------------------


def test_children_start_in_order_each_ready_before_the_next_starts(tree: Tree) -> None:
    gate = threading.Event()
    specs = tree.specs("abc")
    tree.behaviours["a"].start_gate = gate
    supervisor = tree.start(specs)
    tree.recorder.wait_count("a:start", 1)
    state = snapshot(supervisor)  # the supervisor still answers while a is starting
    assert [c.state for c in state.children] == [ChildState.STARTING] * 3
    assert tree.recorder.count("b:init") == 0
    gate.set()
    running(tree, "c", 1)
    assert tree.recorder.events == [
        f"{name}:{step}" for name in "abc" for step in ("init", "start", "up")
    ]


def test_stop_stops_children_in_reverse_order_and_honours_each_shutdown_timeout(
    tree: Tree,
) -> None:
    supervisor = tree.start(
        [tree.spec("a"), tree.spec("b", shutdown_s=0.2), tree.spec("c")],
    )
    running(tree, "c", 1)
    gate = threading.Event()
    tree.ref("b").tell(Block(gate))  # b cannot reach its stop message until the gate opens
    with structlog.testing.capture_logs() as logs:
        supervisor.stop(block=True, timeout=WAIT_S)
    stops = [e for e in tree.recorder.events if e.endswith(":stop")]
    assert stops == ["c:stop", "a:stop"]  # b overran its 0.2 s and was left behind
    assert any(e["event"] == "child_shutdown_timeout" and e["child"] == "b" for e in logs)
    gate.set()
    tree.recorder.wait_count("b:stop", 1)


# --- strategies -----------------------------------------------------------------------


def test_one_for_one_restarts_only_the_crashed_child(tree: Tree) -> None:
    supervisor = tree.start(tree.specs("abc"), strategy=Strategy.ONE_FOR_ONE)
    running(tree, "c", 1)
    tree.ref("b").tell(Crash())
    restarted(tree, "b", 1)
    assert tree.ref("b").ask(Echo(7), timeout=WAIT_S) == 7
    events = tree.recorder.events
    assert after(events, "c:up") == ["b:failed", "b:init", "b:start", "b:up", "b:echo:7"]
    state = snapshot(supervisor)
    assert [c.restarts for c in state.children] == [0, 1, 0]
    assert state.restarts == 1


def test_one_for_all_restarts_every_child_when_one_crashes(tree: Tree) -> None:
    supervisor = tree.start(tree.specs("abc"), strategy=Strategy.ONE_FOR_ALL)
    running(tree, "c", 1)
    tree.ref("b").tell(Crash())
    restarted(tree, "c", 1)
    tail = after(tree.recorder.events, "c:up")
    assert tail[:3] == ["b:failed", "c:stop", "a:stop"]  # the others, last started first
    assert [e for e in tail[3:] if e.endswith(":up")] == ["a:up", "b:up", "c:up"]
    assert [c.restarts for c in snapshot(supervisor).children] == [1, 1, 1]


def test_rest_for_one_restarts_the_crashed_child_and_those_started_after_it(tree: Tree) -> None:
    supervisor = tree.start(tree.specs("abcd"), strategy=Strategy.REST_FOR_ONE)
    running(tree, "d", 1)
    tree.ref("b").tell(Crash())
    restarted(tree, "d", 1)
    tail = after(tree.recorder.events, "d:up")
    assert tail[:3] == ["b:failed", "d:stop", "c:stop"]
    assert [e for e in tail[3:] if e.endswith(":up")] == ["b:up", "c:up", "d:up"]
    assert "a:stop" not in tail
    assert [c.restarts for c in snapshot(supervisor).children] == [0, 1, 1, 1]


# --- intensity and escalation ---------------------------------------------------------


def test_more_restarts_than_the_intensity_escalates_to_on_escalate_with_the_tree_stopped(
    tree: Tree,
) -> None:
    escalated = threading.Event()
    reasons: list[ExitReason] = []

    def on_escalate(reason: ExitReason) -> None:
        reasons.append(reason)
        escalated.set()

    supervisor = tree.start(tree.specs("abc"), intensity=2, period_s=60, on_escalate=on_escalate)
    running(tree, "c", 1)
    for attempt in range(3):
        tree.ref("b").tell(Crash())
        if attempt < 2:
            restarted(tree, "b", attempt + 1)
    assert escalated.wait(WAIT_S)
    assert reasons[0].kind is ExitKind.ESCALATED and "more than 2 restarts" in reasons[0].detail
    wait_until(lambda: not supervisor.is_alive())
    assert [e for e in after(tree.recorder.events, "b:failed", 3) if e.endswith(":stop")] == [
        "c:stop",
        "a:stop",
    ]
    with pytest.raises(ChildStoppedError):
        tree.ref("a").tell(Note(1))
    assert supervisor.stop(block=True, timeout=WAIT_S) is False  # already gone: no hang


def test_restarts_spread_wider_than_the_period_do_not_escalate(
    tree: Tree, clock: ManualClock
) -> None:
    supervisor = tree.start(tree.specs("a"), intensity=1, period_s=10)
    for attempt in range(3):
        running(tree, "a", attempt + 1)
        tree.ref("a").tell(Crash())
        clock.advance(11)
    restarted(tree, "a", 3)
    assert snapshot(supervisor).child("a").restarts == 3


def test_a_crash_loop_in_a_nested_supervisor_escalates_to_the_outer_which_restarts_the_subtree(
    tree: Tree,
) -> None:
    inner_specs = tree.specs(["w1", "w2"])
    refs, timers = tree.refs, tree.timers

    def start_inner() -> pykka.ActorRef[Supervisor]:
        return Supervisor.start(
            inner_specs, refs=refs, timers=timers, name="inner", intensity=1, period_s=60
        )

    outer = tree.start(
        [tree.spec("x"), ChildSpec("inner", start_inner, shutdown_s=WAIT_S), tree.spec("y")],
        name="outer",
        strategy=Strategy.ONE_FOR_ONE,
    )
    running(tree, "y", 1)
    tree.ref("w1").tell(Crash())
    restarted(tree, "w1", 1)
    tree.ref("w1").tell(Crash())  # the second restart in the period: inner gives up
    restarted(tree, "w2", 1)  # the outer started a new inner, which started w1 and w2 again
    assert tree.ref("w1").ask(Echo(3), timeout=WAIT_S) == 3  # the same ref reaches it
    wait_until(lambda: snapshot(outer).child("inner").state is ChildState.RUNNING)
    state = snapshot(outer)
    inner = state.child("inner")
    assert inner.restarts == 1 and inner.last_exit is not None
    assert inner.last_exit.kind is ExitKind.ESCALATED
    assert inner.supervisor is not None and inner.supervisor.name == "inner"
    assert [c.state for c in inner.supervisor.children] == [ChildState.RUNNING] * 2
    assert state.child("x").restarts == 0 and state.child("y").restarts == 0
    assert tree.recorder.count("x:init") == 1


# --- restart types --------------------------------------------------------------------


def test_a_transient_child_restarts_after_a_crash_but_not_after_a_normal_exit(
    tree: Tree,
) -> None:
    supervisor = tree.start([tree.spec("t", restart=RestartType.TRANSIENT)])
    running(tree, "t", 1)
    tree.ref("t").tell(Crash())
    restarted(tree, "t", 1)
    tree.ref("t").tell(Halt())
    wait_until(lambda: snapshot(supervisor).child("t").state is ChildState.STOPPED)
    assert tree.recorder.count("t:init") == 2
    with pytest.raises(ChildStoppedError):
        tree.ref("t").tell(Note(1))


def test_a_permanent_child_restarts_even_after_a_normal_exit(tree: Tree) -> None:
    supervisor = tree.start([tree.spec("p")])
    running(tree, "p", 1)
    tree.ref("p").tell(Halt())
    restarted(tree, "p", 1)
    child = snapshot(supervisor).child("p")
    assert child.last_exit == ExitReason.normal() and child.restarts == 1


def test_a_temporary_child_is_never_restarted_and_its_ref_then_raises_child_stopped_error(
    tree: Tree,
) -> None:
    supervisor = tree.start(
        [tree.spec("a"), tree.spec("tmp", restart=RestartType.TEMPORARY)],
        strategy=Strategy.ONE_FOR_ALL,
    )
    running(tree, "tmp", 1)
    tree.ref("tmp").tell(Crash())
    wait_until(lambda: snapshot(supervisor).child("tmp").state is ChildState.STOPPED)
    assert tree.recorder.count("tmp:init") == 1
    assert tree.recorder.count("a:init") == 1  # not restarted: nobody restarts for it
    with pytest.raises(ChildStoppedError):
        tree.ref("tmp").ask(Echo(1), timeout=WAIT_S)


def test_a_temporary_sibling_is_stopped_but_not_restarted_with_its_group(tree: Tree) -> None:
    supervisor = tree.start(
        [tree.spec("a"), tree.spec("tmp", restart=RestartType.TEMPORARY)],
        strategy=Strategy.ONE_FOR_ALL,
    )
    running(tree, "tmp", 1)
    tree.ref("a").tell(Crash())
    restarted(tree, "a", 1)
    assert tree.recorder.count("tmp:stop") == 1 and tree.recorder.count("tmp:init") == 1
    assert snapshot(supervisor).child("tmp").state is ChildState.STOPPED


# --- ways to fail ---------------------------------------------------------------------


def test_a_failure_in_on_start_is_one_exit_and_the_child_is_restarted(tree: Tree) -> None:
    tree.spec("a")
    tree.behaviours["a"].start_failures = 1
    supervisor = tree.start([tree.spec("a"), tree.spec("b")])
    running(tree, "b", 1)
    child = snapshot(supervisor).child("a")
    assert child.exits == 1 and child.restarts == 1 and child.state is ChildState.RUNNING
    assert child.last_exit == ExitReason(ExitKind.START_FAILED, "RuntimeError", "start failed")
    assert tree.recorder.events.index("a:up") < tree.recorder.events.index("b:init")


def test_a_factory_that_raises_counts_as_a_failed_start(tree: Tree) -> None:
    calls: list[int] = []
    recorder_spec = tree.spec("a")

    def flaky() -> pykka.ActorRef[Any]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("no such device")
        return recorder_spec.factory()

    supervisor = tree.start([ChildSpec("a", flaky)])
    running(tree, "a", 1)
    child = snapshot(supervisor).child("a")
    assert child.last_exit == ExitReason(ExitKind.START_FAILED, "OSError", "no such device")
    assert child.restarts == 1


def test_a_factory_returning_a_plain_pykka_actor_is_a_failed_start_and_that_actor_is_stopped(
    tree: Tree,
) -> None:
    escalated = threading.Event()
    tree.start(
        [ChildSpec("plain", pykka.ThreadingActor.start)],
        intensity=0,
        on_escalate=lambda reason: escalated.set(),
    )
    assert escalated.wait(WAIT_S)
    assert pykka.ActorRegistry.get_by_class(pykka.ThreadingActor) == []


def test_an_error_in_on_stop_reaches_the_supervisor_as_a_stop_failed_exit(tree: Tree) -> None:
    tree.spec("a")
    tree.behaviours["a"].stop_error = OSError("flush failed")
    supervisor = tree.start([tree.spec("a")])
    running(tree, "a", 1)
    tree.ref("a").tell(Halt())
    restarted(tree, "a", 1)
    tree.behaviours["a"].stop_error = None
    child = snapshot(supervisor).child("a")
    assert child.exits == 1
    assert child.last_exit == ExitReason(ExitKind.STOP_FAILED, "OSError", "flush failed")


def test_a_base_exception_in_a_child_stops_only_that_child(tree: Tree) -> None:
    bystander = pykka.ThreadingActor.start()
    try:
        supervisor = tree.start(tree.specs("ab"))
        running(tree, "b", 1)
        tree.ref("a").tell(Die())
        restarted(tree, "a", 1)
        assert bystander.is_alive()
        assert tree.recorder.count("b:init") == 1
        child = snapshot(supervisor).child("a")
        assert child.last_exit == ExitReason(ExitKind.KILLED, "Doom", "doom")
        assert child.exits == 1
    finally:
        bystander.stop()


# --- messages during a restart --------------------------------------------------------


def test_messages_sent_during_a_restart_are_held_then_delivered_in_order(
    tree: Tree, clock: ManualClock
) -> None:
    supervisor = tree.start([tree.spec("a")], backoff=Backoff(initial_s=10, jitter=0))
    running(tree, "a", 1)
    ref = tree.ref("a")
    ref.tell(Crash())
    wait_until(lambda: ref.state is ChildState.RESTARTING)
    ref.tell(Note(1))
    reply = ref.ask(Echo(2), block=False)
    ref.tell(Note(3))
    assert ref.held == 3
    assert snapshot(supervisor).child("a").state is ChildState.RESTARTING
    clock.advance(10)
    assert reply.get(timeout=WAIT_S) == 2
    tree.recorder.wait_count("a:got:3", 1)
    assert after(tree.recorder.events, "a:up", 2) == ["a:got:1", "a:echo:2", "a:got:3"]
    assert ref.held == 0


def test_a_fail_fast_child_raises_child_restarting_error_while_it_restarts(
    tree: Tree, clock: ManualClock
) -> None:
    tree.start(
        [tree.spec("a", while_restarting=WhileRestarting.FAIL_FAST)],
        backoff=Backoff(initial_s=5, jitter=0),
    )
    running(tree, "a", 1)
    ref = tree.ref("a")
    ref.tell(Crash())
    wait_until(lambda: ref.state is ChildState.RESTARTING)
    with pytest.raises(ChildRestartingError):
        ref.tell(Note(1))
    with pytest.raises(ChildRestartingError):
        ref.ask(Echo(1), timeout=WAIT_S)
    quiesce()  # the supervisor marks the child restarting before it arms the restart timer
    clock.advance(5)
    wait_until(lambda: ref.state is ChildState.RUNNING)
    assert ref.ask(Echo(2), timeout=WAIT_S) == 2


def test_holding_more_than_the_hold_limit_raises_hold_buffer_full_error(
    tree: Tree, clock: ManualClock
) -> None:
    tree.start([tree.spec("a", hold_limit=2)], backoff=Backoff(initial_s=5, jitter=0))
    running(tree, "a", 1)
    ref = tree.ref("a")
    ref.tell(Crash())
    wait_until(lambda: ref.state is ChildState.RESTARTING)
    ref.tell(Note(1))
    ref.tell(Note(2))
    with pytest.raises(HoldBufferFullError):
        ref.tell(Note(3))
    quiesce()  # the supervisor marks the child restarting before it arms the restart timer
    clock.advance(5)
    tree.recorder.wait_count("a:got:2", 1)
    assert tree.recorder.count("a:got:3") == 0


def test_an_ask_in_flight_to_a_crashing_child_fails_with_child_exited_error(tree: Tree) -> None:
    tree.start([tree.spec("a")])
    running(tree, "a", 1)
    ref = tree.ref("a")
    gate = threading.Event()
    ref.tell(Block(gate))
    ref.tell(Crash())
    reply = ref.ask(Echo(1), block=False)  # queued behind the crash
    gate.set()
    with pytest.raises(ChildExitedError) as error:
        reply.get(timeout=WAIT_S)
    assert error.value.reason.kind is ExitKind.CRASHED
    restarted(tree, "a", 1)


def test_an_ask_whose_handler_raises_returns_the_error_and_the_child_lives_on(
    tree: Tree,
) -> None:
    supervisor = tree.start([tree.spec("a")])
    with pytest.raises(ValueError, match="bad request"):
        tree.ref("a").ask(Fail(), timeout=WAIT_S)
    assert tree.ref("a").ask(Echo(5), timeout=WAIT_S) == 5
    assert snapshot(supervisor).child("a").exits == 0


# --- back-off -------------------------------------------------------------------------


def test_a_restart_waits_for_its_backoff_with_jitter_on_the_manual_clock(
    tree: Tree, clock: ManualClock
) -> None:
    backoff = Backoff(initial_s=4, factor=2, jitter=0.25)
    supervisor = tree.start(
        [tree.spec("a")], backoff=backoff, rng=random.Random(7), intensity=5, period_s=600
    )
    for attempt in (1, 2):
        running(tree, "a", attempt)
        shortest, longest = backoff.bounds(attempt)
        tree.ref("a").tell(Crash())
        wait_until(lambda: tree.ref("a").state is ChildState.RESTARTING)
        quiesce()  # the supervisor marks the child restarting before it arms the timer
        clock.advance(shortest - 0.001)
        assert snapshot(supervisor).child("a").state is ChildState.RESTARTING
        assert tree.recorder.count("a:init") == attempt
        clock.advance(longest - shortest + 0.001)
        restarted(tree, "a", attempt)
    assert backoff.bounds(2) == (6.0, 10.0)


def test_a_zero_backoff_restarts_at_once_without_the_clock_moving(tree: Tree) -> None:
    tree.start([tree.spec("a")], backoff=Backoff(initial_s=0))
    running(tree, "a", 1)
    tree.ref("a").tell(Crash())
    restarted(tree, "a", 1)


@pytest.mark.parametrize("attempt", [1, 2, 3, 8, 40])
@pytest.mark.parametrize("unit", [0.0, 0.3, 0.999])
def test_backoff_grows_by_its_factor_within_its_jitter_and_stops_at_its_cap(
    attempt: int, unit: float
) -> None:
    backoff = Backoff(initial_s=1, factor=2, max_s=30, jitter=0.2)
    base = min(30.0, 2.0 ** (attempt - 1))
    assert base * 0.8 <= backoff.delay(attempt, unit) <= base * 1.2


# --- observability and configuration --------------------------------------------------


def test_the_snapshot_shows_each_childs_state_and_counters(tree: Tree) -> None:
    supervisor = tree.start(
        [tree.spec("a"), tree.spec("t", restart=RestartType.TEMPORARY)], name="root"
    )
    running(tree, "t", 1)
    tree.ref("t").tell(Halt())
    wait_until(lambda: snapshot(supervisor).child("t").state is ChildState.STOPPED)
    state = snapshot(supervisor)
    assert (state.name, state.strategy, state.restarts) == ("root", Strategy.ONE_FOR_ONE, 0)
    assert [(c.child_id, c.state, c.exits) for c in state.children] == [
        ("a", ChildState.RUNNING, 0),
        ("t", ChildState.STOPPED, 1),
    ]


def test_starts_exits_restarts_and_escalations_are_logged(tree: Tree) -> None:
    escalated = threading.Event()
    with structlog.testing.capture_logs() as logs:
        tree.start([tree.spec("a")], intensity=1, on_escalate=lambda r: escalated.set())
        running(tree, "a", 1)
        tree.ref("a").tell(Crash())
        restarted(tree, "a", 1)
        tree.ref("a").tell(Crash())
        assert escalated.wait(WAIT_S)
    events = [entry["event"] for entry in logs]
    for expected in (
        "child_started",
        "child_exited",
        "child_restarting",
        "child_restarted",
        "supervisor_escalated",
    ):
        assert expected in events
    exited = next(e for e in logs if e["event"] == "child_exited")
    assert exited["kind"] == "crashed" and exited["child"] == "a"


def test_a_normal_stop_of_the_top_supervisor_does_not_escalate_and_closes_the_refs(
    tree: Tree,
) -> None:
    reasons: list[ExitReason] = []
    supervisor = tree.start(tree.specs("ab"), on_escalate=reasons.append)
    running(tree, "b", 1)
    supervisor.stop(block=True, timeout=WAIT_S)
    assert reasons == []
    for name in "ab":
        assert tree.ref(name).state is ChildState.STOPPED
        with pytest.raises(ChildStoppedError):
            tree.ref(name).ask(Echo(1), timeout=WAIT_S)


def test_bad_settings_are_refused_with_a_clear_error(timers: Timers) -> None:
    def factory() -> pykka.ActorRef[Any]:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="non-empty id"):
        ChildSpec("", factory)
    with pytest.raises(ValueError, match="shutdown_s"):
        ChildSpec("a", factory, shutdown_s=0)
    with pytest.raises(ValueError, match="unique"):
        Supervisor.start([ChildSpec("a", factory)] * 2, refs=StableRefs(), timers=timers)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.5)
    assert pykka.ActorRegistry.get_all() == []
