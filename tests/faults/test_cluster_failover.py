"""Two ``gpulane serve`` processes on one PostgreSQL database, one model server (#18,
docs/architecture.md section 14): the leader killed with SIGKILL again and again under load
loses no accepted job and each job succeeds once; a leader stopped with SIGSTOP past its
lease writes nothing after the other gateway took over, and follows when it wakes; a
leader whose tree gives up hands the lease on and exits with status 1; a follower that
takes the lead reads its config file then.

Real processes and real time: waits are bounded polls (``wait_until``), and what the tests
assert comes from the database (the jobs, the lease, and an audit trigger the test
installs, ``cluster_kit.AUDIT``), never from how long anything took. Takeover times are
measured and reported (``tests/benchmarks/bench_failover.py`` takes their p99).
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cluster_kit import ROLE_S, Cluster, Submitter, running_cluster, takeover_after_kill
from postgres_kit import fresh_database

from actors.gateway.foreground import EXIT_FAILED
from actors.testing import wait_until

pytestmark = pytest.mark.slow

# Short calls (about 0.1 s), so many finish between kills and some are always running.
QUICK = '{"load_seconds": 0.05, "first_token_seconds": 0.0, "tokens_per_second": 400}'
# Calls of a second or more, so the stopped leader has calls running when it stops.
SLOW = (
    '{"load_seconds": 0.05, "first_token_seconds": 0.0, "tokens_per_second": 30,'
    ' "mean_answer_tokens": 40, "max_answer_tokens": 60}'
)
# A fault the test installs: every update of a job by one session fails, as on a full disk.
BROKEN_FOR = """
CREATE FUNCTION test_broken() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('application_name') = 'HOLDER' THEN
        RAISE EXCEPTION 'could not extend file: No space left on device'
            USING ERRCODE = '53100';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_broken BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION test_broken();
"""
KILLS = 3
SETTLE_S = 120.0  # bounds how long the queue may take to drain, never a pause


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as made:
        yield made


def all_succeeded(cluster: Cluster, ids: list[str]) -> bool:
    states = cluster.states()
    return all(states.get(job_id) == "succeeded" for job_id in ids)


def succeeded_writes(cluster: Cluster) -> Counter[str]:
    return Counter(job for job, state, _, _ in cluster.audit() if state == "succeeded")


def test_the_leader_killed_again_and_again_under_load_loses_no_accepted_job(
    tmp_path: Path, url: str
) -> None:
    with running_cluster(tmp_path, url, QUICK, lease_s=3.0) as cluster:
        submitter = Submitter(cluster).start()
        takeovers = []
        try:
            for _ in range(KILLS):
                submitter.wait_for_more(10)
                takeovers.append(takeover_after_kill(cluster))
            submitter.wait_for_more(10)
        finally:
            accepted = submitter.stop()
        wait_until(lambda: all_succeeded(cluster, accepted), SETTLE_S, "every job to end")
        states = cluster.states()
        tokens = cluster.lease()[1]
    print(f"takeovers after SIGKILL (s): {[round(t, 2) for t in takeovers]}")
    assert len(set(accepted)) == len(accepted) > 0
    # Every job in the database succeeded: the accepted ones, and any a killed leader
    # committed but could not acknowledge (its client saw an error and sent it again).
    assert set(states.values()) == {"succeeded"}, Counter(states.values())
    assert set(accepted) <= set(states)
    assert set(succeeded_writes(cluster).values()) == {1}, "each job succeeded exactly once"
    assert tokens == 1 + KILLS, "each kill handed the lease on once"


def test_a_leader_stopped_past_its_lease_writes_nothing_after_the_takeover_and_then_follows(
    tmp_path: Path, url: str
) -> None:
    with running_cluster(tmp_path, url, SLOW, lease_s=1.5) as cluster:
        stopped, survivor = cluster.gateways
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "a long one"}]}
        ids = [stopped.process.post("/jobs", json=body).json()["id"] for _ in range(4)]
        wait_until(lambda: "running" in cluster.states().values(), ROLE_S, "a call to run")
        stopped_holder = cluster.lease()[0]
        stopped.process.send(signal.SIGSTOP)
        try:
            wait_until(survivor.leads, ROLE_S, "the other gateway to take over")
        finally:
            stopped.process.send(signal.SIGCONT)
        holder, token, taken_at = cluster.lease()
        assert holder != stopped_holder and token == 2
        wait_until(lambda: stopped.role() == "follower", ROLE_S, "the woken one to follow")
        wait_until(lambda: all_succeeded(cluster, ids), SETTLE_S, "every job to end")
        # The woken gateway still serves, as a follower: it forwards a submit to the leader.
        forwarded = stopped.process.post("/jobs", json=body)
        assert forwarded.status_code == 202, forwarded.text
        wait_until(lambda: all_succeeded(cluster, [forwarded.json()["id"]]), SETTLE_S)
        audit = cluster.audit()
    stale = f"gpulane store {stopped_holder}"
    late = [(job, state, at) for job, state, app, at in audit if app == stale and at >= taken_at]
    assert late == [], "the stopped leader wrote after the takeover"
    assert any(app == stale for _, _, app, _ in audit), "it did write while it led"
    assert set(succeeded_writes(cluster).values()) == {1}
    # A call the stopped leader had running ran again under the new leader, from the
    # start of its turn there: the database shows one gateway's moves, then the other's.
    left_by_stale = {job: state for job, state, app, _ in audit if app == stale}
    recovered = {job for job, state in left_by_stale.items() if state in ("loading", "running")}
    finished_by = {job: app for job, state, app, _ in audit if state == "succeeded"}
    assert recovered, "the stopped leader had a call running"
    assert all(finished_by[job] != stale for job in recovered)


def test_a_leader_whose_tree_gives_up_hands_the_lease_on_and_exits_with_status_1(
    tmp_path: Path, url: str
) -> None:
    with running_cluster(tmp_path, url, QUICK, lease_s=3.0) as cluster:
        failing, survivor = cluster.gateways
        holder = cluster.lease()[0]
        # The leader's store can no longer update a job, as on a full disk; the other
        # gateway's store can (the fault names the leader's session).
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(BROKEN_FOR.replace("HOLDER", f"gpulane store {holder}"))
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}]}
        job_id = failing.process.post("/jobs", json=body).json()["id"]
        wait_until(survivor.leads, ROLE_S, "the other gateway to take over")
        assert failing.process.wait(SETTLE_S) == EXIT_FAILED
        wait_until(lambda: all_succeeded(cluster, [job_id]), SETTLE_S, "the job to end")
        assert cluster.lease()[1] == 2
    log = failing.process.log()
    assert "leader_lane_gave_up" in log and "lease_released" in log


def test_a_follower_that_takes_the_lead_runs_with_its_config_file_as_it_is_then(
    tmp_path: Path, url: str
) -> None:
    with running_cluster(tmp_path, url, QUICK, lease_s=3.0) as cluster:
        first, second = cluster.gateways
        # Edited on the follower's host after it started: a follower reads it on leading.
        edited = second.config.read_text().replace(
            "max_queued_per_caller = 0", "max_queued_per_caller = 1"
        )
        second.config.write_text(edited)
        cluster.kill(first)
        wait_until(second.leads, ROLE_S, "the follower to take over")
        paused = second.process.post("/admin/pause")
        assert paused.status_code == 200, paused.text
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}]}
        assert second.process.post("/jobs", json=body).status_code == 202
        refused = second.process.post("/jobs", json=body)
        assert refused.status_code == 503 and "queued_per_caller" in refused.text
