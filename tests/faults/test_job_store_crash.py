"""Crash recovery: a store killed with SIGKILL mid-write loses nothing it acknowledged."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.job_store import JobStore
from actors.runtime import ManualClock
from protocol import LEGAL_TRANSITIONS, JobSpec, JobState, StoreSettings
from protocol.messages import LoadQueuedJobs, StoreSnapshot

CHILD = Path(__file__).with_name("job_store_crash_child.py")
REPO = CHILD.parents[2]


def reachable(state: JobState) -> set[JobState]:
    """``state`` and every state legal moves can lead to from it."""
    seen = {state}
    todo = [state]
    while todo:
        for nxt in LEGAL_TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def run_and_kill(path: Path, acks_wanted: int, deadline_s: float) -> dict[str, tuple[str, int]]:
    """Run the child until it has acknowledged enough writes, SIGKILL it, return its acks."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    assert child.stdout is not None
    acked: dict[str, tuple[str, int]] = {}
    count = 0
    deadline = time.monotonic() + deadline_s
    try:
        for line in child.stdout:
            if line.startswith("ACK ") and line.endswith("\n"):
                _, job_id, state, attempts = line.split()
                acked[job_id] = (state, int(attempts))
                count += 1
            if count >= acks_wanted or time.monotonic() > deadline:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
    for line in rest.splitlines(keepends=True):
        if line.startswith("ACK ") and line.endswith("\n"):
            _, job_id, state, attempts = line.split()
            acked[job_id] = (state, int(attempts))
    assert child.returncode == -signal.SIGKILL
    assert count >= 200, f"the child acknowledged only {count} writes before the deadline"
    return acked


@pytest.mark.slow
def test_every_acknowledged_job_survives_a_kill_9_whole_and_is_recovered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    acked = run_and_kill(path, acks_wanted=3000, deadline_s=10)

    conn = sqlite3.connect(str(path))
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    rows = {
        r[0]: r
        for r in conn.execute(
            "SELECT id, seq, state, spec, attempts, partial_output, started_at, finished_at "
            "FROM jobs"
        )
    }
    conn.close()

    for job_id, (state, attempts) in acked.items():
        assert job_id in rows, f"acknowledged job {job_id} is missing"
        found = JobState(rows[job_id][2])
        assert found in reachable(JobState(state)), f"{job_id}: {state} went back to {found}"
        assert rows[job_id][4] >= attempts
    before: dict[str, tuple[int, str, int, str]] = {}
    for job_id, seq, state, spec, attempts, partial, started, finished in rows.values():
        JobSpec.from_dict(json.loads(spec))  # no half-written spec
        st = JobState(state)
        assert (finished is not None) == st.is_terminal, f"{job_id} {state} finished={finished}"
        assert started is not None or st in (JobState.QUEUED, JobState.CANCELLED)
        before[job_id] = (seq, state, attempts, partial)
    active = [i for i, (_, s, _, _) in before.items() if s in ("loading", "running")]
    assert active, "the kill should leave some jobs loading or running"

    store = JobStore.start(StoreSettings(path=str(path)), ManualClock())
    try:
        queued = store.ask(LoadQueuedJobs())
        assert store.ask(StoreSnapshot())["recovered_requeued"] == len(active)
    finally:
        store.stop()
    expected = sorted(
        (seq, i) for i, (seq, s, _, _) in before.items() if s in ("queued", "loading", "running")
    )
    assert [(j.seq, j.id) for j in queued] == expected, "queued in their old order"
    for job in queued:
        _, _, attempts, partial = before[job.id]
        assert (job.attempts, job.partial_output) == (attempts, partial), "nothing charged"
