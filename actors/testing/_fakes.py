"""The fakes at the GPU-actor seam: a backend whose calls the test drives, and the slot factory.

gpulane's real GpuSlot runs on a :class:`FakeBackend`, so dispatch, preemption, retry and
stale-message handling are the real ones; only the model server is fake. A call waiting
for the test's next instruction counts as waiting on the outside world, so
``quiesce`` returns while it waits.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pykka

from actors.backends.base import CallCancelledError, CancelToken, ChunkSink
from actors.runtime import Clock, ManualClock, outside_wait, quiesce
from actors.tree import SlotWiring, backend_slots
from protocol import (
    REQUEST_FEATURES,
    BackendError,
    BackendRequest,
    BackendResult,
    Chunk,
    EmbedResult,
    JobMetrics,
    LoadedModel,
    ToolCall,
)

__all__ = ["FakeBackend", "FakeCall", "FakeGpu", "InjectedFault"]


@dataclasses.dataclass(frozen=True, slots=True)
class InjectedFault:
    """A message no gpulane actor handles: told to one (``lane.ref_for("arbiter").tell(...)``),
    its handler raises, which is a crash its supervisor must deal with (fault injection)."""


_Action = tuple[str, Any]


class FakeCall:
    """One backend call in flight; the test decides what it emits and how it ends.

    It emits text (:meth:`emit`), thinking (:meth:`think`) and tool calls
    (:meth:`call_tool`) as a model server streams them; its answer gathers all three.
    """

    def __init__(
        self, request: BackendRequest, on_chunk: ChunkSink, cancel: CancelToken, clock: Clock
    ) -> None:
        self.request = request
        self.token = cancel
        self.emitted: list[Chunk] = []  # "".join(emitted) is the text so far
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
        """Stream these pieces to the caller: text, or ``protocol.Chunk`` values."""
        for chunk in chunks:
            self._actions.put(("chunk", chunk if isinstance(chunk, Chunk) else Chunk(chunk)))
        return self

    def think(self, *pieces: str) -> FakeCall:
        """Stream these pieces of thinking to the caller."""
        return self.emit(*(Chunk(thinking=piece) for piece in pieces))

    def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None = None, *, id: str | None = None
    ) -> FakeCall:
        """Stream a whole tool call, as Ollama does (one line per call)."""
        return self.emit(Chunk(tool_calls=(ToolCall(name, arguments or {}, id=id),)))

    def finish(
        self, text: str = "", metrics: JobMetrics | None = None, *, done_reason: str = "stop"
    ) -> None:
        """Stream ``text`` (if any) and end the call successfully; ``metrics`` defaults to a
        token per piece streamed."""
        if text:
            self.emit(text)
        count = len(self.emitted) + self._actions.qsize()
        self._actions.put(("finish", (metrics or JobMetrics(eval_count=count), done_reason)))

    def fail(
        self,
        message: str = "backend failed",
        *,
        transient: bool = True,
        status: int | None = None,
        outage: bool = False,
    ) -> None:
        """End the call with a BackendError (``outage``: the backend's, such as a refused
        connection, not the request's)."""
        error = BackendError(message, transient=transient, status=status, outage=outage)
        self._actions.put(("fail", error))

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
            with outside_wait(self._has_instruction):  # the test's next move
                kind, value = self._actions.get()
            if self.token.cancelled:
                raise CallCancelledError
            if kind == "chunk":
                self.emitted.append(value)
                self._on_chunk(value)
            elif kind == "finish":
                metrics, done_reason = value
                return self._answer(metrics, done_reason)
            elif kind == "fail":
                raise value
            elif kind == "finish_at":
                deadline, text = value
                self._wait_for_clock(deadline)
                if text:
                    self.emitted.append(Chunk(text))
                    self._on_chunk(Chunk(text))
                return self._answer(JobMetrics(), "stop")

    def _answer(self, metrics: JobMetrics, done_reason: str) -> BackendResult:
        """What the call emitted, as the backend's answer."""
        return BackendResult(
            text="".join(self.emitted),
            metrics=metrics,
            done_reason=done_reason,
            thinking="".join(chunk.thinking for chunk in self.emitted),
            tool_calls=tuple(call for chunk in self.emitted for call in chunk.tool_calls),
        )

    def _has_instruction(self) -> bool:
        return not self._actions.empty()

    def _wait_for_clock(self, deadline: float) -> None:
        woke = threading.Condition()

        def wake() -> None:
            _notify(woke)

        self._clock.subscribe(wake)
        self.token.on_cancel(wake)
        try:
            with woke, outside_wait(lambda: self._clock.now() >= deadline or self.token.cancelled):
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
    """A Backend whose calls wait for the test's instructions (or an automatic script).

    It carries every request feature, as Ollama does.
    """

    name = "fake"
    carries = REQUEST_FEATURES

    def __init__(self, clock: Clock, script: Callable[[FakeCall], None] | None = None) -> None:
        self._clock = clock
        self._script = script
        self._calls: queue.SimpleQueue[FakeCall] = queue.SimpleQueue()
        self.all_calls: list[FakeCall] = []
        self.loaded: dict[str, LoadedModel] = {}
        # What list_models answers; None (a server that keeps no list, as a fake that runs
        # any model is) makes it fail as the request's error, so nothing is filtered by it.
        self.catalog: list[str] | None = None

    def next_call(self, timeout: float = 5.0) -> FakeCall:
        """The next call a slot started; waits up to ``timeout`` seconds for one."""
        try:
            return self._calls.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no backend call started within {timeout}s") from None

    def no_new_call(self, timeout: float = 5.0) -> bool:
        """True if no new call has started once the lane is quiescent (AssertionError if one
        has); ``timeout`` bounds the wait for quiescence."""
        quiesce(timeout)
        try:
            call = self._calls.get_nowait()
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
        self,
        model: str,
        inputs: tuple[str, ...],
        options: Mapping[str, Any],
        cancel: CancelToken,
        *,
        keep_alive: str | float | None = None,
    ) -> EmbedResult:
        """One fixed-size vector per input."""
        return EmbedResult(
            model=model, embeddings=tuple((float(len(text)), 1.0) for text in inputs)
        )

    def loaded_models(self) -> tuple[LoadedModel, ...]:
        """Models that calls have used."""
        return tuple(self.loaded.values())

    def list_models(self) -> tuple[str, ...]:
        """The models in :attr:`catalog`; a BackendError (not an outage) while it is None."""
        if self.catalog is None:
            raise BackendError("this fake backend keeps no catalog", transient=False)
        return tuple(self.catalog)

    def load(
        self, model: str, keep_alive: str | float | None = None, *, embedding: bool = False
    ) -> None:
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
        ref = backend_slots(self.backend)(wiring)
        self.slots.append(ref)
        return ref

    def next_call(self, timeout: float = 5.0) -> FakeCall:
        """The next call a slot started."""
        return self.backend.next_call(timeout)

    def no_new_call(self, timeout: float = 5.0) -> bool:
        """True if no new call has started once the lane is quiescent."""
        return self.backend.no_new_call(timeout)
