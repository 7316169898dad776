"""Child process for the lane kill -9 test: a GpuLane on a SQLite file with slow calls.

Usage: python lane_crash_child.py DB_PATH JOBS DONE. Submits JOBS detached jobs and prints
``ACK <job id> <n>`` (flushed) for each acknowledged submit, then ``DONE <job id>`` as each
of the first DONE jobs is committed as succeeded; every backend call takes about 50 ms on the
wall clock, so most of them are still queued when the parent kills it.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2])]

from actors import Config, GpuLane  # noqa: E402 (after the sys.path line)
from actors.logs import configure_logging  # noqa: E402
from actors.runtime import SystemClock  # noqa: E402
from actors.testing import FakeCall, FakeGpu  # noqa: E402
from protocol import JobSpec, Limits, StoreSettings  # noqa: E402


def slow(call: FakeCall) -> None:
    """Answer after 50 ms of wall-clock time."""
    call.finish_after(0.05, f"answer to {call.request.messages[0].content}")


def main(path: str, jobs: int, done: int) -> None:
    configure_logging("warning")  # to stderr: stdout carries only the ACK lines
    clock = SystemClock()
    lane = GpuLane.start(
        Config(store=StoreSettings(path=path), limits=Limits.off()),
        gpu=FakeGpu(clock, script=slow),
        clock=clock,
    )
    job_ids = []
    for n in range(jobs):
        spec = JobSpec.chat(model="m", messages=[{"role": "user", "content": f"job-{n}"}])
        ticket = lane.submit(spec, detach=True)
        job_ids.append(ticket.job_id)
        sys.stdout.write(f"ACK {ticket.job_id} {n}\n")
        sys.stdout.flush()
    for job_id in job_ids[:done]:
        lane.wait(job_id, timeout=60)
        sys.stdout.write(f"DONE {job_id}\n")
        sys.stdout.flush()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
