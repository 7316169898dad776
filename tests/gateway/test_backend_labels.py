"""Backend labels through the gateway (docs/gateway.md): ``X-Gpulane-Labels: a,b`` on the
Ollama and OpenAI routes and ``labels`` on ``POST /jobs`` set the labels a job requires,
which ``GET /jobs/{id}`` shows; a bad label is a 400 naming the header or the field, and
a label no backend carries is a 400 naming ``labels``.

The lane drives the simulated Ollama server as its one ``[backend]``, labelled
``gpu:a100`` and ``fast``, so a job requiring either (or both) runs there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_kit import ALICE, CATALOG, HELLO, KEYS, Running, bearer

from actors import Config, GpuLane
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import SimulatedOllama
from actors.config import BackendSettings, GatewaySettings
from actors.gateway import GatewayServer, create_app
from protocol import RetryPolicy, StoreSettings

HEADER = "X-Gpulane-Labels"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Running]:
    settings = GatewaySettings(api_keys=KEYS)
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3"), synchronous="NORMAL"),
        retry=RetryPolicy(base_delay_s=0.0, max_delay_s=0.0, jitter=0.0),
        backend=BackendSettings(labels=("gpu:a100", "fast")),
        gateway=settings,
    )
    with SimulatedOllama(CATALOG) as sim:
        backend = OllamaBackend(sim.url, timeout=10.0)
        lane = GpuLane.start(config, backend=backend)
        try:
            with GatewayServer(create_app(lane, settings, upstream=sim.url)) as server:
                yield Running(lane, server)
        finally:
            lane.stop()
            backend.close()


def client(stack: Running) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers=bearer(ALICE), timeout=10.0)


def labels_of(http: httpx.Client, job_id: str) -> list[str]:
    """The labels ``GET /jobs/{id}`` shows (none: the spec leaves the key out)."""
    shown = http.get(f"/jobs/{job_id}")
    assert shown.status_code == 200, shown.text
    labels: list[str] = shown.json()["spec"].get("labels", [])
    return labels


def test_the_labels_header_reaches_the_job_on_the_ollama_and_openai_routes(
    stack: Running,
) -> None:
    with client(stack) as http:
        generated = http.post(
            "/api/generate",
            json={"model": "tiny", "prompt": "hi", "stream": False},
            headers={HEADER: "gpu:a100, fast,gpu:a100"},
        )
        assert generated.status_code == 200, generated.text
        (job,) = stack.lane.list(limit=10)
        assert labels_of(http, job.id) == ["fast", "gpu:a100"]  # sorted, once each
        chatted = http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": HELLO},
            headers={HEADER: "fast"},
        )
        assert chatted.status_code == 200, chatted.text
        newest = stack.lane.list(limit=1)[0]
        assert newest.id != job.id and labels_of(http, newest.id) == ["fast"]
        plain = http.post("/api/chat", json={"model": "tiny", "messages": HELLO, "stream": False})
        assert plain.status_code == 200 and labels_of(http, stack.lane.list(limit=1)[0].id) == []


def test_post_jobs_takes_labels_as_a_list(stack: Running) -> None:
    with client(stack) as http:
        body = {"model": "tiny", "messages": HELLO, "labels": ["gpu:a100"]}
        submitted = http.post("/jobs", json=body)
        assert submitted.status_code == 202, submitted.text
        assert labels_of(http, submitted.json()["id"]) == ["gpu:a100"]


def test_a_bad_label_is_a_400_naming_the_header_or_the_field(stack: Running) -> None:
    with client(stack) as http:
        for header in ("gpu a100", "fast,,gpu:a100", "x" * 65):
            bad = http.post(
                "/api/chat",
                json={"model": "tiny", "messages": HELLO, "stream": False},
                headers={HEADER: header},
            )
            assert bad.status_code == 400 and bad.json()["field"] == "x-gpulane-labels", header
            assert "A-Z a-z 0-9 _ . : = -" in bad.json()["allowed"]
        bad_field = http.post("/jobs", json={"model": "tiny", "messages": HELLO, "labels": ["a b"]})
        assert bad_field.status_code == 400 and bad_field.json()["field"] == "labels"
        # A well-formed label no backend carries: refused at submit, naming labels.
        unknown = http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": HELLO},
            headers={HEADER: "gpu:h100"},
        )
        error = unknown.json()["error"]  # OpenAI's shape: the field is its param
        assert unknown.status_code == 400 and error["param"] == "labels"
        assert error["allowed"] == ["local: [gpu:a100, fast]"]  # as the config lists them
    assert not stack.lane.list(limit=10)
