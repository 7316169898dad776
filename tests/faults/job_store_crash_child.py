"""Child process for the kill -9 test: writes jobs through a JobStore and reports each ack.

Usage: python job_store_crash_child.py DB_PATH. Four threads insert jobs and move them
along; after every acknowledged write one line ``ACK <id> <state> <attempts>`` is
written to stdout and flushed, so the parent knows exactly what was acknowledged.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[2]),
    str(Path(__file__).resolve().parents[1] / "kits"),
]

from job_store_helpers import make_spec  # noqa: E402 (after the sys.path line)

from actors.job_store import JobStore  # noqa: E402
from actors.runtime import SystemClock  # noqa: E402
from protocol import Job, JobState, StoreSettings  # noqa: E402
from protocol.messages import InsertJob, Transition  # noqa: E402

_L, _R, _S, _Q = JobState.LOADING, JobState.RUNNING, JobState.SUCCEEDED, JobState.QUEUED

# What happens to job n: the moves in PLANS[n % len(PLANS)], with extra fields per move.
PLANS: tuple[tuple[tuple[JobState, dict[str, object]], ...], ...] = (
    (),
    ((_L, {}),),
    ((_L, {}), (_R, {"partial_output": "Once upon"})),
    ((_L, {}), (_R, {}), (_S, {"result": "the end"})),
    ((_L, {}), (_R, {}), (_Q, {"charge_attempt": True, "error": "connection reset"})),
)

_out = threading.Lock()


def ack(job: Job) -> None:
    with _out:
        sys.stdout.write(f"ACK {job.id} {job.state.value} {job.attempts}\n")
        sys.stdout.flush()


def main(path: str) -> None:
    store = JobStore.start(StoreSettings(path=path), SystemClock())

    def work(worker: int) -> None:
        n = worker
        while True:
            job = store.ask(InsertJob(make_spec(n, caller=f"w{worker}")))
            ack(job)
            for target, fields in PLANS[n % len(PLANS)]:
                job = store.ask(Transition(job.id, target, **fields))  # type: ignore[arg-type]
                ack(job)
            n += 4

    for worker in range(4):
        threading.Thread(target=work, args=(worker,), daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1])
