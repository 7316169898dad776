"""The mailbox and the ask future every gpulane actor uses in place of pykka's defaults."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any

import pykka
import pytest

from actors.runtime import BatchingInbox, LatchFuture, Mailbox, SupervisedActor, Wanted
from actors.runtime._pykka import Envelope
from actors.runtime._stable_refs import PendingAsk, StableAsk

WAIT_S = 10.0


def later(seconds: float, action: Any) -> threading.Thread:
    """Run ``action`` on another thread after ``seconds``.

    Real time is the point here (a listed exception to the suite's no-sleep rule): these
    are the threading primitives' own tests, of a waiter that blocks before the value comes.
    """

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- LatchFuture ------------------------------------------------------------------------


def test_a_future_returns_the_value_it_was_set_to_every_time_it_is_read() -> None:
    future: LatchFuture[int] = LatchFuture()
    future.set(7)
    assert future.get() == 7
    assert future.get(timeout=0) == 7


def test_a_future_waits_for_a_value_set_on_another_thread() -> None:
    future: LatchFuture[str] = LatchFuture()
    later(0.05, lambda: future.set("answer"))
    assert future.get(timeout=WAIT_S) == "answer"


def test_every_waiter_on_a_future_wakes_when_it_is_set() -> None:
    future: LatchFuture[int] = LatchFuture()
    seen: list[int] = []
    waiters = [
        threading.Thread(target=lambda: seen.append(future.get(timeout=WAIT_S))) for _ in range(5)
    ]
    for waiter in waiters:
        waiter.start()
    future.set(3)
    for waiter in waiters:
        waiter.join(WAIT_S)
    assert seen == [3] * 5


def test_a_future_not_set_in_time_raises_pykkas_timeout() -> None:
    future: LatchFuture[int] = LatchFuture()
    began = time.monotonic()
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0.05)
    assert time.monotonic() - began >= 0.04
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0)


def test_a_future_raises_the_error_it_was_set_to_with_its_traceback() -> None:
    future: LatchFuture[int] = LatchFuture()
    try:
        raise ValueError("bad field")
    except ValueError:
        future.set_exception()
    with pytest.raises(ValueError, match="bad field") as raised:
        future.get()
    assert raised.traceback[-1].name == (
        "test_a_future_raises_the_error_it_was_set_to_with_its_traceback"
    )


def test_only_the_first_answer_to_a_future_counts() -> None:
    future: LatchFuture[int] = LatchFuture()
    future.set(1)
    with pytest.raises(queue.Full):
        future.set(2)
    with pytest.raises(queue.Full):
        future.set_exception((RuntimeError, RuntimeError("late"), None))
    assert future.get() == 1


def test_racing_setters_leave_exactly_one_answer() -> None:
    for _ in range(200):
        future: LatchFuture[int] = LatchFuture()
        wins: list[int] = []

        def answer(value: int, future: LatchFuture[int] = future, wins: list[int] = wins) -> None:
            try:
                future.set(value)
            except queue.Full:
                return
            wins.append(value)

        setters = [threading.Thread(target=answer, args=(n,)) for n in range(4)]
        for setter in setters:
            setter.start()
        for setter in setters:
            setter.join(WAIT_S)
        assert len(wins) == 1
        assert future.get(timeout=0) == wins[0]


def test_pykkas_map_filter_and_join_work_on_latch_futures() -> None:
    numbers: LatchFuture[list[int]] = LatchFuture()
    doubled = numbers.map(lambda values: [2 * v for v in values])
    evens = numbers.filter(lambda v: v % 2 == 0)
    other: LatchFuture[int] = LatchFuture()
    both = numbers.join(other)
    later(0.02, lambda: numbers.set([1, 2, 3, 4]))
    later(0.02, lambda: other.set(5))
    assert doubled.get(timeout=WAIT_S) == [2, 4, 6, 8]
    assert evens.get(timeout=WAIT_S) == [2, 4]
    assert both.get(timeout=WAIT_S) == [[1, 2, 3, 4], 5]


def test_a_future_with_a_get_hook_refuses_a_value() -> None:
    future: LatchFuture[int] = LatchFuture()
    future.set_get_hook(lambda timeout: 9)
    with pytest.raises(queue.Full):
        future.set(1)
    assert future.get() == 9


def test_a_future_can_be_awaited_like_pykkas() -> None:
    future: LatchFuture[int] = LatchFuture()
    future.set(11)

    async def read() -> int:
        return await future

    assert asyncio.run(read()) == 11


# --- Mailbox ----------------------------------------------------------------------------


def test_a_mailbox_hands_out_items_in_the_order_they_were_put() -> None:
    box = Mailbox()
    for n in range(5):
        box.put(n)
    assert box.qsize() == 5
    assert [box.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert box.empty()
    with pytest.raises(queue.Empty):
        box.get_nowait()


def test_a_reader_waiting_on_an_empty_mailbox_wakes_when_an_item_arrives() -> None:
    box = Mailbox()
    later(0.05, lambda: box.put("hello"))
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(box.get()), daemon=True)
    reader.start()
    reader.join(WAIT_S)
    assert got == ["hello"]


def test_many_senders_lose_nothing_and_keep_each_senders_order() -> None:
    box = Mailbox()
    senders, per_sender = 8, 5000
    received: list[tuple[int, int]] = []

    def read() -> None:
        for _ in range(senders * per_sender):
            received.append(box.get())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    threads = [
        threading.Thread(target=lambda s=s: [box.put((s, n)) for n in range(per_sender)])
        for s in range(senders)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    reader.join(WAIT_S)
    assert len(received) == senders * per_sender
    for sender in range(senders):
        assert [n for s, n in received if s == sender] == list(range(per_sender))


class _Echo(SupervisedActor):
    def on_receive(self, message: Any) -> Any:
        if message == "fail":
            raise LookupError("asked to fail")
        return message


def test_a_supervised_actor_answers_asks_through_its_mailbox_and_latch_future() -> None:
    ref = _Echo.start()
    try:
        assert isinstance(ref.actor_inbox, Mailbox)
        future = ref.ask("ping", block=False)
        assert isinstance(future, LatchFuture)
        assert future.get(timeout=WAIT_S) == "ping"
        assert [ref.ask(n, timeout=WAIT_S) for n in range(100)] == list(range(100))
        with pytest.raises(LookupError, match="asked to fail"):
            ref.ask("fail", timeout=WAIT_S)
        assert ref.is_alive()
    finally:
        ref.stop()


# --- the batching inbox -------------------------------------------------------------


def _envelope(message: object, reply_to: pykka.Future[Any] | None = None) -> Envelope[Any]:
    return Envelope(message, reply_to=reply_to)


def test_the_batching_inbox_takes_the_qualifying_run_at_its_head_up_to_a_limit() -> None:
    inbox = BatchingInbox()
    assert inbox.take_while(lambda message, asked: True, 10) == []
    for name in "abcd":
        inbox.put(_envelope(name))
    assert inbox.take_while(lambda message, asked: message == "b", 10) == []
    taken = inbox.take_while(lambda message, asked: message != "c", 10)
    assert [d.message for d in taken] == ["a", "b"]
    assert [d.message for d in inbox.take_while(lambda message, asked: True, 1)] == ["c"]
    assert inbox.get().message == "d"
    assert inbox.empty()


def test_the_batching_inbox_tells_whether_the_run_at_its_head_passes_a_test_without_taking_it() -> (
    None
):
    inbox = BatchingInbox()
    for name in "abc":
        inbox.put(_envelope(name))
    in_run: Wanted = lambda message, asked: message != "c"  # noqa: E731
    assert inbox.run_all(in_run, lambda message, asked: message in "ab")
    assert not inbox.run_all(in_run, lambda message, asked: message == "a")
    assert inbox.qsize() == 3


def test_a_delivery_answers_a_pykka_ask_and_a_stable_ask_and_ignores_a_tell() -> None:
    inbox = BatchingInbox()
    asked: pykka.Future[Any] = LatchFuture()
    pending = PendingAsk(lambda _: None)
    inbox.put(_envelope("told"))
    inbox.put(_envelope("asked", reply_to=asked))
    inbox.put(_envelope(StableAsk("through a stable ref", pending)))
    told, plain, stable = inbox.take_while(lambda message, asked: True, 10)
    assert (told.message, told.asked) == ("told", False)
    assert (plain.message, plain.asked) == ("asked", True)
    assert (stable.message, stable.asked) == ("through a stable ref", True)
    told.answer("nobody hears this")
    plain.answer(ValueError("refused"))
    stable.answer(42)
    with pytest.raises(ValueError, match="refused"):
        asked.get(timeout=1)
    assert pending.future.get(timeout=1) == 42
