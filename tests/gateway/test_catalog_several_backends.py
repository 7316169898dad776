"""The gateway's catalog and model routes in front of several backends (issue 17): three
simulated Ollama servers on loopback with different catalogs, each a backend by name.

``/api/tags`` and ``/v1/models`` are the union over the servers that answer (the first
backend's entry wins a name two servers share); ``/api/show`` and ``/v1/models/{id}``
come from the first server in config order that has the model; ``/api/ps`` lists every
server's loaded models once each (the latest expiry); ``/api/version`` is the first
server's that answers; model management names its backend in ``X-Gpulane-Backend``.

Followed from ollama/ollama ``server/routes.go`` (fb30760): ``ShowHandler`` answers a
model it does not have with 404 ``{"error": "model '<name>' not found"}`` (the
simulated server words it as ``GetModel`` does, ``model "<name>" not found, try pulling
it first``; the gateway passes the server's own 404 through); ``PsHandler`` lists the
longest time left first; ``ListHandler`` answers ``{"models": [...]}``, each with
``name`` and ``model``. The official ``ollama`` and ``openai`` clients drive the routes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from fake_openai import FakeOpenAI
from gateway_kit import ADMIN, ALICE, KEYS, Running, bearer
from profiles import TINY
from serve_process import ServeProcess
from simulated_process import SimulatedProcess

from actors import Config, GpuLane
from actors.backends.simulated import SimulatedOllama
from actors.backends.simulated._wire import VERSION
from actors.config import GatewaySettings
from actors.gateway import GatewayServer, create_app
from actors.gateway.core import Upstream
from actors.runtime import SystemClock
from actors.testing import FakeGpu, wait_until
from protocol import JobSpec, StoreSettings

BIG_TINY = dataclasses.replace(TINY, size_bytes=2_000_000)  # b's tiny: not a's
CATALOGS = {
    "a": {"tiny": TINY, "alpha": TINY},
    "b": {"tiny": BIG_TINY, "beta": TINY},
    "c": {"gamma": TINY},
}
HEADER = "X-Gpulane-Backend"


@dataclasses.dataclass
class Hosts(Running):
    """A gateway (its lane on a FakeGpu) in front of the simulated servers, by backend."""

    sims: dict[str, SimulatedOllama]

    def ollama(self, key: str = ALICE, backend: str | None = None) -> ollama.Client:
        headers = bearer(key) | ({HEADER: backend} if backend else {})
        return ollama.Client(host=self.url, headers=headers)


def load(sim: SimulatedOllama, model: str, keep_alive: str) -> None:
    """Load ``model`` on ``sim`` as Ollama's idiom does: an empty generate."""
    answer = httpx.post(
        f"{sim.url}/api/generate",
        json={"model": model, "keep_alive": keep_alive, "stream": False},
        timeout=10.0,
    )
    assert answer.status_code == 200 and answer.json()["done_reason"] == "load"


def start_hosts(tmp_path: Path, stack: ExitStack, *extra: Upstream) -> Hosts:
    sims = {
        name: stack.enter_context(SimulatedOllama(models, max_loaded_models=2))
        for name, models in CATALOGS.items()
    }
    upstreams = [Upstream(name, "simulated", sim.url) for name, sim in sims.items()]
    settings = GatewaySettings(api_keys=KEYS)
    store = StoreSettings(path=str(tmp_path / "jobs.sqlite3"), synchronous="NORMAL")
    gpu = FakeGpu(SystemClock())
    lane = GpuLane.start(Config(store=store, gateway=settings), gpu=gpu, clock=gpu.clock)
    stack.callback(lane.stop)
    app = create_app(lane, settings, upstreams=[*upstreams, *extra])
    server = stack.enter_context(GatewayServer(app))
    return Hosts(lane, server, sims)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    with ExitStack() as stack:
        yield start_hosts(tmp_path, stack)


def names(listed: ollama.ListResponse | ollama.ProcessResponse) -> list[str | None]:
    return [m.model for m in listed.models]


# --- the union: /api/tags and /v1/models ---------------------------------------------------------


def test_the_official_client_lists_the_union_of_every_hosts_catalog(hosts: Hosts) -> None:
    listed = hosts.ollama().list()
    assert names(listed) == ["tiny:latest", "alpha:latest", "beta:latest", "gamma:latest"]
    assert listed.models[0].size == TINY.size_bytes, "the first backend's entry wins"


def test_the_openai_client_lists_the_union_once_per_model(hosts: Hosts) -> None:
    client = openai.OpenAI(base_url=f"{hosts.url}/v1", api_key=ALICE, max_retries=0)
    assert [m.id for m in client.models.list().data] == [
        "tiny:latest", "alpha:latest", "beta:latest", "gamma:latest"
    ]  # fmt: skip


def test_with_one_host_down_tags_lists_the_others(hosts: Hosts) -> None:
    hosts.sims["b"].refuse_connections()
    assert names(hosts.ollama().list()) == ["tiny:latest", "alpha:latest", "gamma:latest"]
    with hosts.client() as http:
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [
            "tiny:latest", "alpha:latest", "gamma:latest"
        ]  # fmt: skip


def test_with_every_host_down_tags_is_the_502_one_down_server_gives(hosts: Hosts) -> None:
    for sim in hosts.sims.values():
        sim.refuse_connections()
    with hosts.client() as http:
        tags, models = http.get("/api/tags"), http.get("/v1/models")
    assert tags.status_code == 502 and "backend 'a' did not answer /api/tags" in tags.text
    assert models.status_code == 502


# --- one model's details: /api/show and /v1/models/{id} ------------------------------------------


def test_show_finds_the_one_host_that_has_a_model(hosts: Hosts) -> None:
    client = hosts.ollama()
    gamma = client.show("gamma")
    assert gamma.capabilities and "completion" in gamma.capabilities
    assert gamma.modelinfo is not None and gamma.modelinfo["general.architecture"] == "llama"
    assert client.show("beta").details is not None
    assert hosts.sims["c"].models.keys() == {"gamma:latest"}


def test_show_of_a_model_no_host_has_is_the_servers_404(hosts: Hosts) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        hosts.ollama().show("nowhere")
    assert caught.value.status_code == 404
    assert caught.value.error == 'model "nowhere" not found, try pulling it first'


def test_show_skips_a_host_that_is_down(hosts: Hosts) -> None:
    hosts.sims["a"].refuse_connections()
    assert hosts.ollama().show("tiny").details is not None  # b has it too
    with pytest.raises(ollama.ResponseError) as caught:
        hosts.ollama().show("alpha")  # only a has it: the others say 404
    assert caught.value.status_code == 404


def test_the_openai_client_retrieves_a_model_from_the_host_that_has_it(hosts: Hosts) -> None:
    client = openai.OpenAI(base_url=f"{hosts.url}/v1", api_key=ALICE, max_retries=0)
    assert client.models.retrieve("gamma").id == "gamma"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nowhere")


# --- loaded models and the version ---------------------------------------------------------------


def test_ps_lists_a_model_loaded_on_one_host(hosts: Hosts) -> None:
    assert names(hosts.ollama().ps()) == []
    load(hosts.sims["b"], "beta", "10m")
    assert names(hosts.ollama().ps()) == ["beta:latest"]


def test_ps_lists_a_model_loaded_on_two_hosts_once_with_the_latest_expiry(hosts: Hosts) -> None:
    load(hosts.sims["b"], "beta", "10m")
    load(hosts.sims["a"], "tiny", "1m")
    load(hosts.sims["b"], "tiny", "1h")
    running = hosts.ollama().ps().models
    assert [m.model for m in running] == ["tiny:latest", "beta:latest"], "longest left first"
    assert running[0].size == BIG_TINY.size_bytes, "b's tiny stays loaded longer than a's"


def test_version_is_the_first_host_that_answers(hosts: Hosts) -> None:
    hosts.sims["a"].refuse_connections()
    with hosts.client() as http:
        assert http.get("/api/version").json() == {"version": VERSION, "gpulane": "0.1.0"}
        for sim in hosts.sims.values():
            sim.refuse_connections()
        assert http.get("/api/version").status_code == 502


# --- model management names its backend ----------------------------------------------------------


def test_a_pull_without_the_backend_header_is_a_400_naming_it_and_the_backends(
    hosts: Hosts,
) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        hosts.ollama(ADMIN).pull("llama3.2")
    assert caught.value.status_code == 400 and HEADER in caught.value.error
    with hosts.client(ADMIN) as http:
        body = http.post("/api/pull", json={"model": "llama3.2"}).json()
    assert body["field"] == HEADER and body["allowed"] == ["a", "b", "c"]
    assert all("llama3.2:latest" not in sim.models for sim in hosts.sims.values())


def test_a_pull_naming_a_backend_lands_on_that_host_only(hosts: Hosts) -> None:
    progress = list(hosts.ollama(ADMIN, backend="c").pull("llama3.2", stream=True))
    assert progress[-1].status == "success"
    assert [name for name, sim in hosts.sims.items() if "llama3.2:latest" in sim.models] == ["c"]
    assert "llama3.2:latest" in names(hosts.ollama().list())


def test_copy_and_delete_change_only_the_named_host(hosts: Hosts) -> None:
    admin_b = hosts.ollama(ADMIN, backend="b")
    assert admin_b.copy("beta", "mine").status == "success"
    assert "mine:latest" in hosts.sims["b"].models and "mine:latest" not in hosts.sims["a"].models
    assert admin_b.delete("mine").status == "success"
    assert "mine:latest" not in hosts.sims["b"].models


def test_a_backend_name_the_gateway_does_not_have_is_a_400_listing_the_names(
    hosts: Hosts,
) -> None:
    with hosts.client(ADMIN) as http:
        response = http.post("/api/pull", json={"model": "tiny"}, headers={HEADER: "z"})
    body = response.json()
    assert response.status_code == 400 and body["field"] == HEADER and "'z'" in body["error"]
    assert body["allowed"] == ["a", "b", "c"]


def test_the_header_does_not_open_model_management_to_a_key_without_admin(
    hosts: Hosts,
) -> None:
    with hosts.client(ALICE) as http:
        response = http.post("/api/pull", json={"model": "tiny"}, headers={HEADER: "a"})
    assert response.status_code == 403 and response.json()["field"] == "authorization"


# --- an OpenAI-compatible backend beside the Ollama ones -------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[Hosts]:
    with ExitStack() as stack:
        fake = stack.enter_context(FakeOpenAI(("delta", "tiny")))
        yield start_hosts(tmp_path, stack, Upstream("d", "openai", fake.url))


def test_an_openai_compatible_backend_joins_the_union_in_ollamas_terms(mixed: Hosts) -> None:
    client = mixed.ollama()
    listed = client.list()
    assert names(listed) == [
        "tiny:latest", "alpha:latest", "beta:latest", "gamma:latest", "delta"
    ]  # fmt: skip
    assert listed.models[-1].digest is not None and len(listed.models[-1].digest) == 64
    assert client.show("delta").capabilities == ["completion"]
    assert names(client.ps()) == ["delta", "tiny"], "such a server keeps its models loaded"


def test_model_management_on_an_openai_backend_is_a_501_naming_its_kind(mixed: Hosts) -> None:
    with mixed.client(ADMIN) as http:
        response = http.post("/api/pull", json={"model": "tiny"}, headers={HEADER: "d"})
    assert response.status_code == 501 and response.json()["field"] == "backends.d.kind"


# --- gpulane serve with [[backends]], each host a process of its own ---------------------------

PROFILE = '{"load_seconds": 0.01, "first_token_seconds": 0.0, "tokens_per_second": 2000}'


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServeProcess, dict[str, SimulatedProcess]]]:
    processes = {
        name: SimulatedProcess.with_profiles([f"{model}={PROFILE}" for model in models])
        for name, models in CATALOGS.items()
    }
    config = tmp_path / "gpulane.toml"
    try:
        backends = "".join(
            f'[[backends]]\nname = "{name}"\nkind = "ollama"\nurl = "{process.start()}"\n'
            for name, process in processes.items()
        )
        config.write_text(f'[store]\npath = "{tmp_path / "jobs.sqlite3"}"\n{backends}')
        with ServeProcess(config) as serve:
            yield serve, processes
    finally:
        for process in processes.values():
            if process.running:
                process.kill()


def test_gpulane_serve_answers_the_catalog_of_every_backend_it_was_configured_with(
    served: tuple[ServeProcess, dict[str, SimulatedProcess]],
) -> None:
    serve, processes = served
    client = ollama.Client(host=serve.url)  # an open gateway on loopback: the CLI's way
    assert names(client.list()) == ["tiny:latest", "alpha:latest", "beta:latest", "gamma:latest"]
    assert client.show("gamma").details is not None
    admin_c = ollama.Client(host=serve.url, headers={HEADER: "c"})
    assert admin_c.pull("llama3.2").status == "success"
    have = {
        name: [m["name"] for m in httpx.get(f"{p.url}/api/tags", timeout=5).json()["models"]]
        for name, p in processes.items()
    }
    assert [name for name, models in have.items() if "llama3.2:latest" in models] == ["c"]


def test_a_model_pulled_through_the_gateway_joins_its_backends_catalog_at_once(
    tmp_path: Path,
) -> None:
    """The lane drives the servers here (not a FakeGpu): after the pull, b's tracker reads
    its catalog again at once (the interval is an hour), so a job for the new model goes
    to b, the one server that has it, instead of to any (where a would answer 404)."""
    with ExitStack() as stack:
        sims = {
            name: stack.enter_context(SimulatedOllama({model: TINY}, speed=50.0))
            for name, model in (("a", "alpha"), ("b", "beta"))
        }
        config = Config.from_mapping(
            {
                "store": {"path": str(tmp_path / "jobs.sqlite3")},
                "backends": [
                    {"name": name, "kind": "ollama", "url": sim.url} for name, sim in sims.items()
                ],
                "residency": {"catalog_interval_s": 3600.0},
            }
        )
        lane = GpuLane.start(config)
        stack.callback(lane.stop)
        upstreams = [Upstream(name, "ollama", sim.url) for name, sim in sims.items()]
        app = create_app(lane, GatewaySettings(api_keys=KEYS), upstreams=upstreams)
        server = stack.enter_context(GatewayServer(app))
        hosts = Hosts(lane, server, sims)

        def catalog(backend: str) -> tuple[str, ...]:
            return tuple(lane.status()["backends"][backend]["catalog"] or ())

        wait_until(lambda: catalog("a") == ("alpha",) and catalog("b") == ("beta",))
        progress = list(hosts.ollama(ADMIN, backend="b").pull("llama3.2", stream=True))
        assert progress[-1].status == "success"
        wait_until(lambda: "llama3.2" in catalog("b"), timeout=5.0)
        assert catalog("a") == ("alpha",)
        ticket = lane.submit(JobSpec.generate(model="llama3.2", prompt="hi"))
        assert ticket.result(timeout=30)
        assert lane.get(ticket.job_id).backend == "b"
