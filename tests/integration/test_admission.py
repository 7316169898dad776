"""The RateLimiter and ResidencyTracker actors, alone and wired into a GpuLane (manual clock)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors import Config, GpuLane
from actors.residency import ResidencyTracker
from actors.runtime import Timers
from actors.testing import FakeBackend, FakeGpu, ManualClock, quiesce, wait_until
from protocol import (
    JobSpec,
    Lane,
    Limits,
    LoadedModel,
    QueueFullError,
    RateLimitedError,
    ResidencySettings,
    StoreSettings,
)
from protocol.messages import (
    CallEnded,
    CallStarting,
    ModelLoaded,
    ResidencyChanged,
    ResidencySnapshot,
)


def chat(text: str = "hi", **fields: Any) -> JobSpec:
    return JobSpec.chat(
        model=str(fields.pop("model", "llama3.2")),
        messages=[{"role": "user", "content": text}],
        **fields,
    )


@pytest.fixture
def limited_lane(tmp_path: Path, fake_gpu: FakeGpu) -> Iterator[GpuLane]:
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        limits=Limits(requests_per_minute=0, max_queued_per_caller=2, max_external_queue=3),
    )
    lane = GpuLane.start(config, gpu=fake_gpu, clock=fake_gpu.clock)
    try:
        yield lane
    finally:
        lane.stop()


def test_a_caller_over_its_queue_cap_is_refused_until_one_of_its_jobs_ends(
    limited_lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    first = limited_lane.submit(chat("one", caller="alice"))
    call = fake_gpu.next_call()
    second = limited_lane.submit(chat("two", caller="alice"))
    with pytest.raises(QueueFullError) as caught:
        limited_lane.submit(chat("three", caller="alice"))
    assert (caught.value.limit, caught.value.current, caught.value.maximum) == (
        "queued_per_caller",
        2,
        2,
    )
    assert caught.value.retry_after >= 1.0
    call.finish("done")
    assert first.result(timeout=5) == "done"
    wait_until(lambda: limited_lane.status()["admission"]["queued_by_caller"]["alice"] == 1)
    third = limited_lane.submit(chat("three", caller="alice"))
    assert not second.done() and not third.done()


def test_the_external_lane_depth_is_capped_but_internal_work_still_gets_in(
    limited_lane: GpuLane,
) -> None:
    for caller in ("a", "b", "c"):
        limited_lane.submit(chat(caller=caller), detach=True)
    with pytest.raises(QueueFullError) as caught:
        limited_lane.submit(chat(caller="d"))
    assert caught.value.limit == "external_queue" and caught.value.current == 3
    limited_lane.submit(chat(caller="bot", lane=Lane.INTERNAL), detach=True)


def test_reloading_the_limits_applies_a_new_request_rate(
    limited_lane: GpuLane, manual_clock: ManualClock
) -> None:
    strict = limited_lane.config.replace(
        limits=Limits(requests_per_minute=1, burst=1, max_queued_per_caller=0)
    )
    limited_lane.reload_config(strict)
    wait_until(lambda: _rejects(limited_lane, "zed"))
    with pytest.raises(RateLimitedError) as caught:
        limited_lane.submit(chat(caller="zed"))
    assert caught.value.limit == "requests_per_minute"
    assert caught.value.retry_after == pytest.approx(60.0)
    manual_clock.advance(60.0)
    limited_lane.submit(chat(caller="zed"), detach=True)


def _rejects(lane: GpuLane, caller: str) -> bool:
    """Submit once for ``caller``; True if the limiter refused (a probe after a reload)."""
    try:
        lane.submit(chat(caller=caller), detach=True)
    except RateLimitedError:
        return True
    return False


def test_a_restarted_lane_counts_the_jobs_still_queued_against_their_callers(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        limits=Limits(requests_per_minute=0, max_queued_per_caller=1),
    )
    with GpuLane.start(config, gpu=FakeGpu(clock), clock=clock) as lane:
        lane.pause()
        lane.submit(chat(caller="alice"), detach=True)
    with GpuLane.start(config, gpu=FakeGpu(clock), clock=clock) as again:
        again.pause()
        with pytest.raises(QueueFullError):
            again.submit(chat(caller="alice"))


def test_status_counts_swaps_and_shows_the_resident_model(lane: GpuLane, fake_gpu: FakeGpu) -> None:
    for model in ("a", "a", "b"):
        ticket = lane.submit(chat(model=model))
        fake_gpu.next_call().finish("ok")
        ticket.result(timeout=5)
    wait_until(lambda: lane.status()["resident_models"] == ("b",))
    assert lane.status()["counters"]["swaps"] == 2  # nothing loaded, then a -> b


class _Recorder(pykka.ThreadingActor):
    """Stands in for the arbiter: keeps every ResidencyChanged it hears."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[frozenset[str]] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ResidencyChanged):
            self.seen.append(message.resident)
        return list(self.seen)


@pytest.fixture
def tracker_kit(
    manual_clock: ManualClock,
) -> Iterator[tuple[FakeBackend, pykka.ActorRef[Any], Callable[..., pykka.ActorRef[Any]]]]:
    backend = FakeBackend(manual_clock)
    timers = Timers(manual_clock).start()
    recorder = _Recorder.start()
    started: list[pykka.ActorRef[Any]] = []

    def start(**settings: Any) -> pykka.ActorRef[Any]:
        ref = ResidencyTracker.start(
            settings=ResidencySettings(**settings),
            clock=manual_clock,
            timers=timers,
            backend=backend,
            arbiter=recorder,
        )
        started.append(ref)
        return ref

    yield backend, recorder, start
    for ref in started:
        ref.stop()
    recorder.stop()
    timers.stop()


def _resident(tracker: pykka.ActorRef[Any]) -> tuple[str, ...]:
    snapshot: Any = tracker.ask(ResidencySnapshot())
    return tuple(snapshot["resident"])


def _polls(tracker: pykka.ActorRef[Any]) -> int:
    snapshot: Any = tracker.ask(ResidencySnapshot())
    return int(snapshot["counters"]["polls"])


def test_the_tracker_pins_the_chat_and_embedding_models_with_keep_alive(
    tracker_kit: Any,
) -> None:
    backend, recorder, start = tracker_kit
    loads: list[tuple[str, object, bool]] = []
    real_load = backend.load

    def load(model: str, keep_alive: object = None, *, embedding: bool = False) -> None:
        loads.append((model, keep_alive, embedding))
        real_load(model, keep_alive, embedding=embedding)

    backend.load = load
    tracker = start(chat_model="llama3.2", embedding_model="nomic-embed-text:latest")
    wait_until(lambda: len(loads) == 2)
    # The embedding model is loaded as Ollama loads one (an empty embed), the chat model not.
    assert sorted(loads) == [("llama3.2", -1.0, False), ("nomic-embed-text:latest", -1.0, True)]
    wait_until(lambda: _resident(tracker) == ("llama3.2", "nomic-embed-text"))
    wait_until(lambda: recorder.ask("seen")[-1] == frozenset({"llama3.2", "nomic-embed-text"}))


def test_the_tracker_polls_the_backend_on_a_timer_and_normalises_latest(
    tracker_kit: Any, manual_clock: ManualClock
) -> None:
    backend, recorder, start = tracker_kit
    tracker = start(poll_interval_s=10.0)
    wait_until(lambda: tracker.ask(ResidencySnapshot())["counters"]["polls"] == 1)
    assert _resident(tracker) == ()
    backend.loaded["x"] = LoadedModel(name="llama3.2:latest", expires_at=manual_clock.now() + 300)
    manual_clock.advance(10.0)
    wait_until(lambda: _resident(tracker) == ("llama3.2",))
    assert recorder.ask("seen")[-1] == frozenset({"llama3.2"})
    manual_clock.advance(301.0)  # its keep_alive ran out, and the next poll says it is gone
    del backend.loaded["x"]
    wait_until(lambda: _resident(tracker) == ())


def test_a_polled_model_maps_to_the_key_a_slot_last_loaded_with_reload_options(
    tracker_kit: Any, manual_clock: ManualClock
) -> None:
    backend, _, start = tracker_kit
    tracker = start(poll_interval_s=5.0)
    wait_until(lambda: tracker.ask(ResidencySnapshot())["counters"]["polls"] == 1)
    tracker.tell(CallStarting("gpu0", "llama3.2|num_ctx=8192"))
    tracker.tell(CallEnded("gpu0", "llama3.2|num_ctx=8192", 4.0, loaded=True, load_s=2.5))
    wait_until(lambda: _resident(tracker) == ("llama3.2|num_ctx=8192",))
    wait_until(lambda: _polls(tracker) == 2)  # the poll a newly loaded model prompts
    backend.loaded["llama3.2"] = LoadedModel(name="llama3.2:latest")
    tracker.tell(CallStarting("gpu0", "other", evicted="llama3.2|num_ctx=8192"))
    manual_clock.advance(5.0)
    wait_until(lambda: _polls(tracker) == 3)
    assert _resident(tracker) == ("llama3.2|num_ctx=8192",)
    swaps = tracker.ask(ResidencySnapshot())["swaps"]
    assert swaps["swaps"] == 1 and swaps["loading_s"] == 2.5 and swaps["busy_s"] == 4.0


def test_a_call_cut_while_its_model_loads_counts_the_swap_once_a_poll_lists_the_model(
    tracker_kit: Any, manual_clock: ManualClock
) -> None:
    """A preempted call (or one whose caller left) before any output: Ollama finishes the
    load anyway (server/sched.go loads the runner whatever became of the request), so the
    model is resident without a call having said so; the poll that lists it counts it."""
    backend, _, start = tracker_kit
    tracker = start(poll_interval_s=10.0)
    wait_until(lambda: _polls(tracker) == 1)
    tracker.tell(CallStarting("gpu0", "llama3.2"))
    tracker.tell(CallEnded("gpu0", "llama3.2", 0.01, loaded=False))
    quiesce()
    assert tracker.ask(ResidencySnapshot())["swaps"]["swaps"] == 0
    backend.loaded["x"] = LoadedModel(name="llama3.2:latest")  # the load went on
    for polls in (2, 3):  # listed twice, counted once
        manual_clock.advance(10.0)
        wait_until(lambda polls=polls: _polls(tracker) == polls)
    assert tracker.ask(ResidencySnapshot())["swaps"]["swaps"] == 1
    assert _resident(tracker) == ("llama3.2",)


def test_a_cut_load_taken_over_by_the_next_call_for_the_model_counts_once(
    tracker_kit: Any, manual_clock: ManualClock
) -> None:
    backend, _, start = tracker_kit
    tracker = start(poll_interval_s=10.0)
    wait_until(lambda: _polls(tracker) == 1)
    tracker.tell(CallStarting("gpu0", "llama3.2"))
    tracker.tell(CallEnded("gpu0", "llama3.2", 0.01, loaded=False))
    tracker.tell(CallStarting("gpu0", "llama3.2"))  # waits for the same load, then answers
    tracker.tell(CallEnded("gpu0", "llama3.2", 3.0, loaded=True, load_s=2.0))
    backend.loaded["x"] = LoadedModel(name="llama3.2:latest")
    wait_until(lambda: _polls(tracker) == 2)  # the poll a newly loaded model prompts
    manual_clock.advance(10.0)
    wait_until(lambda: _polls(tracker) == 3)  # and the timer's: both list it
    swaps = tracker.ask(ResidencySnapshot())["swaps"]
    assert (swaps["swaps"], swaps["loading_s"]) == (1, 2.0)


def _switched_from_a(tracker_kit: Any) -> pykka.ActorRef[Any]:
    """A tracker whose last poll listed model a, told that slot gpu0 ran a and has just
    begun a call for another model; polls are 600 s apart, so any other poll is prompted."""
    backend, _, start = tracker_kit
    backend.loaded["a"] = LoadedModel(name="a")
    tracker = start(poll_interval_s=600.0)
    wait_until(lambda: _resident(tracker) == ("a",))
    tracker.tell(ModelLoaded("gpu0", "a"))
    tracker.tell(CallStarting("gpu0", "b", evicted="a"))
    return tracker


def test_a_model_a_slot_switched_away_from_is_gone_until_a_poll_after_the_load_lists_it(
    tracker_kit: Any,
) -> None:
    backend, recorder, _ = tracker_kit
    tracker = _switched_from_a(tracker_kit)
    wait_until(lambda: _resident(tracker) == ())
    del backend.loaded["a"]  # the GPU had room for one model: loading b evicted a
    backend.loaded["b"] = LoadedModel(name="b")
    tracker.tell(ModelLoaded("gpu0", "b"))
    wait_until(lambda: _polls(tracker) == 2)  # at once, not 600 s later
    assert _resident(tracker) == ("b",)
    assert recorder.ask("seen")[-1] == frozenset({"b"})


def test_a_model_the_gpu_kept_beside_the_new_one_is_resident_again_after_the_load(
    tracker_kit: Any,
) -> None:
    backend, recorder, _ = tracker_kit
    tracker = _switched_from_a(tracker_kit)
    backend.loaded["b"] = LoadedModel(name="b")  # room for both
    tracker.tell(ModelLoaded("gpu0", "b"))
    wait_until(lambda: _polls(tracker) == 2)
    assert _resident(tracker) == ("a", "b")
    assert recorder.ask("seen")[-1] == frozenset({"a", "b"})


def test_a_poll_out_while_a_slot_switches_models_does_not_revive_the_old_one(
    tracker_kit: Any, manual_clock: ManualClock
) -> None:
    backend, _, start = tracker_kit
    backend.loaded["a"] = LoadedModel(name="a")
    gate, asked = threading.Event(), threading.Event()
    plain, calls = backend.loaded_models, []

    def slow() -> tuple[LoadedModel, ...]:
        answer = plain()  # what the server says when asked, before the switch
        calls.append(answer)
        if len(calls) == 2:  # the timer's poll: held until the switch is done
            asked.set()
            gate.wait(5)
        return answer

    backend.loaded_models = slow
    tracker = start(poll_interval_s=10.0)
    wait_until(lambda: _resident(tracker) == ("a",))
    manual_clock.advance(10.0)
    assert asked.wait(5)
    tracker.tell(CallStarting("gpu0", "b", evicted="a"))
    backend.loaded.clear()
    backend.loaded["b"] = LoadedModel(name="b")
    tracker.tell(ModelLoaded("gpu0", "b"))
    wait_until(lambda: _resident(tracker) == ("b",))
    gate.set()  # the old answer, still listing a, arrives now
    wait_until(lambda: _polls(tracker) == 3)  # and the tracker asked again after it
    assert _resident(tracker) == ("b",)
    assert [[m.name for m in answer] for answer in calls] == [["a"], ["a"], ["b"]]


def test_a_failed_poll_is_counted_and_polling_goes_on(
    tracker_kit: Any, manual_clock: ManualClock
) -> None:
    backend, _, start = tracker_kit
    calls: list[int] = []

    def broken() -> tuple[LoadedModel, ...]:
        calls.append(1)
        raise ConnectionError("refused")

    backend.loaded_models = broken
    tracker = start(poll_interval_s=1.0)
    wait_until(lambda: tracker.ask(ResidencySnapshot())["counters"]["poll_failures"] == 1)
    manual_clock.advance(1.0)
    wait_until(lambda: tracker.ask(ResidencySnapshot())["counters"]["poll_failures"] == 2)
    assert len(calls) == 2


def test_a_crashed_tracker_joins_its_worker_so_the_next_instance_has_the_only_one(
    tracker_kit: Any,
) -> None:
    _, _, start = tracker_kit
    tracker = start(poll_interval_s=10.0)
    wait_until(lambda: _polls(tracker) == 1)
    assert any(t.name == "gpulane-residency" for t in threading.enumerate())
    tracker.tell("not a message")  # it cannot handle it: it crashes
    wait_until(lambda: not tracker.is_alive())
    wait_until(lambda: not any(t.name == "gpulane-residency" for t in threading.enumerate()))
