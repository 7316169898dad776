"""A GpuLane on PostgreSQL leads by the lease (``actors.leadership.LaneLease``): one lane per
database dispatches, a lane that stops hands the lease on at once, and a lane whose lease
another gateway took over stops and writes nothing more. The lanes run on a ManualClock,
so the lease keeper renews only when a test moves the clock.

Each test has a database of its own (``postgres_kit.fresh_database``); they skip naming the
missing server, and fail under CI.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from job_store_helpers import make_spec
from postgres_kit import fresh_database

from actors import Config, GpuLane
from actors.runtime import ExitReason, ManualClock
from actors.testing import FakeGpu, quiesce, wait_until
from protocol import JobState, Limits, StoreError, StoreSettings
from protocol.cluster import ClusterSettings


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as made:
        yield made


def config_for(url: str, node: str) -> Config:
    return Config(
        store=StoreSettings(url=url),
        limits=Limits.off(),
        cluster=ClusterSettings(node=node, lease_s=3.0),
    )


def state_in_database(url: str, job_id: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT state FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


def test_a_lane_leads_its_database_and_a_second_lane_is_refused_naming_the_leader(
    url: str,
) -> None:
    clock = ManualClock()
    with GpuLane.start(config_for(url, "gw-a"), gpu=FakeGpu(clock), clock=clock) as lane:
        cluster = lane.status()["cluster"]
        assert (cluster["node"], cluster["role"], cluster["leader"], cluster["token"]) == (
            "gw-a", "leader", "gw-a", 1,
        )  # fmt: skip
        with pytest.raises(StoreError, match=r"led by another gateway \(gw-a, .*token 1\)"):
            GpuLane.start(config_for(url, "gw-b"), gpu=FakeGpu(clock), clock=clock)


def test_a_lane_that_stops_hands_the_lease_on_and_the_next_one_runs_its_job_uncharged(
    url: str,
) -> None:
    clock = ManualClock()
    gpu = FakeGpu(clock)
    with GpuLane.start(config_for(url, "gw-a"), gpu=gpu, clock=clock) as lane:
        job_id = lane.submit(make_spec(1), detach=True).job_id
        gpu.next_call()  # running when the lane stops
    finished = FakeGpu(clock, script=lambda call: call.finish("done"))
    with GpuLane.start(config_for(url, "gw-b"), gpu=finished, clock=clock) as lane:
        quiesce()
        assert lane.status()["cluster"]["token"] == 2, "taken at once, without waiting"
        job = lane.get(job_id)
        assert (job.state, job.result, job.attempts) == (JobState.SUCCEEDED, "done", 0)


def test_a_lane_whose_lease_was_taken_over_stops_and_writes_nothing_more(url: str) -> None:
    clock = ManualClock()
    gpu = FakeGpu(clock)
    failures: list[ExitReason] = []
    lane = GpuLane.start(config_for(url, "gw-a"), gpu=gpu, clock=clock, on_failure=failures.append)
    try:
        job_id = lane.submit(make_spec(1), detach=True).job_id
        call = gpu.next_call()
        quiesce()
        before = state_in_database(url, job_id)
        with psycopg.connect(url, autocommit=True) as other:  # another gateway took over
            other.execute("UPDATE gpulane_lease SET holder = 'gw-b#1', token = token + 1")
        call.finish("too late")
        clock.advance(1.0)  # the keeper's renewal (every lease_s / 3) finds the token gone
        wait_until(lambda: bool(failures), what="the lane to stop on the lost lease")
        assert "LeaseLostError" in str(failures[0]) and "took it over" in str(failures[0])
        assert state_in_database(url, job_id) == before, "no write after the takeover"
    finally:
        lane.stop()
