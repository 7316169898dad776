"""The real model server goes away and comes back: nothing fails (docs/architecture.md
section 13), shown against llama-cpp-python's server with the SmolLM2 GGUF, not only
against our simulator.

This test starts a server of its own (the session's is shared by the other real tests),
kills it with SIGKILL while jobs wait, and starts a new one on the same port, as an
operator's restart of the model server does. Real time passes, so waits are bounded
polls.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from real_model_kit import MODEL, answers, free_port, model_file, running_process

from actors import BackendSettings, Config, GpuLane
from actors.testing import wait_until
from protocol import JobSpec, JobState, Limits, ResidencySettings, StoreSettings

pytestmark = pytest.mark.real


def server_command(port: int) -> Sequence[str]:
    """llama_cpp.server as tests/e2e/conftest.py starts it, on ``port``."""
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_file()),
        "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", "2", "--interrupt_requests", "false",
    ]  # fmt: skip


def question(number: int) -> JobSpec:
    return JobSpec.chat(
        model=MODEL,
        messages=[{"role": "user", "content": f"Say the number {number}."}],
        options={"temperature": 0.0, "seed": 1},
        max_tokens=8,
    )


def test_a_killed_and_restarted_llama_cpp_server_fails_no_waiting_job(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ready = answers(f"{url}/v1/models")
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        backend=BackendSettings(
            kind="openai", url=url, request_timeout_s=120, resume="regenerate",
            schema_form="json_object",
        ),
        residency=ResidencySettings(poll_interval_s=0.5, probe_initial_s=0.2, probe_max_s=1.0),
        limits=Limits.off(),
    )  # fmt: skip
    with running_process("llama_cpp.server", server_command(port), ready, 120) as server:
        lane = GpuLane.start(config)
        try:
            assert lane.submit(question(0)).result(timeout=120)
            server.kill()
            server.wait(30)
            tickets = [lane.submit(question(n)) for n in range(1, 4)]
            wait_until(lambda: lane.status()["health"]["local"]["state"] == "down", 30)
            assert not any(ticket.done() for ticket in tickets)
            with running_process("llama_cpp.server", server_command(port), ready, 120):
                answers_after = [ticket.result(timeout=180) for ticket in tickets]
                jobs = [lane.get(ticket.job_id) for ticket in tickets]
                health = lane.status()["health"]["local"]
        finally:
            lane.stop()
    assert all(answers_after)
    assert {job.state for job in jobs} == {JobState.SUCCEEDED}
    assert {job.attempts for job in jobs} == {0}
    assert health["state"] == "up" and health["changes"] == 2
