"""The JobStore prunes on its own timer, in batches that never hold a submit behind them.

docs/operations.md, "Pruning": every ``store.prune_interval_s`` (and once at start) the
store deletes terminal jobs older than ``store.prune_after_s``, ``store.prune_batch`` per
turn of its mailbox, each batch ending with an incremental vacuum (on SQLite; PostgreSQL's
autovacuum reclaims its space). The tests on ``engine`` run on both engines
(``store_engines``); the file's size and the 50,000 jobs are SQLite's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from job_store_helpers import GatedClock, make_spec
from store_engines import StoreEngine

from actors import Config, GpuLane
from actors.job_store import JobStore
from actors.runtime import ManualClock, Timers
from actors.testing import FakeGpu, quiesce
from protocol import Job, JobState, Limits, StoreSettings, ValidationError
from protocol.messages import CountJobs, InsertJob, PruneDue, StoreSnapshot, Transition

WAVE = 1000  # jobs per wave of the 50,000


def file_bytes(path: str) -> int:
    """The database file and its write-ahead log, as they take space on disk."""
    return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))


def through(store: pykka.ActorRef[Any], count: int, start: int = 0) -> list[Job]:
    """Insert ``count`` jobs and cancel each with a reason, asking without waiting so the
    store commits them in groups, as it does under load."""
    inserts = [store.ask(InsertJob(make_spec(start + n)), block=False) for n in range(count)]
    jobs: list[Job] = [future.get(timeout=30) for future in inserts]
    ends = [
        store.ask(Transition(job.id, JobState.CANCELLED, error="caller_gone " * 8), block=False)
        for job in jobs
    ]
    return [future.get(timeout=30) for future in ends]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timers(clock: ManualClock) -> Iterator[Timers]:
    started = Timers(clock).start()
    yield started
    started.stop()


def test_fifty_thousand_jobs_pass_through_and_the_file_and_its_rows_stay_bounded(
    tmp_path: Path, clock: ManualClock, timers: Timers
) -> None:
    path = str(tmp_path / "jobs.sqlite3")
    settings = StoreSettings(
        path=path, synchronous="NORMAL", prune_after_s=30, prune_interval_s=10, prune_batch=400
    )
    store = JobStore.start(settings, clock, timers=timers)
    try:
        rows: list[int] = []
        sizes: list[int] = []
        wals: list[int] = []
        for wave in range(50):
            through(store, WAVE, wave * WAVE)
            clock.advance(10)  # the prune timer fires: its batches run in the store's turns
            quiesce(timeout=30)
            rows.append(sum(store.ask(CountJobs()).values()))
            sizes.append(file_bytes(path))
            wals.append(os.path.getsize(f"{path}-wal"))
        snapshot = store.ask(StoreSnapshot())
    finally:
        store.stop()
    # Kept: the jobs that ended within prune_after_s (three waves), plus the one of the
    # wave that is just over the age and waits for the next timer.
    assert max(rows) <= 4 * WAVE
    assert rows[-1] == 3 * WAVE
    assert snapshot["pruned"] == 50 * WAVE - rows[-1]
    # The file stops growing once pruning keeps pace: the last ten waves' largest file is
    # no larger than the largest after the warm-up, and the database stays near 2.5 MB
    # (its 50,000 rows unpruned take about 34 MB); the WAL is reused in place at its
    # checkpoint size, about 4.5 MB.
    assert max(sizes[40:]) <= max(sizes[5:10]) * 1.1
    assert max(size - wal for size, wal in zip(sizes, wals, strict=True)) < 4 * 1024 * 1024
    assert max(wals) < 6 * 1024 * 1024


class RecordingStore(JobStore):
    """A JobStore that notes each prune turn it takes, in order with the commits."""

    def __init__(self, events: list[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._events = events

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, PruneDue):
            self._events.append("prune")
        return super().on_receive(message)


def test_a_prune_running_lets_a_submit_in_after_one_batch(tmp_path: Path) -> None:
    clock = GatedClock()
    events: list[str] = []

    def committed(job: Job) -> None:
        if job.spec.caller == "late":
            events.append("submit")

    settings = StoreSettings(path=str(tmp_path / "jobs.sqlite3"), prune_after_s=60, prune_batch=50)
    store = RecordingStore.start(events, settings, clock, committed)
    try:
        through(store, 1000)
        clock.advance(120)
        clock.hold()
        store.tell(PruneDue())  # a prune of 20 batches; its first holds the clock
        assert clock.entered.wait(5)
        late = store.ask(InsertJob(make_spec(caller="late")), block=False)
        clock.release()
        assert late.get(timeout=30).state is JobState.QUEUED
        quiesce(timeout=30)
        counts = store.ask(CountJobs())
    finally:
        store.stop()
    assert events[:3] == ["prune", "submit", "prune"]  # one batch, then the submit
    assert events.count("prune") == 21  # 20 full batches, then one that finds none left
    assert counts["cancelled"] == 0 and counts["queued"] == 1


def test_the_store_prunes_at_start_and_then_every_interval(
    engine: StoreEngine, clock: ManualClock, timers: Timers
) -> None:
    settings = engine.settings(prune_after_s=100, prune_interval_s=50)
    first = JobStore.start(settings, clock)
    try:
        through(first, 3)
    finally:
        first.stop()
    clock.advance(150)
    store = JobStore.start(settings, clock, timers=timers)
    try:
        quiesce()
        assert store.ask(StoreSnapshot())["pruned"] == 3  # at start
        through(store, 2, start=3)
        clock.advance(99)  # the jobs are 99 s old at the timer's next prune: kept
        quiesce()
        assert store.ask(CountJobs())["cancelled"] == 2
        clock.advance(2)  # 101 s old, but no timer is due: kept until it is
        quiesce()
        assert store.ask(CountJobs())["cancelled"] == 2
        clock.advance(48)
        quiesce()
        assert store.ask(CountJobs())["cancelled"] == 0
        assert store.ask(StoreSnapshot())["pruned"] == 5
    finally:
        store.stop()


def test_a_batch_gives_its_pages_back_to_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.sqlite3")
    clock = ManualClock()
    settings = StoreSettings(path=path, prune_after_s=1, prune_batch=10_000)
    store = JobStore.start(settings, clock)
    try:
        through(store, 3000)
        store.ask(StoreSnapshot())
        full = os.path.getsize(path) + os.path.getsize(f"{path}-wal")
        clock.advance(2)
        store.tell(PruneDue())
        quiesce()
    finally:
        store.stop()  # the last connection's close checkpoints the WAL into the file
    assert os.path.getsize(path) < full / 4


# --- GpuLane.prune -----------------------------------------------------------------------


def test_an_admin_prune_deletes_every_old_job_a_batch_per_ask_and_says_how_many(
    engine: StoreEngine,
) -> None:
    clock = ManualClock()
    store = engine.settings(prune_batch=7)
    lane = GpuLane.start(Config(store=store, limits=Limits.off()), gpu=FakeGpu(clock), clock=clock)
    try:
        lane.pause()
        tickets = [lane.submit(make_spec(n), detach=True) for n in range(20)]
        for ticket in tickets[:16]:
            lane.cancel(ticket.job_id)
        clock.advance(600)
        lane.cancel(tickets[16].job_id)  # ended just now: younger than any age below
        assert lane.prune(older_than_s=300) == 16  # three batches of 7, 7 and 2
        assert lane.prune(older_than_s=300) == 0
        assert lane.prune() == 0  # store.prune_after_s, 7 days: nothing that old
        clock.advance(1)
        assert lane.prune(older_than_s=0) == 1
        assert {job.state for job in lane.list(limit=100)} == {JobState.QUEUED}
        with pytest.raises(ValidationError, match="older_than_s"):
            lane.prune(older_than_s=-1)
    finally:
        lane.stop()


@pytest.mark.parametrize(
    ("key", "value"),
    [("prune_interval_s", 0), ("prune_interval_s", "1h"), ("prune_batch", 0), ("prune_batch", 2.5)],
)
def test_a_bad_prune_setting_is_refused_by_name(key: str, value: object) -> None:
    with pytest.raises(ValidationError, match=f"store.{key}"):
        StoreSettings(**{key: value})  # type: ignore[arg-type]


def test_a_reload_changes_the_pruning_of_a_running_store(tmp_path: Path) -> None:
    clock = ManualClock()
    store = StoreSettings(path=str(tmp_path / "jobs.sqlite3"), prune_after_s=100)
    config = Config(store=store, limits=Limits.off())
    with GpuLane.start(config, gpu=FakeGpu(clock), clock=clock) as lane:
        lane.pause()
        for n in range(3):
            lane.cancel(lane.submit(make_spec(n), detach=True).job_id)
        clock.advance(15)
        quiesce()
        assert lane.status()["jobs"]["cancelled"] == 3, "100 s and an hour: nothing due yet"
        shorter = dataclasses.replace(store, prune_after_s=10, prune_interval_s=5, prune_batch=50)
        changed = lane.reload_config(config.replace(store=shorter))
        assert set(changed) == {f"store.{key}" for key in ("prune_after_s", "prune_interval_s")} | {
            "store.prune_batch"
        }
        quiesce()  # the store has taken the new settings (a reload tells the actors)
        clock.advance(5)  # the new interval, counted from the reload
        quiesce()
        assert lane.status()["jobs"]["cancelled"] == 0
        with pytest.raises(ValidationError, match=r"store\.path"):
            lane.reload_config(config.replace(store=dataclasses.replace(shorter, path="x.sqlite3")))
