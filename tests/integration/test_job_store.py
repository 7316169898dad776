"""The JobStore actor: lifecycle, queries, recovery, group commit and start-up errors.

The tests on ``settings`` or ``store`` run on both engines (``store_engines``); the ones
about SQLite's file (WAL, its lock, a damaged or newer file) on SQLite alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from job_store_helpers import GatedClock, make_spec, path_to
from store_engines import StoreEngine

from actors.job_store import JobStore
from actors.runtime import ManualClock
from actors.stores import SCHEMA_VERSION
from protocol import (
    LEGAL_TRANSITIONS,
    IllegalTransitionError,
    Job,
    JobMetrics,
    JobNotFoundError,
    JobState,
    Lane,
    StoreSettings,
    ValidationError,
)
from protocol.messages import (
    CountJobs,
    GetJob,
    GetJobBySeq,
    InsertJob,
    JobStats,
    LaneStats,
    ListJobs,
    LoadQueuedJobs,
    PruneJobs,
    StoreSnapshot,
    Transition,
)

ALL_PAIRS = [(s, t) for s in JobState for t in JobState]
LEGAL_PAIRS = [(s, t) for s, t in ALL_PAIRS if t in LEGAL_TRANSITIONS[s]]
ILLEGAL_PAIRS = [(s, t) for s, t in ALL_PAIRS if t not in LEGAL_TRANSITIONS[s]]


@pytest.fixture
def clock() -> GatedClock:
    return GatedClock()


@pytest.fixture
def settings(engine: StoreEngine) -> StoreSettings:
    return engine.settings()


@pytest.fixture
def store(settings: StoreSettings, clock: GatedClock) -> Iterator[pykka.ActorRef[JobStore]]:
    ref = JobStore.start(settings, clock)
    yield ref
    ref.stop()


def insert(store: pykka.ActorRef[JobStore], n: int = 0, **fields: Any) -> Job:
    job = store.ask(InsertJob(make_spec(n, **fields)))
    assert isinstance(job, Job)
    return job


def move(store: pykka.ActorRef[JobStore], job: Job, target: JobState, **fields: Any) -> Job:
    moved = store.ask(Transition(job.id, target, **fields))
    assert isinstance(moved, Job)
    return moved


def job_in(store: pykka.ActorRef[JobStore], state: JobState, n: int = 0) -> Job:
    """A fresh job driven along legal moves to ``state``."""
    job = insert(store, n)
    for step in path_to(state):
        job = move(store, job, step)
    assert job.state is state
    return job


# --- insert ---------------------------------------------------------------------------


def test_an_inserted_job_is_queued_with_a_ulid_and_the_next_sequence_number(
    store: pykka.ActorRef[JobStore], clock: GatedClock
) -> None:
    first = insert(store, 1)
    second = insert(store, 2)
    assert first.state is JobState.QUEUED
    assert len(first.id) == 26 and first.id != second.id
    assert second.seq == first.seq + 1
    assert first.created_at == first.updated_at == clock.now()
    assert (first.attempts, first.preemptions, first.partial_output) == (0, 0, "")
    assert store.ask(GetJob(first.id)) == first


def test_the_spec_comes_back_exactly_as_it_went_in(store: pykka.ActorRef[JobStore]) -> None:
    spec = make_spec(7, lane=Lane.INTERNAL, caller="bot").replace(
        format={"type": "object"}, max_tokens=64, chain_id="c1", stream=True
    )
    job = store.ask(InsertJob(spec))
    assert store.ask(GetJob(job.id)).spec == spec


def test_sequence_numbers_keep_growing_after_the_newest_job_is_pruned(
    store: pykka.ActorRef[JobStore], clock: GatedClock
) -> None:
    job = job_in(store, JobState.SUCCEEDED)
    clock.advance(100)
    assert store.ask(PruneJobs(older_than_s=10)) == 1
    assert insert(store).seq == job.seq + 1


def test_a_retry_must_name_an_existing_job(store: pykka.ActorRef[JobStore]) -> None:
    original = job_in(store, JobState.FAILED)
    retry = store.ask(InsertJob(make_spec(), retry_of=original.id))
    assert retry.state is JobState.QUEUED
    with pytest.raises(ValidationError, match="retry_of"):
        store.ask(InsertJob(make_spec(), retry_of="01NOTAJOB0000000000000000"))


# --- transitions ----------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), LEGAL_PAIRS, ids=lambda s: s.value)
def test_every_legal_transition_is_applied(
    store: pykka.ActorRef[JobStore], source: JobState, target: JobState
) -> None:
    job = job_in(store, source)
    moved = move(store, job, target)
    assert moved.state is target
    assert store.ask(GetJob(job.id)) == moved


@pytest.mark.parametrize(("source", "target"), ILLEGAL_PAIRS, ids=lambda s: s.value)
def test_an_illegal_transition_is_refused_and_changes_nothing(
    store: pykka.ActorRef[JobStore], clock: GatedClock, source: JobState, target: JobState
) -> None:
    job = job_in(store, source)
    clock.advance(5)
    with pytest.raises(IllegalTransitionError) as caught:
        store.ask(Transition(job.id, target, charge_attempt=True, error="x"))
    assert (caught.value.source, caught.value.target) == (source.value, target.value)
    assert job.id in str(caught.value)
    assert store.ask(GetJob(job.id)) == job


def test_a_move_is_refused_when_the_job_is_not_in_an_expected_state(
    store: pykka.ActorRef[JobStore],
) -> None:
    job = job_in(store, JobState.RUNNING)
    stale = Transition(job.id, JobState.CANCELLED, expected=frozenset({JobState.QUEUED}))
    with pytest.raises(IllegalTransitionError):
        store.ask(stale)
    assert store.ask(GetJob(job.id)) == job
    fresh = Transition(job.id, JobState.CANCELLED, expected=frozenset({JobState.RUNNING}))
    assert store.ask(fresh).state is JobState.CANCELLED


def test_moving_an_unknown_job_raises_job_not_found(store: pykka.ActorRef[JobStore]) -> None:
    with pytest.raises(JobNotFoundError, match="nope"):
        store.ask(Transition("nope", JobState.LOADING))


def test_start_and_finish_times_follow_the_clock(
    store: pykka.ActorRef[JobStore], clock: GatedClock
) -> None:
    job = insert(store)
    clock.advance(2)
    loading = move(store, job, JobState.LOADING)
    assert loading.started_at == job.created_at + 2 and loading.finished_at is None
    clock.advance(3)
    running = move(store, loading, JobState.RUNNING)
    assert running.started_at == loading.started_at, "loading → running keeps the start"
    clock.advance(4)
    done = move(store, running, JobState.SUCCEEDED, result="42")
    assert done.finished_at == job.created_at + 9 and done.updated_at == done.finished_at
    assert (done.wait_seconds, done.run_seconds, done.result) == (2, 7, "42")


def test_a_preempted_job_keeps_its_text_and_is_not_charged_an_attempt(
    store: pykka.ActorRef[JobStore], clock: GatedClock
) -> None:
    job = job_in(store, JobState.RUNNING)
    back = move(store, job, JobState.QUEUED, count_preemption=True, partial_output="The answer is")
    assert (back.attempts, back.preemptions, back.partial_output) == (0, 1, "The answer is")
    clock.advance(10)
    again = move(store, back, JobState.LOADING)
    assert again.started_at == job.started_at + 10, "a new start is recorded"
    assert again.partial_output == "The answer is", "text is kept until replaced"


def test_a_retry_charges_an_attempt_and_sets_then_clears_not_before(
    store: pykka.ActorRef[JobStore], clock: GatedClock
) -> None:
    job = job_in(store, JobState.RUNNING)
    later = clock.now() + 30
    back = move(store, job, JobState.QUEUED, charge_attempt=True, error="reset", not_before=later)
    assert (back.attempts, back.error, back.not_before) == (1, "reset", later)
    assert move(store, back, JobState.LOADING).not_before is None


def test_metrics_and_errors_are_stored(store: pykka.ActorRef[JobStore]) -> None:
    metrics = JobMetrics(load_duration_ns=5, eval_count=12, eval_duration_ns=999)
    job = job_in(store, JobState.RUNNING)
    failed = move(store, job, JobState.FAILED, error="model not found", metrics=metrics)
    assert store.ask(GetJob(job.id)).metrics == metrics == failed.metrics
    assert store.ask(GetJob(job.id)).error == "model not found"


@pytest.mark.parametrize(
    ("target", "fields", "field"),
    [
        (JobState.LOADING, {"not_before": 1.0}, "not_before"),
        (JobState.CANCELLED, {"not_before": 1.0}, "not_before"),
        (JobState.FAILED, {"result": "text"}, "result"),
    ],
)
def test_a_transition_carrying_a_field_its_target_cannot_have_is_a_validation_error(
    store: pykka.ActorRef[JobStore], target: JobState, fields: dict[str, Any], field: str
) -> None:
    job = job_in(store, JobState.LOADING)
    with pytest.raises(ValidationError) as caught:
        store.ask(Transition(job.id, target, **fields))
    assert caught.value.field == field
    assert store.ask(GetJob(job.id)) == job


# --- reads ----------------------------------------------------------------------------


def test_get_by_sequence_number_and_unknown_keys(store: pykka.ActorRef[JobStore]) -> None:
    job = insert(store)
    assert store.ask(GetJobBySeq(job.seq)) == job
    with pytest.raises(JobNotFoundError):
        store.ask(GetJobBySeq(job.seq + 100))
    with pytest.raises(JobNotFoundError):
        store.ask(GetJob("01ZZZZZZZZZZZZZZZZZZZZZZZZ"))


def test_list_applies_every_filter_and_the_order_and_limit(
    store: pykka.ActorRef[JobStore],
) -> None:
    a = insert(store, 1, lane=Lane.INTERNAL, caller="bot", model="m1")
    b = insert(store, 2, lane=Lane.EXTERNAL, caller="alice", model="m1")
    c = insert(store, 3, lane=Lane.EXTERNAL, caller="alice", model="m2")
    d = move(store, insert(store, 4, caller="bob", model="m2"), JobState.CANCELLED)

    def ids(**query: Any) -> list[str]:
        return [j.id for j in store.ask(ListJobs(**query))]

    assert ids() == [d.id, c.id, b.id, a.id]
    assert ids(oldest_first=True, limit=2) == [a.id, b.id]
    assert ids(lane=Lane.INTERNAL) == [a.id]
    assert ids(caller="alice") == [c.id, b.id]
    assert ids(model="m2") == [d.id, c.id]
    assert ids(states=frozenset({JobState.CANCELLED})) == [d.id]
    assert ids(states=frozenset({JobState.QUEUED}), caller="alice", model="m1") == [b.id]
    assert ids(states=frozenset()) == []
    with pytest.raises(ValidationError, match="limit"):
        store.ask(ListJobs(limit=0))


def test_counts_name_every_state_and_are_read_only(store: pykka.ActorRef[JobStore]) -> None:
    job_in(store, JobState.RUNNING, 1)
    job_in(store, JobState.CANCELLED, 2)
    insert(store, 3)
    counts = store.ask(CountJobs())
    assert dict(counts) == {
        "queued": 1,
        "loading": 0,
        "running": 1,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 1,
    }
    with pytest.raises(TypeError):
        counts["queued"] = 5


def test_stats_average_wait_and_run_time_of_finished_jobs_per_lane(
    store: pykka.ActorRef[JobStore], clock: GatedClock
) -> None:
    for wait, run in ((2, 8), (4, 2)):
        job = insert(store, lane=Lane.INTERNAL)
        clock.advance(wait)
        job = move(store, move(store, job, JobState.LOADING), JobState.RUNNING)
        clock.advance(run)
        move(store, job, JobState.SUCCEEDED)
    move(store, insert(store, lane=Lane.INTERNAL), JobState.CANCELLED)  # never started
    job_in(store, JobState.RUNNING)  # external, not finished
    assert store.ask(JobStats()) == (
        LaneStats(lane=Lane.INTERNAL, finished=3, avg_wait_s=3.0, avg_run_s=5.0),
        LaneStats(lane=Lane.EXTERNAL, finished=0, avg_wait_s=None, avg_run_s=None),
    )


def test_load_queued_jobs_returns_every_queued_job_in_sequence_order(
    store: pykka.ActorRef[JobStore],
) -> None:
    a = insert(store, 1)
    b = job_in(store, JobState.RUNNING, 2)
    c = insert(store, 3)
    b = move(store, b, JobState.QUEUED, count_preemption=True)
    job_in(store, JobState.SUCCEEDED, 4)
    assert store.ask(LoadQueuedJobs()) == (a, b, c)


def test_a_message_the_store_does_not_know_is_refused(store: pykka.ActorRef[JobStore]) -> None:
    with pytest.raises(TypeError, match="JobStore cannot handle str"):
        store.ask("hello")


# --- pruning --------------------------------------------------------------------------


def test_pruning_deletes_only_terminal_jobs_that_finished_long_enough_ago(
    store: pykka.ActorRef[JobStore], clock: GatedClock
) -> None:
    old_done = job_in(store, JobState.SUCCEEDED, 1)
    old_queued = insert(store, 2)
    old_running = job_in(store, JobState.RUNNING, 3)
    clock.advance(50)
    new_failed = job_in(store, JobState.FAILED, 4)
    clock.advance(50)
    assert store.ask(PruneJobs(older_than_s=60)) == 1
    with pytest.raises(JobNotFoundError):
        store.ask(GetJob(old_done.id))
    kept = {j.id for j in store.ask(ListJobs())}
    assert kept == {old_queued.id, old_running.id, new_failed.id}
    assert store.ask(PruneJobs(older_than_s=60)) == 0
    with pytest.raises(ValidationError, match="older_than_s"):
        store.ask(PruneJobs(older_than_s=-1))


# --- recovery -------------------------------------------------------------------------


def test_recovery_requeues_loading_and_running_jobs_without_charging_and_keeps_order(
    settings: StoreSettings, clock: GatedClock
) -> None:
    store = JobStore.start(settings, clock)
    try:
        queued = insert(store, 1)
        loading = job_in(store, JobState.LOADING, 2)
        running = job_in(store, JobState.RUNNING, 3)
        running = move(store, running, JobState.QUEUED, charge_attempt=True, error="reset")
        running = move(store, move(store, running, JobState.LOADING), JobState.RUNNING)
        running = move(store, running, JobState.QUEUED, partial_output="Once upon")
        running = move(store, move(store, running, JobState.LOADING), JobState.RUNNING)
        done = job_in(store, JobState.SUCCEEDED, 4)
        cancelled = job_in(store, JobState.CANCELLED, 5)
    finally:
        store.stop()
    clock.advance(60)
    store = JobStore.start(settings, clock)
    try:
        snapshot = store.ask(StoreSnapshot())
        assert (snapshot["recovered_requeued"], snapshot["recovered_queued"]) == (2, 3)
        back = store.ask(LoadQueuedJobs())
        assert [j.id for j in back] == [queued.id, loading.id, running.id]
        by_id = {j.id: j for j in back}
        assert by_id[running.id].attempts == 1, "the crash charges nothing"
        assert by_id[running.id].partial_output == "Once upon"
        assert by_id[loading.id].attempts == 0
        assert by_id[queued.id] == queued
        assert store.ask(GetJob(done.id)) == done
        assert store.ask(GetJob(cancelled.id)) == cancelled
    finally:
        store.stop()


# --- durability and group commit ------------------------------------------------------


def test_the_store_runs_in_wal_mode_with_full_sync_by_default(
    store: pykka.ActorRef[JobStore], engine: StoreEngine
) -> None:
    snapshot = store.ask(StoreSnapshot())
    assert (snapshot["journal_mode"], snapshot["synchronous"]) == ("wal", engine.durable_level)
    assert snapshot["schema_version"] == SCHEMA_VERSION


def test_normal_sync_is_used_when_configured(tmp_path: Path) -> None:
    settings = StoreSettings(path=str(tmp_path / "n.sqlite3"), synchronous="normal")
    store = JobStore.start(settings, ManualClock())
    try:
        assert store.ask(StoreSnapshot())["synchronous"] == "NORMAL"
    finally:
        store.stop()


def test_writes_waiting_in_the_mailbox_are_committed_together(
    store: pykka.ActorRef[JobStore], clock: GatedClock
) -> None:
    before = store.ask(StoreSnapshot())
    clock.hold()
    first = store.ask(InsertJob(make_spec(0)), block=False)
    assert clock.entered.wait(5)
    rest = [store.ask(InsertJob(make_spec(n)), block=False) for n in range(1, 100)]
    clock.release()
    jobs = [f.get(timeout=10) for f in [first, *rest]]
    after = store.ask(StoreSnapshot())
    assert after["writes"] - before["writes"] == 100
    assert after["commits"] - before["commits"] == 1
    assert [j.seq for j in jobs] == sorted(j.seq for j in jobs)
    assert store.ask(CountJobs())["queued"] == 100


def test_a_batch_never_exceeds_max_batch(tmp_path: Path, clock: GatedClock) -> None:
    settings = StoreSettings(path=str(tmp_path / "b.sqlite3"), max_batch=10)
    store = JobStore.start(settings, clock)
    try:
        clock.hold()
        first = store.ask(InsertJob(make_spec()), block=False)
        assert clock.entered.wait(5)
        rest = [store.ask(InsertJob(make_spec(n)), block=False) for n in range(24)]
        clock.release()
        for future in [first, *rest]:
            future.get(timeout=10)
        snapshot = store.ask(StoreSnapshot())
        assert (snapshot["writes"], snapshot["commits"], snapshot["largest_batch"]) == (25, 3, 10)
    finally:
        store.stop()


def test_a_refused_write_in_a_batch_fails_only_its_own_caller(
    store: pykka.ActorRef[JobStore], clock: GatedClock
) -> None:
    done = job_in(store, JobState.SUCCEEDED)
    running = job_in(store, JobState.RUNNING, 1)
    commits = store.ask(StoreSnapshot())["commits"]
    clock.hold()
    first = store.ask(InsertJob(make_spec(2)), block=False)
    assert clock.entered.wait(5)
    illegal = store.ask(Transition(done.id, JobState.RUNNING), block=False)
    unknown = store.ask(Transition("missing", JobState.RUNNING), block=False)
    legal = store.ask(Transition(running.id, JobState.SUCCEEDED, result="ok"), block=False)
    last = store.ask(InsertJob(make_spec(3)), block=False)
    clock.release()
    with pytest.raises(IllegalTransitionError):
        illegal.get(timeout=10)
    with pytest.raises(JobNotFoundError):
        unknown.get(timeout=10)
    assert legal.get(timeout=10).state is JobState.SUCCEEDED
    inserted = [first.get(timeout=10), last.get(timeout=10)]
    assert store.ask(StoreSnapshot())["commits"] == commits + 1
    assert store.ask(GetJob(running.id)).result == "ok"
    assert store.ask(GetJob(done.id)) == done
    assert all(store.ask(GetJob(j.id)) == j for j in inserted)


def test_a_read_behind_writes_sees_them_and_is_not_overtaken(
    store: pykka.ActorRef[JobStore], clock: GatedClock
) -> None:
    clock.hold()
    first = store.ask(InsertJob(make_spec(1)), block=False)
    assert clock.entered.wait(5)
    second = store.ask(InsertJob(make_spec(2)), block=False)
    count = store.ask(CountJobs(), block=False)
    third = store.ask(InsertJob(make_spec(3)), block=False)
    clock.release()
    assert count.get(timeout=10)["queued"] == 2
    seqs = [f.get(timeout=10).seq for f in (first, second, third)]
    assert seqs == sorted(seqs)
    assert store.ask(StoreSnapshot())["commits"] == 2


def test_a_told_write_that_fails_crashes_the_store_after_committing_its_batch(
    settings: StoreSettings, clock: GatedClock
) -> None:
    store = JobStore.start(settings, clock)
    done = job_in(store, JobState.SUCCEEDED)
    clock.hold()
    held = store.ask(InsertJob(make_spec(1)), block=False)
    assert clock.entered.wait(5)
    store.tell(Transition(done.id, JobState.RUNNING))
    behind = store.ask(InsertJob(make_spec(2)), block=False)
    clock.release()
    held.get(timeout=10)
    survivor = behind.get(timeout=10)
    with pytest.raises(pykka.ActorDeadError):
        store.ask(CountJobs(), timeout=10)
    reopened = JobStore.start(settings, clock)  # the crashed store released its file
    try:
        assert reopened.ask(GetJob(survivor.id)) == survivor
        assert reopened.ask(GetJob(done.id)) == done
    finally:
        reopened.stop()


def test_a_slots_told_reports_join_the_batch_and_a_stale_one_is_dropped(
    settings: StoreSettings, clock: GatedClock
) -> None:
    store = JobStore.start(settings, clock)
    try:
        queued = store.ask(InsertJob(make_spec(1)))
        done = job_in(store, JobState.SUCCEEDED)
        commits_before = store.ask(StoreSnapshot())["commits"]
        clock.hold()
        held = store.ask(InsertJob(make_spec(2)), block=False)
        assert clock.entered.wait(5)
        active = frozenset({JobState.QUEUED})
        store.tell(Transition(queued.id, JobState.LOADING, expected=active, stale_ok=True))
        store.tell(Transition(done.id, JobState.RUNNING, stale_ok=True))  # stale: dropped
        behind = store.ask(InsertJob(make_spec(3)), block=False)
        clock.release()
        held.get(timeout=10)
        behind.get(timeout=10)
        snapshot = store.ask(StoreSnapshot())
        assert snapshot["commits"] - commits_before == 1, "all four writes in one commit"
        assert snapshot["stale_transitions"] == 1
        assert store.ask(GetJob(queued.id)).state is JobState.LOADING
        assert store.ask(GetJob(done.id)) == done
    finally:
        store.stop()


# --- volatile moves (loading, running) --------------------------------------------


def volatile_commits(store: pykka.ActorRef[JobStore]) -> tuple[int, int]:
    """(commits, volatile commits) so far."""
    snapshot = store.ask(StoreSnapshot())
    return snapshot["commits"], snapshot["volatile_commits"]


def test_bare_moves_into_loading_and_running_commit_without_an_fsync_and_others_with_one(
    store: pykka.ActorRef[JobStore], engine: StoreEngine
) -> None:
    before = volatile_commits(store)
    job = insert(store)
    assert volatile_commits(store) == (before[0] + 1, before[1]), "an insert is durable"
    job = move(store, job, JobState.LOADING)
    job = move(store, job, JobState.RUNNING)
    assert volatile_commits(store) == (before[0] + 3, before[1] + 2)
    job = move(store, job, JobState.QUEUED, count_preemption=True)
    assert volatile_commits(store) == (before[0] + 4, before[1] + 2), "a requeue is durable"
    job = move(store, job, JobState.LOADING)
    move(store, job, JobState.SUCCEEDED, result="ok")
    assert volatile_commits(store) == (before[0] + 6, before[1] + 3), "a terminal move is durable"
    assert store.ask(StoreSnapshot())["synchronous"] == engine.durable_level


def test_a_move_into_running_that_records_something_is_durable(
    store: pykka.ActorRef[JobStore],
) -> None:
    job = move(store, insert(store), JobState.LOADING)
    before = volatile_commits(store)
    move(store, job, JobState.RUNNING, partial_output="Once upon")
    assert volatile_commits(store) == (before[0] + 1, before[1])


def test_volatile_moves_waiting_with_a_durable_write_share_its_full_commit(
    store: pykka.ActorRef[JobStore], clock: GatedClock
) -> None:
    queued = [insert(store, n) for n in range(3)]
    before = volatile_commits(store)
    clock.hold()
    held = store.ask(Transition(queued[0].id, JobState.LOADING), block=False)
    assert clock.entered.wait(5)
    behind = [
        store.ask(Transition(queued[1].id, JobState.LOADING), block=False),
        store.ask(InsertJob(make_spec(9)), block=False),
        store.ask(Transition(queued[2].id, JobState.LOADING), block=False),
    ]
    clock.release()
    held.get(timeout=10)
    for future in behind:
        future.get(timeout=10)
    commits, volatile = volatile_commits(store)
    assert volatile == before[1] + 1, "the moves ahead of the insert skipped the fsync"
    assert commits == before[0] + 2, "the insert and the move behind it: one FULL commit"


def test_a_normal_store_counts_no_volatile_commits(tmp_path: Path) -> None:
    settings = StoreSettings(path=str(tmp_path / "n.sqlite3"), synchronous="NORMAL")
    store = JobStore.start(settings, ManualClock())
    try:
        move(store, insert(store), JobState.LOADING)
        assert volatile_commits(store)[1] == 0
    finally:
        store.stop()
