"""A whole gpulane process killed with SIGKILL mid-queue: restarted on the same database,
every acknowledged job completes, and none is answered twice."""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from actors import Config, GpuLane
from actors.testing import FakeCall, FakeGpu, ManualClock
from protocol import JobState, StoreSettings

CHILD = Path(__file__).with_name("lane_crash_child.py")
REPO = CHILD.parents[2]
JOBS = 200
DONE_REPORTS = 3  # finished jobs the child reports before the kill, so it lands mid-queue


def run_and_kill(path: Path, acks_wanted: int) -> dict[str, int]:
    """Run the child until it acknowledged ``acks_wanted`` submits, SIGKILL it, return them."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(JOBS), str(DONE_REPORTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    assert child.stdout is not None
    acked: dict[str, int] = {}
    done = 0
    deadline = time.monotonic() + 30
    try:
        for line in child.stdout:
            if line.startswith("ACK ") and line.endswith("\n"):
                _, job_id, n = line.split()
                acked[job_id] = int(n)
            elif line.startswith("DONE "):
                done += 1
            if (len(acked) >= acks_wanted and done >= DONE_REPORTS) or time.monotonic() > deadline:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
    for line in rest.splitlines(keepends=True):
        if line.startswith("ACK ") and line.endswith("\n"):
            _, job_id, n = line.split()
            acked[job_id] = int(n)
    assert child.returncode == -signal.SIGKILL
    return acked


def test_every_job_acknowledged_before_a_kill_9_completes_once_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    acked = run_and_kill(path, acks_wanted=JOBS)
    assert len(acked) == JOBS

    conn = sqlite3.connect(str(path))
    before = dict(conn.execute("SELECT id, state FROM jobs").fetchall())
    conn.close()
    done_before = {job_id for job_id, state in before.items() if state == "succeeded"}
    unfinished = set(acked) - done_before
    assert done_before, "some jobs should have finished before the kill"
    assert unfinished, "the kill should land in the middle of the queue"
    in_flight = sum(before[j] in ("loading", "running") for j in acked)  # almost always 1

    def quick(call: FakeCall) -> None:
        call.finish(f"answer to {call.request.messages[0].content}")

    clock = ManualClock()
    fake = FakeGpu(clock, script=quick)
    with GpuLane.start(Config(store=StoreSettings(path=str(path))), gpu=fake, clock=clock) as lane:
        finals = {job_id: lane.wait(job_id, timeout=30) for job_id in acked}
    answered = collections.Counter(
        call.request.messages[0].content for call in fake.backend.all_calls if call.result
    )
    print(
        f"\nkill -9: acknowledged={len(acked)} done_before_kill={len(done_before)} "
        f"in_flight_at_kill={in_flight} "
        f"completed_after_restart={sum(answered.values())}"
    )
    for job_id, n in acked.items():
        job = finals[job_id]
        assert job.state is JobState.SUCCEEDED, f"job-{n} ended {job.state.value}"
        assert job.result == f"answer to job-{n}"
        assert job.attempts == 0, "a crash is not the job's fault"
        expected_runs = 0 if job_id in done_before else 1
        assert answered[f"job-{n}"] == expected_runs, f"job-{n} ran {answered[f'job-{n}']} times"
