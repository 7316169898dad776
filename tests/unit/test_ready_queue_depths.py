"""The ready queue's depths are counted as jobs come and go, never by walking the queue: under
random adds, cancels, pops and delayed jobs they always equal a count of what it holds."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.scheduling import ReadyQueue
from protocol import Job, JobSpec, JobState, Lane, Priority, SchedulingPolicy

T0 = 1_767_610_800.0

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(tuple(Lane)),
            st.sampled_from(tuple(Priority)),
            st.sampled_from((None, 5.0)),  # ready now, or delayed by 5 s
        ),
        st.tuples(st.just("remove"), st.integers(0, 40)),
        st.tuples(st.just("pop"), st.floats(0.0, 10.0)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_depths_always_equal_the_jobs_queued_per_lane_and_priority(trace: list[tuple]) -> None:
    queue = ReadyQueue()
    policy = SchedulingPolicy()
    added: list[Job] = []
    now = T0
    for step in trace:
        if step[0] == "add":
            _, lane, priority, delay = step
            seq = len(added) + 1
            spec = JobSpec.generate(model="m", prompt="p", lane=lane, priority=priority)
            job = Job(
                id=f"j{seq}",
                seq=seq,
                spec=spec,
                state=JobState.QUEUED,
                created_at=now,
                updated_at=now,
                not_before=None if delay is None else now + delay,
            )
            added.append(job)
            queue.add(job, now)
        elif step[0] == "remove" and added:
            queue.remove(added[step[1] % len(added)].id)
        elif step[0] == "pop":
            now += step[1]
            queue.pop(now, policy)
        held = Counter((job.spec.lane, job.spec.priority) for job in queue.jobs())
        assert queue.depths() == {(lane, p): held[(lane, p)] for lane in Lane for p in Priority}
        assert sum(queue.depths().values()) == len(queue)
