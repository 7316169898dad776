"""Public test helpers: a fake GPU whose calls the test controls, a manual clock, fixtures.

Use them in your own tests the way gpulane's tests do::

    # conftest.py
    pytest_plugins = ["actors.testing"]

    def test_my_bot_gets_an_answer(lane, fake_gpu):
        ticket = lane.submit(JobSpec.chat(model="m", messages=[{"role": "user", "content": "hi"}]))
        call = fake_gpu.next_call()
        call.emit("Hello")
        call.finish(" there")
        assert ticket.result(timeout=5) == "Hello there"

The fake sits at the GPU-actor seam: gpulane's real GpuSlot runs on a FakeBackend,
so dispatch, preemption, retry and stale-message handling are the real ones.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.backends.base import CallCancelledError, CancelToken, ChunkSink
from actors.config import Config
from actors.runtime import Clock, ManualClock
from actors.system import GpuLane, SlotWiring, backend_slot_factory
from protocol import (
    BackendError,
    BackendRequest,
    BackendResult,
    EmbedResult,
    JobMetrics,
    LoadedModel,
    StoreSettings,
)
from protocol.messages import QueueSnapshot

__all__ = [
    "FakeBackend",
    "FakeCall",
    "FakeGpu",
    "InjectedFault",
    "ManualClock",
    "fake_gpu",
    "lane",
    "manual_clock",
    "settle",
    "wait_until",
]


@dataclasses.dataclass(frozen=True, slots=True)
class InjectedFault:
    """A message no gpulane actor handles: told to one (``lane.ref_for("arbiter").tell(...)``),
    its handler raises, which is a crash its supervisor must deal with (fault injection)."""


_Action = tuple[str, Any]


class FakeCall:
    """One backend call in flight; the test decides what it emits and how it ends."""

    def __init__(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken, clock: Clock
    ) -> None:
        self.request = request
        self.token = cancel
        self.emitted: list[str] = []
        self.result: BackendResult | None = None  # set once the call returned an answer
        self._on_chunk = on_chunk
        self._clock = clock
        self._actions: queue.SimpleQueue[_Action] = queue.SimpleQueue()
        self.ended = threading.Event()
        cancel.on_cancel(lambda: self._actions.put(("cancelled", None)))

    @property
    def model(self) -> str:
        """The model the call asked for."""
        return self.request.model

    def emit(self, *chunks: str) -> FakeCall:
        """Stream these pieces of text to the caller."""
        for chunk in chunks:
            self._actions.put(("chunk", chunk))
        return self

    def finish(self, text: str = "", metrics: JobMetrics | None = None) -> None:
        """Stream ``text`` (if any) and end the call successfully."""
        if text:
            self.emit(text)
        self._actions.put(
            ("finish", metrics or JobMetrics(eval_count=len(self.emitted) + bool(text)))
        )

    def fail(
        self, message: str = "backend failed", *, transient: bool = True, status: int | None = None
    ) -> None:
        """End the call with a BackendError."""
        self._actions.put(("fail", BackendError(message, transient=transient, status=status)))

    def finish_after(self, seconds: float, text: str = "") -> None:
        """Finish once the (manual) clock has moved ``seconds`` past now."""
        self._actions.put(("finish_at", (self._clock.now() + seconds, text)))

    def wait_cancelled(self, timeout: float = 5.0) -> bool:
        """Block until the call's cancel token trips; True if it did."""
        return self.token.wait(timeout)

    def wait_ended(self, timeout: float = 5.0) -> bool:
        """Block until the call has returned or raised in the backend."""
        return self.ended.wait(timeout)

    def run(self) -> BackendResult:
        """Carry out the test's instructions on the slot's worker thread."""
        try:
            self.result = self._run()
            return self.result
        finally:
            self.ended.set()

    def _run(self) -> BackendResult:
        while True:
            kind, value = self._actions.get()
            if self.token.cancelled:
                raise CallCancelledError
            if kind == "chunk":
                self.emitted.append(value)
                self._on_chunk(value)
            elif kind == "finish":
                return BackendResult(text="".join(self.emitted), metrics=value)
            elif kind == "fail":
                raise value
            elif kind == "finish_at":
                deadline, text = value
                self._wait_for_clock(deadline)
                if text:
                    self.emitted.append(text)
                    self._on_chunk(text)
                return BackendResult(text="".join(self.emitted))

    def _wait_for_clock(self, deadline: float) -> None:
        woke = threading.Condition()

        def wake() -> None:
            _notify(woke)

        self._clock.subscribe(wake)
        self.token.on_cancel(wake)
        try:
            with woke:
                while self._clock.now() < deadline:
                    if self.token.cancelled:
                        raise CallCancelledError
                    self._clock.wait(woke, deadline)
        finally:
            self._clock.unsubscribe(wake)


def _notify(condition: threading.Condition) -> None:
    with condition:
        condition.notify_all()


class FakeBackend:
    """A Backend whose calls wait for the test's instructions (or an automatic script)."""

    name = "fake"

    def __init__(self, clock: Clock, script: Callable[[FakeCall], None] | None = None) -> None:
        self._clock = clock
        self._script = script
        self._calls: queue.SimpleQueue[FakeCall] = queue.SimpleQueue()
        self.all_calls: list[FakeCall] = []
        self.loaded: dict[str, LoadedModel] = {}

    def next_call(self, timeout: float = 5.0) -> FakeCall:
        """The next call a slot started; waits up to ``timeout`` seconds for one."""
        try:
            return self._calls.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no backend call started within {timeout}s") from None

    def no_call_within(self, timeout: float = 0.2) -> bool:
        """True if no new call starts within ``timeout`` seconds."""
        try:
            call = self._calls.get(timeout=timeout)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected call for {call.request.model}")

    def complete(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken
    ) -> BackendResult:
        """Start a FakeCall and follow its instructions."""
        call = FakeCall(request, on_chunk, cancel, self._clock)
        self.all_calls.append(call)
        self.loaded[request.model] = LoadedModel(name=request.model)
        if self._script is not None:
            self._script(call)
        else:
            self._calls.put(call)
        return call.run()

    def embed(
        self, model: str, inputs: tuple[str, ...], options: Mapping[str, Any], cancel: CancelToken
    ) -> EmbedResult:
        """One fixed-size vector per input."""
        return EmbedResult(
            model=model, embeddings=tuple((float(len(text)), 1.0) for text in inputs)
        )

    def loaded_models(self) -> tuple[LoadedModel, ...]:
        """Models that calls have used."""
        return tuple(self.loaded.values())

    def load(self, model: str, keep_alive: str | float | None = None) -> None:
        """Mark ``model`` loaded."""
        self.loaded[model] = LoadedModel(name=model)

    def unload(self, model: str) -> None:
        """Mark ``model`` unloaded."""
        self.loaded.pop(model, None)

    def close(self) -> None:
        """Nothing to release."""


class FakeGpu:
    """A GPU actor factory for ``GpuLane.start(gpu=...)``: real GpuSlots on a FakeBackend.

    ``script``, if given, is called with each new call on the worker thread and
    decides its end at once (for load tests); otherwise the test takes each call
    with :meth:`next_call` and drives it.
    """

    def __init__(
        self, clock: Clock | None = None, script: Callable[[FakeCall], None] | None = None
    ) -> None:
        self.clock = clock or ManualClock()
        self.backend = FakeBackend(self.clock, script)
        self.slots: list[pykka.ActorRef[Any]] = []

    def __call__(self, wiring: SlotWiring) -> pykka.ActorRef[Any]:
        ref = backend_slot_factory(self.backend)(wiring)
        self.slots.append(ref)
        return ref

    def next_call(self, timeout: float = 5.0) -> FakeCall:
        """The next call a slot started."""
        return self.backend.next_call(timeout)

    def no_call_within(self, timeout: float = 0.2) -> bool:
        """True if no call starts within ``timeout`` seconds."""
        return self.backend.no_call_within(timeout)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``condition`` every few milliseconds until it holds; AssertionError after
    ``timeout`` seconds. For state that other threads change (actors' mailboxes), which no
    manual clock can hurry: a message round trip takes real time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what or f"condition not reached in {timeout:g}s"
        time.sleep(0.002)


def settle(lane: GpuLane, timeout: float = 5.0) -> None:
    """Wait until no recall is in flight, so every busy slot's next job is the one the
    queue's order picks from what was submitted so far.

    A busy slot is handed its next job ahead of time (prefetch); a job submitted later
    that should run first makes the arbiter recall it, one round trip to the slot. A
    test that submits jobs and then ends the running call at once should settle first.
    """
    arbiter = lane.ref_for("arbiter")
    wait_until(
        lambda: not arbiter.ask(QueueSnapshot())["recalling"],
        timeout,
        f"a recall was still in flight after {timeout:g}s",
    )


@pytest.fixture
def manual_clock() -> ManualClock:
    """A clock that moves only when the test calls ``advance``."""
    return ManualClock()


@pytest.fixture
def fake_gpu(manual_clock: ManualClock) -> FakeGpu:
    """A FakeGpu on the manual clock."""
    return FakeGpu(manual_clock)


@pytest.fixture
def lane(tmp_path: Path, fake_gpu: FakeGpu) -> Iterator[GpuLane]:
    """A GpuLane on a fresh SQLite file, the fake GPU and the manual clock; stopped after."""
    config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")))
    started = GpuLane.start(config, gpu=fake_gpu, clock=fake_gpu.clock)
    try:
        yield started
    finally:
        started.stop()
