"""The arbiter's choices, without threads: order keys, continuation, residency, fair share."""

from __future__ import annotations

import itertools

from actors.scheduling import ReadyQueue, SlotView, choose_preemption, displaces
from protocol import ActiveHours, Job, JobSpec, JobState, Lane, Priority, SchedulingPolicy

NOON = 1_767_610_800.0  # an arbitrary fixed epoch second
_seq = itertools.count(1)


def make_job(
    lane: Lane = Lane.EXTERNAL,
    priority: Priority = Priority.NORMAL,
    *,
    model: str = "m",
    caller: str = "c",
    chain: str | None = None,
    created: float | None = None,
    preemptions: int = 0,
    not_before: float | None = None,
) -> Job:
    seq = next(_seq)
    spec = JobSpec.generate(
        model=model, prompt="p", lane=lane, priority=priority, caller=caller, chain_id=chain
    )
    t = NOON + seq if created is None else created
    return Job(
        id=f"job{seq}",
        seq=seq,
        spec=spec,
        state=JobState.QUEUED,
        created_at=t,
        updated_at=t,
        preemptions=preemptions,
        not_before=not_before,
    )


POLICY = SchedulingPolicy(max_swap_defer_s=30.0)


def drain(queue: ReadyQueue, now: float = NOON + 1000, **kw: frozenset[str]) -> list[str]:
    out = []
    while (job := queue.pop(now, POLICY, **kw)) is not None:
        out.append(job.id)
    return out


def test_internal_jobs_are_taken_before_external_ones() -> None:
    q = ReadyQueue()
    ext, intl = make_job(Lane.EXTERNAL), make_job(Lane.INTERNAL)
    for job in (ext, intl):
        q.add(job, NOON)
    assert drain(q) == [intl.id, ext.id]


def test_higher_priority_goes_first_within_a_lane() -> None:
    q = ReadyQueue()
    jobs = [
        make_job(priority=p)
        for p in (Priority.LOW, Priority.URGENT, Priority.NORMAL, Priority.HIGH)
    ]
    for job in jobs:
        q.add(job, NOON)
    assert drain(q) == [jobs[1].id, jobs[3].id, jobs[2].id, jobs[0].id]


def test_lane_outranks_priority() -> None:
    q = ReadyQueue()
    ext_urgent, int_low = (
        make_job(Lane.EXTERNAL, Priority.URGENT),
        make_job(Lane.INTERNAL, Priority.LOW),
    )
    q.add(ext_urgent, NOON)
    q.add(int_low, NOON)
    assert drain(q) == [int_low.id, ext_urgent.id]


def test_jobs_of_one_class_come_out_in_arrival_order() -> None:
    q = ReadyQueue()
    jobs = [make_job() for _ in range(20)]
    for job in jobs:
        q.add(job, NOON)
    assert drain(q) == [j.id for j in jobs]


def test_the_next_step_of_a_running_chain_goes_first_in_its_class() -> None:
    q = ReadyQueue()
    other, step2 = make_job(chain="x"), make_job(chain="bot-task")
    q.add(other, NOON)
    q.add(step2, NOON)
    assert drain(q, chains=frozenset({"bot-task"})) == [step2.id, other.id]


def test_continuation_does_not_jump_a_higher_lane() -> None:
    q = ReadyQueue()
    step2, internal = make_job(Lane.EXTERNAL, chain="t"), make_job(Lane.INTERNAL)
    q.add(step2, NOON)
    q.add(internal, NOON)
    assert drain(q, chains=frozenset({"t"})) == [internal.id, step2.id]


def test_a_preempted_job_returns_to_the_head_of_its_class() -> None:
    q = ReadyQueue()
    waiting = make_job()
    preempted = make_job(preemptions=1)
    q.add(waiting, NOON)
    q.add(preempted, NOON)
    assert drain(q) == [preempted.id, waiting.id]


def test_jobs_whose_not_before_is_in_the_future_are_not_ready() -> None:
    q = ReadyQueue()
    later = make_job(not_before=NOON + 10)
    q.add(later, NOON)
    assert q.pop(NOON + 5, POLICY) is None
    assert q.next_due() == NOON + 10
    popped = q.pop(NOON + 10, POLICY)
    assert popped is not None and popped.id == later.id and popped.not_before is None


def test_a_removed_job_is_never_popped_and_is_reported_once() -> None:
    q = ReadyQueue()
    a, b = make_job(chain="k"), make_job()
    q.add(a, NOON)
    q.add(b, NOON)
    assert q.remove(a.id) == a
    assert q.remove(a.id) is None
    assert drain(q, chains=frozenset({"k"})) == [b.id]
    assert len(q) == 0


def test_adding_the_same_job_twice_keeps_one_copy() -> None:
    q = ReadyQueue()
    job = make_job()
    assert q.add(job, NOON) and not q.add(job, NOON)
    assert drain(q) == [job.id]


def test_jobs_for_the_resident_model_go_before_older_ones_that_need_a_swap() -> None:
    q = ReadyQueue()
    old_other = make_job(model="b", created=NOON)
    new_resident = make_job(model="a", created=NOON + 5)
    q.add(old_other, NOON)
    q.add(new_resident, NOON)
    assert drain(q, now=NOON + 10, resident=frozenset({"a"})) == [new_resident.id, old_other.id]


def test_a_job_that_needs_a_swap_runs_once_deferred_for_max_swap_defer_from_its_fifo_turn() -> None:
    q = ReadyQueue()
    old_other = make_job(model="b", created=NOON)
    resident = [make_job(model="a", created=NOON + 1 + i) for i in range(5)]
    for job in (old_other, *resident):
        q.add(job, NOON)
    a = frozenset({"a"})
    # Long past its creation, but its deferral starts at its first pass-over (its FIFO turn).
    assert q.pop(NOON + 100, POLICY, resident=a) == resident[0]
    assert q.pop(NOON + 129, POLICY, resident=a) == resident[1]
    assert q.pop(NOON + 130, POLICY, resident=a) == old_other
    assert drain(q, now=NOON + 131, resident=a) == [j.id for j in resident[2:]]


def test_a_zero_max_swap_defer_serves_the_oldest_job_first_whatever_is_resident() -> None:
    q = ReadyQueue()
    old_other, new_resident = make_job(model="b"), make_job(model="a")
    q.add(old_other, NOON)
    q.add(new_resident, NOON)
    fifo = SchedulingPolicy(max_swap_defer_s=0.0)
    assert q.pop(NOON, fifo, resident=frozenset({"a"})) == old_other


def test_an_older_job_for_the_resident_model_is_not_deferred() -> None:
    q = ReadyQueue()
    old_resident, other = make_job(model="a"), make_job(model="b")
    q.add(old_resident, NOON)
    q.add(other, NOON)
    assert drain(q, resident=frozenset({"a"})) == [old_resident.id, other.id]


def test_callers_of_one_class_are_served_round_robin() -> None:
    q = ReadyQueue()
    flood = [make_job(caller="heavy") for _ in range(5)]
    light = [make_job(caller="light1"), make_job(caller="light2")]
    for job in flood + light:
        q.add(job, NOON)
    order = drain(q)
    assert order[:3] == [flood[0].id, light[0].id, light[1].id]
    assert order[3:] == [j.id for j in flood[1:]]


def test_a_caller_that_comes_back_gets_one_turn_per_round() -> None:
    q = ReadyQueue()
    a1, b1 = make_job(caller="a"), make_job(caller="b")
    q.add(a1, NOON)
    q.add(b1, NOON)
    assert q.pop(NOON, POLICY) == a1
    a2, a3 = make_job(caller="a"), make_job(caller="a")
    q.add(a2, NOON)
    q.add(a3, NOON)
    assert drain(q) == [b1.id, a2.id, a3.id]


def test_depths_count_jobs_per_lane_and_priority() -> None:
    q = ReadyQueue()
    q.add(make_job(Lane.INTERNAL, Priority.HIGH), NOON)
    q.add(make_job(Lane.INTERNAL, Priority.HIGH), NOON)
    q.add(make_job(Lane.EXTERNAL, Priority.LOW, not_before=NOON + 5), NOON)
    depths = q.depths()
    assert depths[(Lane.INTERNAL, Priority.HIGH)] == 2
    assert depths[(Lane.EXTERNAL, Priority.LOW)] == 1
    assert sum(depths.values()) == 3


def running(job: Job, started: float = NOON) -> SlotView:
    return SlotView("gpu0", job.replace(state=JobState.RUNNING, started_at=started))


ACTIVE_ALL_DAY = SchedulingPolicy(active_hours=ActiveHours.parse("00:00-23:59"), max_preemptions=2)
NEVER_ACTIVE = SchedulingPolicy(active_hours=None)


def test_an_internal_job_preempts_an_external_call_during_active_hours() -> None:
    victim = running(make_job(Lane.EXTERNAL))
    assert choose_preemption(make_job(Lane.INTERNAL), [victim], NOON, ACTIVE_ALL_DAY) == victim


def test_outside_active_hours_only_urgent_internal_work_preempts() -> None:
    victim = running(make_job(Lane.EXTERNAL))
    assert (
        choose_preemption(make_job(Lane.INTERNAL, Priority.HIGH), [victim], NOON, NEVER_ACTIVE)
        is None
    )
    assert (
        choose_preemption(make_job(Lane.INTERNAL, Priority.URGENT), [victim], NOON, NEVER_ACTIVE)
        == victim
    )


def test_external_work_never_preempts_and_internal_calls_are_never_preempted() -> None:
    ext_call, int_call = running(make_job(Lane.EXTERNAL)), running(make_job(Lane.INTERNAL))
    assert (
        choose_preemption(
            make_job(Lane.EXTERNAL, Priority.URGENT), [ext_call], NOON, ACTIVE_ALL_DAY
        )
        is None
    )
    assert (
        choose_preemption(
            make_job(Lane.INTERNAL, Priority.URGENT), [int_call], NOON, ACTIVE_ALL_DAY
        )
        is None
    )


def test_a_job_preempted_max_preemptions_times_is_left_to_finish() -> None:
    worn = running(make_job(Lane.EXTERNAL, preemptions=2))
    assert choose_preemption(make_job(Lane.INTERNAL), [worn], NOON, ACTIVE_ALL_DAY) is None


def test_active_hours_may_wrap_past_midnight() -> None:
    window = ActiveHours.parse("22:00-06:00")
    import datetime as dt

    assert window.contains(dt.time(23, 0)) and window.contains(dt.time(5, 59))
    assert not window.contains(dt.time(6, 0)) and not window.contains(dt.time(12, 0))


def test_a_better_lane_or_priority_displaces_the_job_handed_to_a_busy_slot() -> None:
    handed = make_job(Lane.EXTERNAL, Priority.HIGH)
    assert displaces(make_job(Lane.INTERNAL, Priority.LOW), handed, None)
    assert displaces(make_job(Lane.EXTERNAL, Priority.URGENT), handed, None)
    assert not displaces(make_job(Lane.EXTERNAL, Priority.NORMAL), handed, None)


def test_in_the_same_class_an_older_handed_job_keeps_its_place() -> None:
    handed = make_job()
    assert not displaces(make_job(), handed, None)
    assert not displaces(make_job(model="other", caller="someone else"), handed, None)


def test_a_returning_preempted_job_displaces_a_fresh_one_of_its_class() -> None:
    assert displaces(make_job(preemptions=1), make_job(), None)
    assert not displaces(make_job(preemptions=1), make_job(preemptions=2), None)


def test_the_next_step_of_the_chain_running_on_the_slot_displaces_other_work() -> None:
    handed = make_job()
    assert displaces(make_job(chain="task-7"), handed, "task-7")
    assert not displaces(make_job(chain="task-7"), handed, "task-8")
    assert not displaces(make_job(chain="task-7"), make_job(chain="task-7"), "task-7")
