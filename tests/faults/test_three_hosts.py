"""Three model servers behind one lane (#17, docs/scheduling.md "Placement across backends").

Each host is the simulated Ollama in a process of its own (tests/kits/simulated_process.py)
with its own catalog, read by gpulane from the host's ``/api/tags``; each holds one model
at a time (``--max-loaded-models 1``, the default). Jobs land only where their model is;
a host drains the model it has loaded; a host killed with SIGKILL mid-run fails no job:
its running call resumes elsewhere from its text, and the work only it can do waits for
it and runs when it is back on the same port. Real time passes here (the servers are real
processes), so waits are bounded polls (``wait_until``), never sleeps.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_process import ServeProcess
from simulated_process import SimulatedProcess

from actors import Config, GpuLane
from actors.testing import wait_until
from protocol import JobSpec, JobState

pytestmark = pytest.mark.slow

FAST = '{"load_seconds": 0.05, "first_token_seconds": 0.0, "tokens_per_second": 2000}'
# Long enough answers, slowly enough, that a call is still streaming when its host dies.
SLOW = (
    '{"load_seconds": 0.05, "first_token_seconds": 0.0, "tokens_per_second": 40,'
    ' "mean_answer_tokens": 80, "max_answer_tokens": 120}'
)
# Which models each host has: llama3.2 on a and b, qwen2.5 on a and c, gemma3 on c only.
CATALOGS = {
    "a": {"llama3.2": FAST, "qwen2.5": FAST},
    "b": {"llama3.2": FAST, "mistral-nemo": FAST},
    "c": {"qwen2.5": FAST, "gemma3": FAST},
}
RESIDENCY = {"poll_interval_s": 0.2, "probe_initial_s": 0.05, "probe_max_s": 0.4}


def _host(models: dict[str, str]) -> SimulatedProcess:
    profiles = [
        arg for name, profile in models.items() for arg in ("--profile", f"{name}={profile}")
    ]
    return SimulatedProcess(*profiles)


@contextlib.contextmanager
def _running(catalogs: dict[str, dict[str, str]]) -> Iterator[dict[str, SimulatedProcess]]:
    """One simulated Ollama process per host, each with its catalog; killed at the end."""
    servers = {name: _host(models) for name, models in catalogs.items()}
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            if server.running:
                server.kill()


@pytest.fixture
def hosts() -> Iterator[dict[str, SimulatedProcess]]:
    with _running(CATALOGS) as servers:
        yield servers


def _config(tmp_path: Path, hosts: dict[str, SimulatedProcess]) -> Config:
    return Config.from_mapping(
        {
            "store": {"path": str(tmp_path / "jobs.sqlite3")},
            "backends": [
                {"name": name, "kind": "ollama", "url": server.url}
                for name, server in hosts.items()
            ],
            "residency": RESIDENCY,
            "limits": {"requests_per_minute": 0},
        }
    )


def _ask(model: str, text: str = "hi") -> JobSpec:
    return JobSpec.chat(model=model, messages=[{"role": "user", "content": text}])


def _catalogs_known(lane: GpuLane) -> bool:
    backends = lane.status()["backends"]
    return all(backends[name]["catalog"] for name in CATALOGS)


def test_jobs_for_a_model_run_only_on_the_hosts_whose_catalog_lists_it(
    tmp_path: Path, hosts: dict[str, SimulatedProcess]
) -> None:
    lane = GpuLane.start(_config(tmp_path, hosts))
    try:
        wait_until(lambda: _catalogs_known(lane), timeout=10)
        models = ("llama3.2", "qwen2.5", "mistral-nemo", "gemma3")
        tickets = [lane.submit(_ask(model, f"q{n}")) for n in range(6) for model in models]
        assert all(ticket.result(timeout=60) for ticket in tickets)
        jobs = [lane.get(ticket.job_id) for ticket in tickets]
    finally:
        lane.stop()
    for job in jobs:
        assert job.state is JobState.SUCCEEDED
        assert job.spec.model in CATALOGS[job.backend or ""], (job.spec.model, job.backend)
        assert job.slot == f"{job.backend}.gpu0"
    # The model only c has ran on c, every time.
    assert {job.backend for job in jobs if job.spec.model == "gemma3"} == {"c"}


def _loaded(server: SimulatedProcess) -> set[str]:
    models = httpx.get(f"{server.url}/api/ps", timeout=2).json()["models"]
    return {m["name"].removesuffix(":latest") for m in models}


def test_each_host_drains_the_model_it_has_loaded(
    tmp_path: Path, hosts: dict[str, SimulatedProcess]
) -> None:
    lane = GpuLane.start(_config(tmp_path, hosts))
    try:
        wait_until(lambda: _catalogs_known(lane), timeout=10)
        # Load llama3.2 on a and mistral-nemo on b (one job each, one after the other).
        first = lane.submit(_ask("llama3.2"))
        first.result(timeout=30)
        second = lane.submit(_ask("mistral-nemo"))
        second.result(timeout=30)
        assert (lane.get(first.job_id).backend, lane.get(second.job_id).backend) == ("a", "b")
        wait_until(lambda: _loaded(hosts["a"]) == {"llama3.2"}, timeout=10)
        swaps_before = {n: lane.status()["backends"][n]["swaps"]["swaps"] for n in CATALOGS}
        lane.pause()
        # Twice as many mistral-nemo jobs: b always has one of its own to take while
        # llama3.2 jobs wait, so it never has a reason to load llama3.2 (it would once
        # its own ran out: a free host takes the work it may run).
        mixed = [*(["llama3.2", "mistral-nemo", "mistral-nemo"] * 4)]
        tickets = [lane.submit(_ask(model, f"q{n}")) for n, model in enumerate(mixed)]
        lane.resume()
        assert all(ticket.result(timeout=60) for ticket in tickets)
        jobs = [lane.get(ticket.job_id) for ticket in tickets]
        swaps_after = {n: lane.status()["backends"][n]["swaps"]["swaps"] for n in CATALOGS}
    finally:
        lane.stop()
    # Both hosts could run llama3.2, and c was idle, yet each model stayed where it was
    # loaded: not one more load anywhere.
    assert {job.backend for job in jobs if job.spec.model == "llama3.2"} == {"a"}
    assert {job.backend for job in jobs if job.spec.model == "mistral-nemo"} == {"b"}
    assert swaps_after == swaps_before
    assert _loaded(hosts["a"]) == {"llama3.2"} and _loaded(hosts["b"]) == {"mistral-nemo"}


@pytest.fixture
def slow_hosts() -> Iterator[dict[str, SimulatedProcess]]:
    """a and b both have llama3.2, slowly; only b has mistral-nemo."""
    catalogs = {
        "a": {"llama3.2": SLOW},
        "b": {"llama3.2": SLOW, "mistral-nemo": FAST},
        "c": {"gemma3": FAST},
    }
    with _running(catalogs) as servers:
        yield servers


@pytest.fixture
def gateway(tmp_path: Path, slow_hosts: dict[str, SimulatedProcess]) -> Iterator[str]:
    """``gpulane serve`` in a process of its own, with the three hosts as ``[[backends]]``."""
    config = tmp_path / "gpulane.toml"
    residency = "\n".join(f"{key} = {value}" for key, value in RESIDENCY.items())
    backends = "".join(
        f'[[backends]]\nname = "{name}"\nkind = "ollama"\nurl = "{server.url}"\n'
        for name, server in slow_hosts.items()
    )
    config.write_text(
        f'[store]\npath = "{tmp_path / "jobs.sqlite3"}"\n{backends}'
        f"[residency]\n{residency}\n[limits]\nrequests_per_minute = 0\n"
    )
    with ServeProcess(config, "--log-level", "warning") as serve:
        yield serve.url


def _status(url: str) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{url}/status", timeout=5).json()
    return status


def _generate(url: str, model: str, number: int) -> dict[str, Any]:
    """A client that waits as long as it takes for its answer (no time-out)."""
    body = {"model": model, "prompt": f"question {number}", "stream": False}
    response = httpx.post(f"{url}/api/generate", json=body, timeout=None)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _running_on(url: str, backend: str) -> str | None:
    """The job a slot of ``backend`` is running now, if any."""
    slots = _status(url)["slots"]  # /status's rows: each slot's backend and brief job
    running = [s["job"]["id"] for s in slots if s["job"] and s["backend"] == backend]
    return running[0] if running else None


def test_a_host_killed_mid_run_fails_no_job_and_its_work_finishes_elsewhere_or_on_its_return(
    gateway: str, slow_hosts: dict[str, SimulatedProcess]
) -> None:
    # /status's rows: each backend's catalog size, once its tracker has read it.
    wait_until(lambda: all(b["models"] for b in _status(gateway)["backends"]), timeout=20)
    with concurrent.futures.ThreadPoolExecutor(8) as clients:
        llama = [clients.submit(_generate, gateway, "llama3.2", n) for n in range(6)]
        wait_until(lambda: _running_on(gateway, "b") is not None, timeout=20)
        victim = _running_on(gateway, "b")  # a llama3.2 call, streaming slowly
        slow_hosts["b"].kill()
        wait_until(lambda: _status(gateway)["health"]["b"]["state"] == "down", timeout=10)
        nemo = [clients.submit(_generate, gateway, "mistral-nemo", n) for n in range(2)]
        # llama3.2 goes on on a; mistral-nemo, which only b has, waits for b.
        for answer in llama:
            assert answer.result(timeout=120)["done"]
        assert not any(answer.done() for answer in nemo)
        assert _status(gateway)["queued"] == 2
        slow_hosts["b"].start()  # the same port, nothing loaded
        for answer in nemo:
            assert answer.result(timeout=60)["done"]
    jobs = {
        job["id"]: job
        for job in httpx.get(f"{gateway}/jobs", params={"limit": 50}, timeout=5).json()["jobs"]
    }
    assert len(jobs) == 8
    assert {job["state"] for job in jobs.values()} == {"succeeded"}
    assert {job["attempts"] for job in jobs.values()} == {0}  # nobody paid for b's death
    nemo_hosts = {job["backend"] for job in jobs.values() if job["spec"]["model"] == "mistral-nemo"}
    assert nemo_hosts == {"b"}
    # The call b was running when it died finished on a, uncharged.
    assert victim is not None and jobs[victim]["backend"] == "a"
    assert jobs[victim]["result"]
