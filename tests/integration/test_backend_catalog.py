"""A backend's catalog: the models it can run, as its ResidencyTracker learns and tells it.

One tracker per backend (issue #17, docs/architecture.md section 13): it reads the
catalog with ``Backend.list_models()`` (Ollama's ``/api/tags``, an OpenAI-compatible
``/v1/models``) at start, when the backend comes back up and every
``residency.catalog_interval_s``, unless the configuration names the models, and tells
the arbiter ``CatalogChanged``. The servers are real HTTP on loopback (the simulated
Ollama, the fake OpenAI-compatible server of tests/kits); time is the ManualClock; a
stand-in actor hears what the tracker tells the arbiter.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pykka
import pytest
import structlog
from fake_openai import FakeOpenAI
from profiles import TINY

from actors.backends.anthropic import AnthropicBackend
from actors.backends.base import Backend
from actors.backends.ollama import OllamaBackend
from actors.backends.openai_compat import OpenAICompatBackend
from actors.backends.simulated import FaultKind, SimulatedOllama
from actors.residency import ResidencyTracker
from actors.runtime import Timers
from actors.testing import ManualClock, quiesce
from protocol import LOCAL_BACKEND, BackendError, ResidencySettings, ValidationError
from protocol.messages import (
    ApplyResidency,
    BackendHealthChanged,
    CatalogChanged,
    ModelLoaded,
    ResidencyChanged,
    ResidencySnapshot,
)

# Polls are rare, so each catalog read is the timer's; probes come every second.
SETTINGS = ResidencySettings(
    poll_interval_s=600.0, probe_initial_s=1.0, probe_max_s=1.0, probe_jitter=0.0,
    catalog_interval_s=60.0,
)  # fmt: skip


class _StandIn(pykka.ThreadingActor):
    """Stands in for the arbiter: keeps every message it is told; any ask answers them."""

    def __init__(self) -> None:
        super().__init__()
        self.told: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if dataclasses.is_dataclass(message):
            self.told.append(message)
            return None
        return tuple(self.told)


@dataclasses.dataclass
class Kit:
    """Starts trackers on the manual clock that tell one stand-in arbiter."""

    clock: ManualClock
    timers: Timers
    arbiter: pykka.ActorRef[Any]
    started: list[pykka.ActorRef[Any]] = dataclasses.field(default_factory=list)

    def tracker(
        self, backend: Backend | None, settings: ResidencySettings = SETTINGS, **given: Any
    ) -> pykka.ActorRef[Any]:
        """A started tracker (``given``: its ``name`` and ``catalog``), quiet again."""
        ref = ResidencyTracker.start(
            settings=settings, clock=self.clock, timers=self.timers, backend=backend,
            arbiter=self.arbiter, rng=random.Random(0), **given,
        )  # fmt: skip
        self.started.append(ref)
        quiesce()
        return ref

    def told(self, kind: type[Any]) -> list[Any]:
        """What the arbiter has been told of ``kind``, in order (once it has arrived)."""
        quiesce()
        return [m for m in self.arbiter.ask("told") if isinstance(m, kind)]

    def advance(self, seconds: float) -> None:
        """Move the clock once every message told so far is handled, then let all settle."""
        quiesce()
        self.clock.advance(seconds)
        quiesce()


@pytest.fixture
def kit(manual_clock: ManualClock) -> Iterator[Kit]:
    timers = Timers(manual_clock).start()
    arbiter = _StandIn.start()
    made = Kit(manual_clock, timers, arbiter)
    yield made
    for ref in made.started:
        ref.stop()
    arbiter.stop()
    timers.stop()


@pytest.fixture
def sim(manual_clock: ManualClock) -> Iterator[SimulatedOllama]:
    with SimulatedOllama({"tiny": TINY, "coder:7b": TINY}, clock=manual_clock) as server:
        yield server


@pytest.fixture
def ollama(sim: SimulatedOllama) -> Iterator[OllamaBackend]:
    backend = OllamaBackend(sim.url, timeout=5.0)
    yield backend
    backend.close()


def snapshot(tracker: pykka.ActorRef[Any]) -> Any:
    return tracker.ask(ResidencySnapshot())


def pull(sim: SimulatedOllama, model: str) -> None:
    """Pull ``model`` on the server as a client would (``POST /api/pull``, not streamed)."""
    answer = httpx.post(f"{sim.url}/api/pull", json={"model": model, "stream": False})
    assert answer.json() == {"status": "success"}


def catalog(*models: str, backend: str = LOCAL_BACKEND) -> CatalogChanged:
    return CatalogChanged(backend, frozenset(models))


def test_ollama_s_catalog_is_the_names_api_tags_lists(ollama: OllamaBackend) -> None:
    # server/routes.go ListHandler answers api.ListResponse{Models} (api/types.go), each
    # entry with its name in Ollama's name:tag spelling.
    assert sorted(ollama.list_models()) == ["coder:7b", "tiny:latest"]


def test_the_catalog_is_read_at_start_and_told_to_the_arbiter_normalised(
    kit: Kit, ollama: OllamaBackend
) -> None:
    tracker = kit.tracker(ollama)
    assert kit.told(CatalogChanged) == [catalog("coder:7b", "tiny")]
    picture = snapshot(tracker)
    assert (picture["backend"], picture["catalog"]) == (LOCAL_BACKEND, ("coder:7b", "tiny"))
    assert picture["counters"]["catalog_reads"] == 1


def test_a_model_pulled_on_the_server_joins_the_catalog_after_catalog_interval_s(
    kit: Kit, sim: SimulatedOllama, ollama: OllamaBackend
) -> None:
    tracker = kit.tracker(ollama)
    pull(sim, "mistral")
    kit.advance(59.0)
    assert kit.told(CatalogChanged) == [catalog("coder:7b", "tiny")]
    kit.advance(1.0)
    assert kit.told(CatalogChanged)[1:] == [catalog("coder:7b", "mistral", "tiny")]
    kit.advance(60.0)  # read again, unchanged: nothing more is told
    assert len(kit.told(CatalogChanged)) == 2
    assert snapshot(tracker)["counters"]["catalog_reads"] == 3


def test_a_new_catalog_interval_counts_from_the_reload(
    kit: Kit, sim: SimulatedOllama, ollama: OllamaBackend
) -> None:
    tracker = kit.tracker(ollama)
    pull(sim, "mistral")
    tracker.tell(ApplyResidency(dataclasses.replace(SETTINGS, catalog_interval_s=5.0)))
    kit.advance(5.0)
    assert kit.told(CatalogChanged)[-1] == catalog("coder:7b", "mistral", "tiny")


def test_a_configured_catalog_is_told_at_every_start_and_the_server_never_asked(
    kit: Kit, sim: SimulatedOllama, ollama: OllamaBackend
) -> None:
    sim.inject(FaultKind.SERVER_ERROR, path="/api/tags")  # would fail the first read
    first = kit.tracker(ollama, catalog=("llama3.2:latest", "phi3"))
    kit.advance(180.0)
    first.stop()
    kit.tracker(ollama, catalog=("llama3.2:latest", "phi3"))  # a restarted tracker
    assert kit.told(CatalogChanged) == [catalog("llama3.2", "phi3")] * 2
    assert [(f.path, f.times) for f in sim.faults] == [("/api/tags", 1)]  # never asked
    assert snapshot(kit.started[-1])["catalog"] == ("llama3.2", "phi3")


def test_the_catalog_is_kept_while_the_server_is_down_and_read_again_when_it_is_back(
    kit: Kit, sim: SimulatedOllama, ollama: OllamaBackend
) -> None:
    tracker = kit.tracker(ollama)
    pull(sim, "mistral")
    sim.refuse_connections()
    kit.advance(60.0)  # the read fails as an outage: the backend is down, its catalog kept
    health = kit.told(BackendHealthChanged)
    assert [h.up for h in health] == [True, False]
    picture = snapshot(tracker)
    assert picture["catalog"] == ("coder:7b", "tiny")
    assert picture["counters"]["catalog_failures"] == 1
    kit.advance(60.0)  # the catalog's timer does not read while the server is down
    assert snapshot(tracker)["counters"]["catalog_failures"] == 1
    sim.accept_connections()
    kit.advance(1.0)  # the next probe finds it up, and the catalog is read at once
    assert [h.up for h in kit.told(BackendHealthChanged)] == [True, False, True]
    assert kit.told(CatalogChanged) == [
        catalog("coder:7b", "tiny"),
        catalog("coder:7b", "mistral", "tiny"),
    ]


def test_a_failed_read_that_is_no_outage_keeps_the_catalog_and_the_backend_up(
    kit: Kit, sim: SimulatedOllama, ollama: OllamaBackend
) -> None:
    tracker = kit.tracker(ollama)
    sim.inject(FaultKind.SERVER_ERROR, path="/api/tags")
    with structlog.testing.capture_logs() as logs:
        kit.advance(60.0)
    picture = snapshot(tracker)
    assert picture["catalog"] == ("coder:7b", "tiny")
    assert picture["counters"]["catalog_failures"] == 1
    assert picture["health"][LOCAL_BACKEND]["state"] == "up"
    failed = [line for line in logs if line["event"] == "catalog_read_failed"]
    assert [(f["log_level"], f["backend"], f["outage"]) for f in failed] == [
        ("warning", LOCAL_BACKEND, False)
    ]
    kit.advance(60.0)  # and the next read, on time, succeeds
    assert snapshot(tracker)["counters"]["catalog_reads"] == 2


def test_a_tracker_names_its_backend_in_all_it_tells_shows_and_logs(
    kit: Kit, ollama: OllamaBackend
) -> None:
    with structlog.testing.capture_logs() as logs:
        tracker = kit.tracker(ollama, name="a100")
        assert any(t.name == "gpulane-residency.a100" for t in threading.enumerate())
        tracker.tell(ModelLoaded("a100.gpu0", "tiny"))
        assert kit.told(ResidencyChanged)[-1] == ResidencyChanged(frozenset({"tiny"}), "a100")
    assert [h.backend for h in kit.told(BackendHealthChanged)] == ["a100"]
    assert kit.told(CatalogChanged) == [catalog("coder:7b", "tiny", backend="a100")]
    picture = snapshot(tracker)
    assert picture["backend"] == "a100" and set(picture["health"]) == {"a100"}
    changed = [line for line in logs if line["event"] == "catalog_changed"]
    assert [line["backend"] for line in changed] == ["a100"]


def test_with_no_backend_only_a_configured_catalog_is_told(kit: Kit) -> None:
    blind = kit.tracker(None, name="fake")
    kit.tracker(None, name="listed", catalog=("tiny:latest",))
    kit.advance(120.0)
    assert kit.told(CatalogChanged) == [catalog("tiny", backend="listed")]
    assert snapshot(blind)["catalog"] is None


def test_an_openai_compatible_catalog_is_the_ids_v1_models_lists(kit: Kit) -> None:
    # openai-python's types/model.py: GET /v1/models answers {"data": [{"id", ...}]}.
    with FakeOpenAI(models=("qwen2.5-7b-instruct", "smollm2")) as fake:
        backend = OpenAICompatBackend(fake.url, timeout=5.0)
        try:
            assert backend.list_models() == ("qwen2.5-7b-instruct", "smollm2")
            kit.tracker(backend, name="vllm")
            expected = catalog("qwen2.5-7b-instruct", "smollm2", backend="vllm")
            assert kit.told(CatalogChanged) == [expected]
            fake.refuse_connections()
            with pytest.raises(BackendError) as refused:
                backend.list_models()
        finally:
            backend.close()
    assert refused.value.outage


def test_an_unreachable_ollama_s_catalog_read_is_an_outage(
    sim: SimulatedOllama, ollama: OllamaBackend
) -> None:
    sim.refuse_connections()
    with pytest.raises(BackendError) as refused:
        ollama.list_models()
    assert refused.value.outage and "cannot connect" in refused.value.message


def test_the_anthropic_backend_has_no_catalog_and_says_why() -> None:
    cloud = AnthropicBackend("sk-ant-test", model="claude-test", base_url="http://127.0.0.1:9")
    try:
        with pytest.raises(BackendError) as refused:
            cloud.list_models()
    finally:
        cloud.close()
    assert (refused.value.transient, refused.value.outage) == (False, False)
    assert "'claude-test'" in refused.value.message


def test_catalog_interval_s_must_be_more_than_0() -> None:
    with pytest.raises(ValidationError) as bad:
        ResidencySettings(catalog_interval_s=0.0)
    assert (bad.value.field, bad.value.problem) == (
        "residency.catalog_interval_s",
        "must be more than 0",
    )


def test_a_backend_pins_only_the_pinned_models_its_catalog_lists_and_one_pulled_later(
    kit: Kit, manual_clock: ManualClock
) -> None:
    """With several backends each has its own catalog: the pins go where the model is, and
    a backend without it is not asked to load it at every poll (a 404 each time)."""
    instant = dataclasses.replace(TINY, load_seconds=0.0)
    registry = {"tiny": instant, "mistral": instant}  # what /api/pull can fetch
    with SimulatedOllama(
        {"tiny": instant}, clock=manual_clock, registry=registry, max_loaded_models=2
    ) as server:
        backend = OllamaBackend(server.url, timeout=5.0)
        pins = dataclasses.replace(SETTINGS, chat_model="tiny", embedding_model="mistral")
        tracker = kit.tracker(backend, pins)
        picture = snapshot(tracker)
        assert picture["resident"] == ("tiny",)
        assert (picture["counters"]["pins"], picture["counters"]["pin_failures"]) == (1, 0)
        pull(server, "mistral")
        kit.advance(60.0)  # the catalog read finds it: now it is pinned here too
        picture = snapshot(tracker)
        tracker.stop()
        backend.close()
    assert picture["resident"] == ("mistral", "tiny")
    assert (picture["counters"]["pins"], picture["counters"]["pin_failures"]) == (2, 0)
