"""A process killed with SIGKILL after a job's end was committed and before its webhook was
posted: restarted on the same database, the delivery goes out, once, signed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from webhook_receiver import WebhookReceiver, verified

from actors import Config, GpuLane
from actors.testing import FakeGpu, ManualClock, quiesce, wait_until
from protocol import JobState, StoreSettings
from protocol.config import WebhookSettings
from protocol.webhook import DELIVERY_HEADER, WebhookState

CHILD = Path(__file__).with_name("webhook_crash_child.py")
REPO = CHILD.parents[2]
SECRET = "crash-webhook-secret-0001"


def run_and_kill(path: Path, url: str) -> str:
    """Run the child until its job has ended and its delivery is in hand, SIGKILL it; the
    job's id."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), url, SECRET],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    assert child.stdout is not None
    seen: dict[str, str] = {}
    try:
        for line in child.stdout:
            word, _, job_id = line.strip().partition(" ")
            seen[word] = job_id
            if {"ENDED", "POSTING"} <= set(seen):
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert seen.get("ENDED") == seen.get("POSTING"), f"the child said {seen}"
    return seen["ENDED"]


def test_a_delivery_committed_before_a_kill_9_is_posted_once_after_the_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    with WebhookReceiver() as receiver:
        job_id = run_and_kill(path, f"{receiver.url}/after-crash")
        conn = sqlite3.connect(str(path))
        rows = conn.execute(
            "SELECT j.state, w.state, w.attempts FROM jobs j "
            "JOIN webhook_outbox w ON w.job_seq = j.seq WHERE j.id = ?",
            (job_id,),
        ).fetchall()
        conn.close()
        assert rows == [("succeeded", "pending", "[]")], "committed and never attempted"
        assert receiver.stats() == (), "nothing left the killed process"

        clock = ManualClock(start=time.time())  # past the delivery's due time
        webhooks = WebhookSettings(secret=SECRET, allowed_hosts=("127.0.0.1",))
        config = Config(store=StoreSettings(path=str(path)), webhooks=webhooks)
        with GpuLane.start(config, gpu=FakeGpu(clock), clock=clock) as lane:
            (post,) = receiver.posts(1)

            def delivered() -> bool:
                webhook = lane.get(job_id).webhook
                return webhook is not None and webhook.state is WebhookState.DELIVERED

            wait_until(delivered, what="the delivery was never recorded")
            quiesce()
            job = lane.get(job_id)
        assert post.path == "/after-crash" and post.headers[DELIVERY_HEADER] == job_id
        assert verified(post, SECRET, now=clock.now())
        assert post.json()["job"]["result"] == "done"
        assert job.state is JobState.SUCCEEDED
        assert job.webhook is not None
        assert [(a.status, a.at) for a in job.webhook.deliveries] == [(200, clock.now())]
        assert len(receiver.stats()) == 1, "posted once"
