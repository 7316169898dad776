"""Pinning the embedding model the way Ollama loads one, and embeddings that keep the pin.

What was followed (ollama/ollama at fb30760, server/routes.go):

- EmbedHandler loads the model through ``scheduleRunner`` with no capability asked for
  and the request's keep_alive, then answers an empty ``input`` (``""``, ``[]`` or none)
  with ``{"model", "embeddings": []}`` at once (``if len(input) == 0``); an input that is
  neither a string nor a list of strings is its 400 ``invalid input type``.
- GenerateHandler (ChatHandler alike) unloads on an empty request with keep_alive 0
  before it checks capabilities, so any model unloads that way; otherwise it asks
  ``scheduleRunner`` for the completion capability, which an embedding-only model lacks:
  400 ``"<model>" does not support generate``, even for the empty request that would load
  it. So an embedding model is loaded (pinned) with an empty embed, never an empty
  generate.
- server/sched.go useLoadedRunner sets a runner's duration from any request that carries
  keep_alive (since 955f2a4e0, v0.1.49, one that omits it leaves it alone), so every
  embedding for a pinned model carries the pin's keep_alive: no embed shortens the pin,
  and one that loads the model again after a restart pins it again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from backend_kit import Sent, Wire, json_answer, on_wire
from profiles import EMBEDDER, TINY
from simulated_kit import post, ps

from actors import Config, GpuLane, SystemClock
from actors.backends.anthropic import AnthropicBackend
from actors.backends.base import CancelToken
from actors.backends.ollama import OllamaBackend
from actors.backends.openai_compat import OpenAICompatBackend
from actors.backends.simulated import SimulatedOllama
from actors.embedding import EmbeddingExecutor
from actors.testing import FakeBackend, FakeGpu, ManualClock
from protocol import BackendError, ResidencySettings, StoreSettings

NOT_GENERATE = '"embedder" does not support generate'
URL = "http://model-server.test"
PINNED = ResidencySettings(chat_model="tiny", embedding_model="embedder", pin_keep_alive_s=-1.0)


@pytest.fixture
def server() -> Iterator[SimulatedOllama]:
    with SimulatedOllama({"tiny": TINY, "embedder": EMBEDDER}, max_loaded_models=2) as sim:
        yield sim


@pytest.fixture
def http(server: SimulatedOllama) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        yield client


@pytest.fixture
def backend(server: SimulatedOllama) -> Iterator[OllamaBackend]:
    client = OllamaBackend(server.url, timeout=5.0)
    yield client
    client.close()


# --------------------------------------------------- the simulator, as Ollama


def test_an_embedding_model_refuses_the_empty_generate_that_would_load_it(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    for path, body, kind in (
        ("/api/generate", {"model": "embedder"}, "generate"),
        ("/api/chat", {"model": "embedder", "keep_alive": -1}, "chat"),
    ):
        reply = http.post(path, json=body)
        refusal = {"error": f'"embedder" does not support {kind}'}
        assert (reply.status_code, reply.json()) == (400, refusal)
    assert server.stats().loaded == ()


@pytest.mark.parametrize(
    "empty",
    [{"input": []}, {"input": ""}, {}, {"input": None}],
    ids=["list", "string", "none", "null"],
)
def test_an_empty_embed_loads_the_model_with_its_keep_alive_and_answers_no_embeddings(
    http: httpx.Client, server: SimulatedOllama, empty: dict[str, Any]
) -> None:
    reply = post(http, "/api/embed", {"model": "embedder", "keep_alive": -1, **empty})
    assert reply == {"model": "embedder", "embeddings": []}
    (loaded,) = ps(http)
    assert loaded["name"] == "embedder:latest"
    assert int(loaded["expires_at"][:4]) > 2300  # Ollama's "forever": now + Go's max Duration
    assert server.stats().embed_requests == 1


def test_an_empty_request_with_keep_alive_0_unloads_even_an_embedding_model(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    post(http, "/api/embed", {"model": "embedder", "input": []})
    reply = post(http, "/api/generate", {"model": "embedder", "keep_alive": 0})
    assert (reply["done"], reply["done_reason"]) == (True, "unload")
    server.wait_for(lambda stats: stats.loaded == ())


def test_an_embed_input_that_is_not_strings_is_ollama_s_400(http: httpx.Client) -> None:
    for bad in ([1, 2], {"text": "a"}, ["a", None]):
        reply = http.post("/api/embed", json={"model": "embedder", "input": bad})
        assert (reply.status_code, reply.json()) == (400, {"error": "invalid input type"})


def test_the_official_client_reads_an_empty_embed_answer(server: SimulatedOllama) -> None:
    answer = ollama.Client(host=server.url).embed(model="embedder", input=[], keep_alive="10m")
    assert (answer.model, list(answer.embeddings)) == ("embedder", [])
    assert server.stats().loaded == ("embedder:latest",)


# ----------------------------------------------------------------- the backends


def test_the_ollama_backend_pins_an_embedding_model_with_an_empty_embed(
    backend: OllamaBackend, server: SimulatedOllama
) -> None:
    with pytest.raises(BackendError) as refused:
        backend.load("embedder", keep_alive=-1)  # the generate idiom: what failed every poll
    backend.load("embedder", keep_alive=-1, embedding=True)
    backend.load("tiny", keep_alive=-1)
    assert (refused.value.status, refused.value.transient) == (400, False)
    assert refused.value.message == NOT_GENERATE
    loaded = {model.name: model.expires_at for model in backend.loaded_models()}
    assert loaded == {"embedder:latest": None, "tiny:latest": None}  # None: forever


def ollama_answer(sent: Sent) -> httpx.Response:
    """What Ollama answers the requests these tests send (loads, embeds, /api/ps)."""
    if sent.path == "/api/ps":
        return json_answer({"models": []})
    if sent.path == "/api/embed":
        vectors = [[1.0, 0.0] for _ in sent.body.get("input") or []]
        return json_answer({"model": sent.body["model"], "embeddings": vectors})
    return json_answer({"model": sent.body["model"], "done": True, "done_reason": "load"})


def on_ollama_wire() -> AbstractContextManager[tuple[OllamaBackend, Wire]]:
    """An Ollama backend on a Wire that answers as :func:`ollama_answer`."""
    return on_wire(lambda t: OllamaBackend(URL, transport=t), ollama_answer)


def test_an_embedding_load_sends_an_empty_embed_with_the_keep_alive() -> None:
    with on_ollama_wire() as (backend, sent):
        backend.load("embedder", keep_alive="10m", embedding=True)
        assert (sent.last.path, sent.last.body) == (
            "/api/embed",
            {"model": "embedder", "input": [], "keep_alive": "10m"},
        )
        backend.load("embedder", embedding=True)
        assert sent.last.body == {"model": "embedder", "input": []}


def test_an_embed_sends_keep_alive_only_when_given() -> None:
    with on_ollama_wire() as (backend, sent):
        backend.embed("embedder", ("a",), {}, CancelToken(), keep_alive=-1.0)
        assert sent.last.body == {"model": "embedder", "input": ["a"], "keep_alive": -1.0}
        backend.embed("embedder", ("a",), {}, CancelToken())
        assert "keep_alive" not in sent.last.body


def test_backends_that_load_nothing_take_the_embedding_flag_too() -> None:
    models = json_answer({"object": "list", "data": [{"id": "embedder"}]})
    with on_wire(lambda t: OpenAICompatBackend(URL, transport=t), lambda s: models) as (
        openai,
        sent,
    ):
        openai.load("embedder", keep_alive=-1, embedding=True)  # checks that it is served
    assert [request.path for request in sent.sent] == ["/v1/models"]
    nothing = httpx.Response(500)
    with on_wire(lambda t: AnthropicBackend("key", model="m", transport=t), lambda s: nothing) as (
        cloud,
        sent,
    ):
        cloud.load("embedder", embedding=True)
    assert sent.sent == []
    fake = FakeBackend(ManualClock())
    fake.load("embedder", keep_alive=-1, embedding=True)
    assert [model.name for model in fake.loaded_models()] == ["embedder"]


# --------------------------------------------------------- embeddings keep the pin


def embeds(wire: Wire) -> list[tuple[str, object]]:
    """Each embedding the wire saw (loads, with an empty input, left out): its model and
    the keep_alive it carried (None: none)."""
    return [
        (sent.body["model"], sent.body.get("keep_alive"))
        for sent in wire.sent
        if sent.path == "/api/embed" and sent.body.get("input")
    ]


def test_an_embed_for_a_pinned_model_carries_the_pin_from_the_settings_in_force() -> None:
    settings = [PINNED]
    with on_ollama_wire() as (backend, wire):
        executor = EmbeddingExecutor(backend, 2, lambda: settings[-1])
        try:
            for model in ("embedder", "embedder:latest", "tiny", "other-model"):
                executor.embed(model, ("text",), {}, 5.0)
            settings.append(dataclasses.replace(PINNED, pin_keep_alive_s=3600.0))
            executor.embed("embedder", ("text",), {}, 5.0)
            settings.append(dataclasses.replace(PINNED, embedding_model=""))
            executor.embed("embedder", ("text",), {}, 5.0)
        finally:
            executor.stop()
    assert embeds(wire) == [
        ("embedder", -1.0),
        ("embedder:latest", -1.0),  # any spelling Ollama accepts is the pinned model
        ("tiny", -1.0),  # the chat model's pin holds against an embed for it too
        ("other-model", None),  # not pinned: the server's keep_alive stays as it is
        ("embedder", 3600.0),
        ("embedder", None),
    ]


def test_gpulane_embed_carries_the_pin_and_follows_a_reload(tmp_path: Path) -> None:
    config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")), residency=PINNED)
    wire = Wire(ollama_answer)
    backend = OllamaBackend(URL, transport=wire.transport)
    clock = SystemClock()
    try:
        with GpuLane.start(config, gpu=FakeGpu(clock), backend=backend, clock=clock) as lane:
            lane.embed("embedder", "before the reload")
            lane.reload_config(
                config.replace(residency=dataclasses.replace(PINNED, pin_keep_alive_s=600.0))
            )
            lane.embed("embedder", "after the reload")
            lane.embed("unpinned", "no pin")
    finally:
        backend.close()
    assert embeds(wire) == [("embedder", -1.0), ("embedder", 600.0), ("unpinned", None)]
