"""A model server lost mid-stream costs the job nothing; a stream its request broke is charged.

Issue #17: losing a host moves its running jobs back to the queue with no attempt
charged, to resume from the text they produced. Here the simulated Ollama runs as a
process of its own (tests/kits/simulated_process.py) and is killed with SIGKILL while a
client streams an answer, then started again on the same port, as an operator's Ollama
restart does. The simulated model's text is a function of its context, so a call that
resumes after the text so far produces exactly the rest of the uninterrupted answer
(actors/backends/simulated/_text.py); the assertions follow the preemption test over
HTTP (tests/integration/test_cloud_and_embed.py): the answer equals the uninterrupted
one, and the streaming client saw each piece once. Real time passes here, so waits are
bounded polls (``wait_until``) or the client's own stream, never a pause.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from profiles import ENDLESS
from simulated_process import SimulatedProcess

from actors import Config, GpuLane
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import FaultKind, SimulatedOllama
from actors.testing import wait_until
from protocol import JobSpec, JobState, Limits, ResidencySettings, RetryPolicy, StoreSettings

# Polls often and probes soon, so the outage is noticed and ended in a moment.
RESIDENCY = ResidencySettings(poll_interval_s=0.2, probe_initial_s=0.05, probe_max_s=0.4)
BUDGET = 120  # tokens: at ENDLESS's 200 a second, an answer streams for 0.6 s
SEEN_BEFORE_THE_CUT = 5  # pieces the client has seen when the server dies
STORY = JobSpec.chat(
    model="endless", messages=[{"role": "user", "content": "Tell me about the queue."}],
    max_tokens=BUDGET, stream=True,
)  # fmt: skip


@contextlib.contextmanager
def lane_on(url: str, tmp_path: Path, retry: RetryPolicy | None = None) -> Iterator[GpuLane]:
    """A lane whose one backend is the Ollama at ``url``, stopped (and its client closed)
    after the block."""
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        limits=Limits.off(),
        residency=RESIDENCY,
        retry=retry or RetryPolicy(),
    )
    backend = OllamaBackend(url, timeout=10.0)
    try:
        with GpuLane.start(config, backend=backend) as lane:
            yield lane
    finally:
        backend.close()


@pytest.fixture
def model_server() -> Iterator[SimulatedProcess]:
    profile = json.dumps(dataclasses.asdict(ENDLESS))
    with SimulatedProcess("--profile", f"endless={profile}") as server:
        yield server


def test_a_server_killed_mid_stream_requeues_the_job_uncharged_and_it_resumes_after_its_text(
    model_server: SimulatedProcess, tmp_path: Path
) -> None:
    with lane_on(model_server.url, tmp_path) as lane:
        uninterrupted = lane.submit(STORY).result(timeout=30)
        assert len(uninterrupted.split()) == BUDGET
        ticket = lane.submit(STORY)
        streamed = ticket.chunks(timeout=30)
        seen = [next(streamed) for _ in range(SEEN_BEFORE_THE_CUT)]
        model_server.kill()
        wait_until(lambda: lane.get(ticket.job_id).state is JobState.QUEUED, timeout=10)
        cut = lane.get(ticket.job_id)
        assert (cut.attempts, cut.preemptions) == (0, 0), "losing the host is not the job's"
        assert cut.partial_output.startswith("".join(seen))
        assert uninterrupted.startswith(cut.partial_output)
        assert len(cut.partial_output) < len(uninterrupted), "the kill came mid-stream"
        assert lane.status()["health"]["local"]["state"] == "down"
        model_server.start()  # the same port, nothing loaded
        rest = list(streamed)  # ends when the job does
        answer = ticket.result(timeout=30)
        assert answer == uninterrupted  # resumed from its prefix: nothing repeated or lost
        assert "".join([*seen, *rest]) == answer, "the client saw each piece once"
        done = lane.get(ticket.job_id)
        assert (done.state, done.attempts, done.preemptions) == (JobState.SUCCEEDED, 0, 0)
        assert (done.backend, done.slot) == ("local", "gpu0")
        assert len(done.segments) == 2  # the cut call's usage and the resumed one's
        health = lane.status()["health"]["local"]
        assert health["state"] == "up" and health["changes"] == 2
        assert lane.status()["slots"]["gpu0"]["backend"] == "local"


def test_a_stream_its_own_request_broke_mid_answer_is_charged_and_resumes_after_its_text(
    tmp_path: Path,
) -> None:
    # An Ollama {"error"} line after output began is a failure of this request, not an
    # outage (docs/backends.md, "Whose failure is it"): the process simulator injects no
    # faults, so this runs the same simulator in-process, on loopback, which does.
    retry = RetryPolicy(base_delay_s=0.01, jitter=0.0)
    with (
        SimulatedOllama({"endless": ENDLESS}) as server,
        lane_on(server.url, tmp_path, retry) as lane,
    ):
        uninterrupted = lane.submit(STORY).result(timeout=30)
        server.inject(FaultKind.ERROR_LINE, after_chunks=SEEN_BEFORE_THE_CUT)
        ticket = lane.submit(STORY)
        answer = ticket.result(timeout=30)
        done = lane.get(ticket.job_id)
        health = lane.status()["health"]["local"]
    assert answer == uninterrupted  # retried after its text so far
    assert (done.state, done.attempts, done.preemptions) == (JobState.SUCCEEDED, 1, 0)
    assert [segment.eval_count for segment in done.segments][:1] == [SEEN_BEFORE_THE_CUT]
    assert "unexpected EOF" in (done.error or "")
    assert health["state"] == "up" and health["changes"] == 0
