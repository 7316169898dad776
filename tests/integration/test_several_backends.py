"""Several backends behind one lane (#17): the wiring. A lane with three ``[[backends]]``
has a tracker per backend and slots named per backend, each slot reporting to its own
backend's tracker; ``status()`` shows each backend and totals over them; a reload
reaches every tracker and refuses a change to a backend by name; a request field is
refused unless every backend carries it; an embedding goes to a backend whose catalog
has the model. First on the fake GPU with configured catalogs, then on three simulated
Ollama servers on loopback whose catalogs are read from ``/api/tags``. Where a job is
placed is the lead's to test (tests/unit/test_placement.py); here the jobs complete on
a backend that has their model, and say where they ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from conftest import StartLane
from profiles import EMBEDDER, TINY

from actors import Config, GpuLane
from actors.backends.base import BASIC_FEATURES
from actors.backends.simulated import SimulatedOllama
from actors.config import BackendSettings, ReloadRefusedError
from actors.embedding import EmbeddingExecutor
from actors.lane_hosts import Host, LaneHosts, embed_host
from actors.testing import FakeBackend, FakeGpu, ManualClock, quiesce, wait_until
from protocol import (
    BackendRequest,
    JobSpec,
    JobState,
    ResidencySettings,
    StoreSettings,
    ValidationError,
)
from protocol.messages import ResidencySnapshot

HI = [{"role": "user", "content": "Which host has my model?"}]
THREE = (
    BackendSettings(name="a100", slots=2, models=("llama3.3:70b", "llama3.2:latest")),
    BackendSettings(name="rtx", models=("llama3.2", "qwen2.5:7b"), labels=("consumer",)),
    BackendSettings(name="mac", models=("phi4",)),
)
SLOTS = ("a100.gpu0", "a100.gpu1", "rtx.gpu0", "mac.gpu0")


def chat(model: str) -> JobSpec:
    return JobSpec.chat(model=model, messages=HI)


def test_three_backends_on_the_fake_gpu_give_a_tracker_each_and_slots_named_per_backend(
    start_lane: StartLane,
) -> None:
    lane = start_lane(backends=THREE)
    status = lane.status()
    assert tuple(status["slots"]) == SLOTS
    assert {slot: s["backend"] for slot, s in status["slots"].items()} == {
        "a100.gpu0": "a100", "a100.gpu1": "a100", "rtx.gpu0": "rtx", "mac.gpu0": "mac",
    }  # fmt: skip
    backends = status["backends"]
    assert tuple(backends) == ("a100", "rtx", "mac")
    assert backends["a100"]["slots"] == ("a100.gpu0", "a100.gpu1")
    assert backends["rtx"]["labels"] == ("consumer",)
    assert backends["a100"]["catalog"] == ("llama3.2", "llama3.3:70b"), "normalised, sorted"
    assert all(b["state"] == "up" and b["kind"] == "ollama" for b in backends.values())
    assert set(status["health"]) == {"a100", "rtx", "mac"}
    assert set(status["residency"]["backends"]) == {"a100", "rtx", "mac"}
    assert status["swaps"]["swaps"] == 0
    children = status["supervision"]["children"]
    for child in ("residency.a100", "residency.rtx", "residency.mac", *SLOTS):
        assert children[child]["state"] == "running"
    assert "residency" not in children and "gpu0" not in children


def test_a_job_runs_on_a_slot_of_a_backend_with_its_model_and_says_where(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(backends=THREE)
    ticket = lane.submit(chat("phi4"))
    call = fake_gpu.next_call().emit("m")  # output: the model is loaded
    quiesce()
    running = [slot for slot, s in lane.status()["slots"].items() if s["job_id"] == ticket.job_id]
    assert running == ["mac.gpu0"], "only mac lists phi4"
    mac = lane.ref_for("residency.mac").ask(ResidencySnapshot(), timeout=5)
    assert mac["slots"] == {"mac.gpu0": "phi4"}, "the slot told its own backend's tracker"
    for other in ("residency.a100", "residency.rtx"):
        assert lane.ref_for(other).ask(ResidencySnapshot(), timeout=5)["slots"] == {}
    call.finish("ac")
    assert ticket.result(timeout=5) == "mac"
    job = lane.get(ticket.job_id)
    assert (job.state, job.backend, job.slot) == (JobState.SUCCEEDED, "mac", "mac.gpu0")
    quiesce()
    status = lane.status()
    assert status["backends"]["mac"]["swaps"]["swaps"] == 1
    assert status["swaps"]["swaps"] == 1 and status["counters"]["swaps"] == 1


def test_a_reload_reaches_every_tracker_and_a_backend_change_is_refused_by_name(
    start_lane: StartLane,
) -> None:
    lane = start_lane(backends=THREE)
    pins = ResidencySettings(chat_model="llama3.2")
    lane.reload_config(lane.config.replace(residency=pins))
    quiesce()
    for name in ("a100", "rtx", "mac"):
        tracked = lane.ref_for(f"residency.{name}").ask(ResidencySnapshot(), timeout=5)
        assert tracked["pinned"] == pins.pinned
    bigger = (THREE[0], BackendSettings(name="rtx", slots=2, models=THREE[1].models), THREE[2])
    with pytest.raises(ReloadRefusedError) as caught:
        lane.reload_config(lane.config.replace(backends=bigger))
    assert caught.value.keys == ("backends.rtx.labels", "backends.rtx.slots")
    with pytest.raises(ReloadRefusedError, match=r"backends\.mac"):
        lane.reload_config(lane.config.replace(backends=THREE[:2]))


def test_one_client_for_several_backends_is_refused_by_name(tmp_path: Path) -> None:
    config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")), backends=THREE)
    with pytest.raises(ValidationError) as caught:
        GpuLane.start(config, backend=FakeBackend(ManualClock()))
    assert caught.value.field == "backend"


class _Basic(FakeBackend):
    """A backend that carries the basic request features only (as one without tools)."""

    name = "basic"
    carries = BASIC_FEATURES


def _host(name: str, client: FakeBackend) -> Host:
    settings = BackendSettings(name=name)
    embedder = EmbeddingExecutor(client, 1, ResidencySettings)
    return Host(settings, client, settings.url, (f"{name}.gpu0",), embedder)


def test_a_field_is_refused_unless_every_backend_carries_it() -> None:
    clock = ManualClock()
    request = BackendRequest.for_spec(JobSpec.chat(model="qwen3", messages=HI, think=True))
    both = LaneHosts((_host("full", FakeBackend(clock)), _host("small", _Basic(clock))), {}, None)
    with pytest.raises(ValidationError) as caught:
        both.refuse_uncarried(request, allow_cloud=False)
    assert caught.value.field == "think" and "basic backend" in str(caught.value)
    LaneHosts((_host("full", FakeBackend(clock)),), {}, None).refuse_uncarried(
        request, allow_cloud=False
    )


def _tracked(
    catalog: tuple[str, ...] | None, *, up: bool = True, resident: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    """The parts of a tracker's snapshot an embedding's choice reads."""
    health = {"state": "up" if up else "down"}
    return MappingProxyType({"catalog": catalog, "resident": resident, "health": {"x": health}})


def test_an_embedding_goes_to_an_up_backend_listing_its_model_preferring_it_resident() -> None:
    listing = ("nomic-embed-text", "llama3.2")
    only_b = {"a": _tracked(("llama3.2",)), "b": _tracked(listing)}
    assert embed_host("nomic-embed-text", only_b) == "b"
    trackers = {
        "a": _tracked(listing, up=False, resident=("nomic-embed-text",)),
        "b": _tracked(listing),
        "c": _tracked(listing, resident=("nomic-embed-text:latest|num_ctx=8192",)),
    }
    assert embed_host("nomic-embed-text:latest", trackers) == "c"
    assert embed_host("unlisted", {"a": _tracked(None), "b": _tracked(listing)}) == "a"
    down = {"a": _tracked(listing, up=False), "b": _tracked(None)}
    assert embed_host("llama3.2", down) == "a", "only a lists it: it waits for a, down or not"


# --- three simulated Ollama servers on loopback -----------------------------------------

CATALOGS = {
    "east": {"east-only": TINY, "shared": TINY},
    "west": {"west-only": TINY, "shared": TINY},
    "north": {"north-only": TINY, "shared": TINY, "embedder": EMBEDDER},
}


@pytest.fixture
def servers() -> Iterator[dict[str, SimulatedOllama]]:
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(SimulatedOllama(models)) for name, models in CATALOGS.items()
        }


@pytest.fixture
def several(tmp_path: Path, servers: dict[str, SimulatedOllama]) -> Iterator[GpuLane]:
    hosts = tuple(
        BackendSettings(name=name, url=server.url, request_timeout_s=10.0)
        for name, server in servers.items()
    )
    config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")), backends=hosts)
    lane = GpuLane.start(config)
    try:
        wait_until(
            lambda: all(b["catalog"] is not None for b in lane.status()["backends"].values()),
            what="every backend's catalog read from /api/tags",
        )
        yield lane
    finally:
        lane.stop()


def test_three_simulated_servers_run_jobs_each_on_a_backend_with_the_model(
    several: GpuLane, servers: dict[str, SimulatedOllama]
) -> None:
    status = several.status()
    assert {name: b["catalog"] for name, b in status["backends"].items()} == {
        name: tuple(sorted(models)) for name, models in CATALOGS.items()
    }
    assert {name: b["url"] for name, b in status["backends"].items()} == {
        name: server.url for name, server in servers.items()
    }
    assert tuple(several.backends) == ("east", "west", "north")
    models = ("east-only", "west-only", "north-only", "shared", "shared", "shared")
    tickets = [(model, several.submit(chat(model))) for model in models]
    for model, ticket in tickets:
        assert ticket.result(timeout=10), model
    ran = {model: several.get(ticket.job_id) for model, ticket in tickets}
    for name in ("east", "west", "north"):
        job = ran[f"{name}-only"]
        assert (job.state, job.backend, job.slot) == (JobState.SUCCEEDED, name, f"{name}.gpu0")
    finished = sum(server.stats().calls_finished for server in servers.values())
    assert finished == len(models)
    assert several.status()["swaps"]["swaps"] >= 3, "each model loaded on its own server"


def test_an_embedding_goes_to_the_one_server_whose_catalog_has_the_model(
    several: GpuLane, servers: dict[str, SimulatedOllama]
) -> None:
    result = several.embed("embedder", ["east", "west"])
    assert len(result.embeddings) == 2
    assert {name: s.stats().embed_requests for name, s in servers.items()} == {
        "east": 0, "west": 0, "north": 1,
    }  # fmt: skip
