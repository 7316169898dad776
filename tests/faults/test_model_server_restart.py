"""The model server dies and comes back, as an operator's Ollama restart does; nothing fails.

The simulated Ollama runs as a process of its own (tests/kits/simulated_process.py) and
is killed with SIGKILL, then started again on the same port with nothing loaded, as a
restarted Ollama is. In the first test ``gpulane serve`` runs in its own process too,
with clients waiting on it the whole time (docs/reliability.md, "The model server
goes away"). Real time passes here, so waits are bounded polls (``wait_until``).
"""

from __future__ import annotations

import concurrent.futures
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from simulated_process import SimulatedProcess

from actors import Config, GpuLane
from actors.backends.ollama import OllamaBackend
from actors.testing import wait_until
from protocol import JobSpec, JobState, Limits, ResidencySettings, StoreSettings

FAST = '{"load_seconds": 0.05, "first_token_seconds": 0.0, "tokens_per_second": 2000}'
PROFILES = (
    *("--profile", f"llama3.2={FAST}", "--profile", "nomic-embed-text"),
    *("--max-loaded-models", "2"),  # room for both pinned models, as on a real GPU
)
# Polls often and probes soon, so the test's outage is noticed and ended in a moment.
RESIDENCY = {"poll_interval_s": 0.2, "probe_initial_s": 0.05, "probe_max_s": 0.4}


@pytest.fixture
def model_server() -> Iterator[SimulatedProcess]:
    server = SimulatedProcess(*PROFILES)
    server.start()
    try:
        yield server
    finally:
        if server.running:
            server.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _loaded(url: str) -> set[str]:
    """The model names the server's ``/api/ps`` lists (empty if it cannot be reached)."""
    try:
        models = httpx.get(f"{url}/api/ps", timeout=2).json()["models"]
    except httpx.HTTPError:
        return set()
    return {m["name"].removesuffix(":latest") for m in models}


@pytest.fixture
def gateway(tmp_path: Path, model_server: SimulatedProcess) -> Iterator[str]:
    """``gpulane serve`` in a process of its own, on the simulated server."""
    port = _free_port()
    config = tmp_path / "gpulane.toml"
    residency = "\n".join(f"{key} = {value}" for key, value in RESIDENCY.items())
    config.write_text(
        f'[store]\npath = "{tmp_path / "jobs.sqlite3"}"\n'
        f'[backend]\nkind = "ollama"\nurl = "{model_server.url}"\n'
        f"[residency]\n{residency}\n"
        "[limits]\nrequests_per_minute = 0\n"  # eleven requests at once from one caller
    )
    command = [sys.executable, "-m", "actors.cli", "serve", "--config", str(config)]
    child = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/healthz"), timeout=30)
        yield url
    finally:
        child.terminate()
        child.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _ask(url: str, number: int) -> dict[str, Any]:
    """A client that waits as long as it takes for its answer (no time-out)."""
    body = {"model": "llama3.2", "prompt": f"question {number}", "stream": False}
    response = httpx.post(f"{url}/api/generate", json=body, timeout=None)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_a_killed_and_restarted_model_server_under_gpulane_serve_fails_no_waiting_client(
    gateway: str, model_server: SimulatedProcess
) -> None:
    assert _ask(gateway, 0)["done"]  # the stack works before the outage
    model_server.kill()
    with concurrent.futures.ThreadPoolExecutor(10) as clients:
        answers = [clients.submit(_ask, gateway, n) for n in range(1, 11)]
        wait_until(lambda: _status(gateway)["health"]["local"]["state"] == "down", timeout=10)
        wait_until(lambda: _status(gateway)["queued"] == 10, timeout=10)
        assert not any(answer.done() for answer in answers)
        model_server.start()  # the same port, nothing loaded
        replies = [answer.result(timeout=60) for answer in answers]
    assert all(reply["done"] and reply["response"] for reply in replies)
    jobs = httpx.get(f"{gateway}/jobs", params={"limit": 50}, timeout=5).json()["jobs"]
    assert len(jobs) == 11
    assert {job["state"] for job in jobs} == {"succeeded"}
    assert {job["attempts"] for job in jobs} == {0}
    health = _status(gateway)["health"]["local"]
    assert health["state"] == "up" and health["changes"] == 2 and health["down_s_total"] > 0


def _status(url: str) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{url}/status", timeout=5).json()
    return status


def test_pins_hold_through_ordinary_jobs_and_a_keep_alive_of_zero_and_return_after_a_restart(
    tmp_path: Path, model_server: SimulatedProcess
) -> None:
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        limits=Limits.off(),
        residency=ResidencySettings(
            chat_model="llama3.2", embedding_model="nomic-embed-text", **RESIDENCY
        ),
    )
    backend = OllamaBackend(model_server.url, timeout=10.0)
    lane = GpuLane.start(config, backend=backend)
    try:
        wait_until(lambda: _loaded(model_server.url) == {"llama3.2", "nomic-embed-text"})
        question = [{"role": "user", "content": "hi"}]
        tickets = [
            lane.submit(JobSpec.chat(model="llama3.2", messages=question)) for _ in range(100)
        ]
        tickets.append(lane.submit(JobSpec.chat(model="llama3.2", messages=question, keep_alive=0)))
        assert lane.embed("nomic-embed-text", ["a text"]).embeddings
        assert all(ticket.result(timeout=60) for ticket in tickets)
        # Ollama unloads a model once a request that carries keep_alive 0 ends, and takes
        # any request's keep_alive as the runner's new duration (server/sched.go,
        # useLoadedRunner; the simulator follows it): the pin's keep_alive went instead,
        # so both models are still loaded, and for good (the pin is -1: forever).
        models = httpx.get(f"{model_server.url}/api/ps", timeout=2).json()["models"]
        assert {m["name"].removesuffix(":latest") for m in models} == {
            "llama3.2", "nomic-embed-text"
        }  # fmt: skip
        assert all(int(m["expires_at"][:4]) > 2200 for m in models), models
        model_server.kill()
        model_server.start()  # a restarted server has nothing loaded
        wait_until(lambda: _loaded(model_server.url) == {"llama3.2", "nomic-embed-text"})
        assert lane.get(tickets[-1].job_id).state is JobState.SUCCEEDED
    finally:
        lane.stop()
        backend.close()
