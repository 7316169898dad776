"""A Sink's waiters block on a latch the first waiter makes (a held lock, not an Event, so a
deep queue's sinks stay small); the job's end or the system's stop opens it once for all."""

from __future__ import annotations

import threading

import pytest

from actors.sinks import Sink
from actors.testing import wait_until
from protocol import Job, JobSpec, JobState, SystemStoppedError

SPEC = JobSpec.generate(model="m", prompt="p")


def ended(job_id: str) -> Job:
    return Job(id=job_id, seq=1, spec=SPEC, state=JobState.SUCCEEDED, created_at=0, updated_at=0)


def waiting(sink: Sink, count: int) -> tuple[list[threading.Thread], list[object]]:
    """``count`` threads blocked in ``sink.wait``; what each got lands in the list."""
    got: list[object] = []

    def wait() -> None:
        try:
            got.append(sink.wait(None))
        except SystemStoppedError as error:
            got.append(error)

    threads = [threading.Thread(target=wait) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, got


def test_a_wait_with_no_time_left_returns_none_while_the_job_runs() -> None:
    sink = Sink("j")
    assert sink.wait(0) is None
    assert sink.wait(-1) is None  # a deadline already past


def test_every_waiter_wakes_when_the_job_ends() -> None:
    sink = Sink("j")
    threads, got = waiting(sink, 3)
    wait_until(lambda: sink._done is not None)  # a waiter made the latch: it blocks on it
    job = ended("j")
    sink.end(job)
    for thread in threads:
        thread.join(5)
    assert got == [job, job, job]
    assert sink.wait(None) is job  # a wait after the end returns at once


def test_a_stop_wakes_the_waiters_with_its_error_and_a_later_end_is_harmless() -> None:
    sink = Sink("j")
    threads, got = waiting(sink, 2)
    wait_until(lambda: sink._done is not None)
    error = SystemStoppedError("stopped")
    sink.fail(error)
    for thread in threads:
        thread.join(5)
    assert got == [error, error]
    sink.end(ended("j"))  # the latch opened once already: nothing to release again
    assert sink.wait(None) == ended("j")


def test_a_sink_nobody_waits_on_makes_no_latch() -> None:
    sink = Sink("j")
    sink.chunk("a")
    sink.end(ended("j"))
    assert sink._done is None
    with pytest.raises(AttributeError):
        sink.anything = 1  # type: ignore[attr-defined]  (slots: no per-sink dict)
