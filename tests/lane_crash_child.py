"""Child process for the lane kill -9 test: a GpuLane on a SQLite file with slow calls.

Usage: python lane_crash_child.py DB_PATH JOBS. Submits JOBS detached jobs and prints
``ACK <job id> <n>`` (flushed) for each acknowledged submit; every backend call takes
about 50 ms on the wall clock, so most of them are still queued when the parent kills it.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from actors import Config, GpuLane  # noqa: E402 (after the sys.path line)
from actors.logs import configure_logging  # noqa: E402
from actors.runtime import SystemClock  # noqa: E402
from actors.testing import FakeCall, FakeGpu  # noqa: E402
from protocol import JobSpec, Limits, StoreSettings  # noqa: E402


def slow(call: FakeCall) -> None:
    """Answer after 50 ms of wall-clock time."""
    call.finish_after(0.05, f"answer to {call.request.messages[0].content}")


def main(path: str, jobs: int) -> None:
    configure_logging("warning")  # to stderr: stdout carries only the ACK lines
    clock = SystemClock()
    lane = GpuLane.start(
        Config(store=StoreSettings(path=path), limits=Limits.off()),
        gpu=FakeGpu(clock, script=slow),
        clock=clock,
    )
    for n in range(jobs):
        spec = JobSpec.chat(model="m", messages=[{"role": "user", "content": f"job-{n}"}])
        ticket = lane.submit(spec, detach=True)
        sys.stdout.write(f"ACK {ticket.job_id} {n}\n")
        sys.stdout.flush()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
