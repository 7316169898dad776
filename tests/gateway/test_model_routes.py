"""The routes around the jobs (issue 14, parts 3, 4 and 7): Ollama's health check at ``/``,
``/api/show``, the model-management routes for admin keys, ``/v1/models/{id}``, unknown
routes in each API's own error shape, and the catalog on an OpenAI-compatible server.

Followed from ollama/ollama: ``server/routes.go`` answers ``HEAD /`` and ``GET /`` with
``Ollama is running``; ``api/client.go``'s ``Heartbeat``, which the CLI runs before every
command, is ``HEAD /``, and ``ollama run`` then calls ``POST /api/show`` (pulling on a
404); ``middleware/openai.go``'s ``RetrieveMiddleware`` answers ``/v1/models/{id}`` from
``/api/show`` (``created`` is ``modified_at``, ``owned_by`` the name's namespace).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from gateway_kit import (
    ADMIN,
    ALICE,
    HELLO,
    KEYS,
    OpenAIStack,
    Stack,
    bearer,
    running_openai_stack,
    running_stack,
)

from actors.config import GatewaySettings
from actors.gateway.status_page import PAGE
from protocol import JobState

SIMULATED_MODIFIED_AT = 1_736_935_200  # the simulated server's fixed "pulled at" time


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path) as running:
        yield running


def ollama_client(url: str, key: str = ALICE) -> ollama.Client:
    return ollama.Client(host=url, headers=bearer(key))


def openai_client(url: str, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


# --- Ollama's health check at / -------------------------------------------------------------


def test_head_slash_answers_the_ollama_clis_heartbeat_without_a_key(stack: Stack) -> None:
    go_client = {"Accept": "application/json", "Content-Type": "application/json",
                 "User-Agent": "ollama/0.12.0 (amd64 linux) Go/go1.24.0"}  # fmt: skip
    with stack.client(key=None) as http:
        response = http.head("/", headers=go_client)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-type"].startswith("text/plain")


def test_get_slash_is_ollamas_text_for_clients_and_the_status_page_for_browsers(
    stack: Stack,
) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    with stack.client(key=None) as http:
        assert http.get("/").text == "Ollama is running"
        assert http.get("/", headers={"Accept": "application/json"}).text == "Ollama is running"
        page = http.get("/", headers=browser)
    assert page.headers["content-type"].startswith("text/html") and page.text == PAGE


def test_head_works_on_version_and_tags_as_on_ollama(stack: Stack) -> None:
    with stack.client() as http:
        assert http.head("/api/version").status_code == 200
        assert http.head("/api/tags").status_code == 200


# --- /api/show and /v1/models/{id} -----------------------------------------------------------


def test_any_caller_gets_a_models_details_from_api_show(stack: Stack) -> None:
    shown = ollama_client(stack.url).show("tiny")
    assert shown.capabilities and "completion" in shown.capabilities and shown.details
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    with stack.client() as http:
        older = http.post("/api/show", json={"name": "tiny"})
    assert older.status_code == 200 and older.json()["capabilities"] == shown.capabilities


def test_api_show_of_an_unknown_model_is_the_model_servers_404(stack: Stack) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client(stack.url).show("no-such-model")
    assert caught.value.status_code == 404 and "not found" in caught.value.error


def test_api_show_without_a_model_is_a_400_naming_it(stack: Stack) -> None:
    with stack.client() as http:
        response = http.post("/api/show", json={})
    assert response.status_code == 400 and response.json()["field"] == "model"


def test_openai_client_retrieves_one_model_as_ollama_describes_it(stack: Stack) -> None:
    found = openai_client(stack.url).models.retrieve("tiny")
    assert (found.id, found.object, found.owned_by) == ("tiny", "model", "library")
    assert found.created == SIMULATED_MODIFIED_AT
    listed = openai_client(stack.url).models.list().data
    assert [(m.id, m.created, m.owned_by) for m in listed] == [
        ("tiny:latest", SIMULATED_MODIFIED_AT, "library"),
        ("endless:latest", SIMULATED_MODIFIED_AT, "library"),
    ]


def test_retrieving_an_unknown_model_is_a_404_in_openais_shape(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client(stack.url).models.retrieve("no-such-model")
    body = caught.value.body
    assert (
        isinstance(body, dict) and body["param"] == "model" and "no-such-model" in body["message"]
    )


# --- unknown routes and wrong methods ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/no-such-route", "/no-such-page"])
def test_an_unknown_route_is_ollamas_error_shape_naming_the_route(stack: Stack, path: str) -> None:
    with stack.client() as http:
        response = http.get(path)
    assert response.status_code == 404
    body = response.json()
    assert "detail" not in body and body["field"] == "route" and path in body["error"]


def test_an_unknown_openai_route_is_openais_error_shape(stack: Stack) -> None:
    with stack.client() as http:
        response = http.post("/v1/no-such-route", json={})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "route"
    assert "/v1/no-such-route" in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/chat", ["POST"]),
        ("POST", "/api/tags", ["GET", "HEAD"]),
        ("GET", "/v1/chat/completions", ["POST"]),
    ],
)
def test_a_method_a_route_does_not_take_is_a_405_listing_the_allowed_ones(
    stack: Stack, method: str, path: str, allowed: list[str]
) -> None:
    with stack.client() as http:
        response = http.request(method, path)
    assert response.status_code == 405
    assert sorted(response.headers["allow"].replace(" ", "").split(",")) == allowed
    body = response.json()
    if path.startswith("/v1/"):
        assert body["error"]["param"] == "method" and sorted(body["error"]["allowed"]) == allowed
    else:
        assert body["field"] == "method" and sorted(body["allowed"]) == allowed


# --- model management, passed to the model server -----------------------------------------------

PULL_PROGRESS = [
    {"status": "pulling manifest"},
    {"status": "pulling 8eeb52dfb3bb", "digest": "sha256:8eeb52dfb3bb", "total": 900,
     "completed": 300},
    {"status": "pulling 8eeb52dfb3bb", "digest": "sha256:8eeb52dfb3bb", "total": 900,
     "completed": 900},
    {"status": "verifying sha256 digest"},
    {"status": "success"},
]  # fmt: skip


class ModelServer:
    """The model-management routes of an Ollama server, on ``httpx.MockTransport``.

    It keeps every request it was sent; a pull's progress waits after each line until the
    test has read it (``read_one``), so a gateway that held the stream back would stall it.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.lines_read = threading.Semaphore(0)
        self.waited_for_reader: list[bool] = []
        self.transport = httpx.MockTransport(self.handle)

    def read_one(self) -> None:
        self.lines_read.release()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        path = request.url.path
        self.seen.append((request.method, path, body))
        ndjson = {"content-type": "application/x-ndjson"}
        if path == "/api/pull" and json.loads(body).get("model") == "missing":
            return httpx.Response(500, json={"error": "pull model manifest: file does not exist"})
        if path == "/api/pull":
            return httpx.Response(200, headers=ndjson, content=self.progress())
        if path in ("/api/push", "/api/create"):
            return httpx.Response(200, headers=ndjson, content=b'{"status":"success"}\n')
        if path.startswith("/api/blobs/"):
            return httpx.Response(404 if request.method == "HEAD" else 201)
        return httpx.Response(200)

    async def progress(self) -> AsyncIterator[bytes]:
        for line in PULL_PROGRESS:
            yield json.dumps(line).encode() + b"\n"
            read = await asyncio.to_thread(self.lines_read.acquire, timeout=5)
            self.waited_for_reader.append(read)


@pytest.fixture
def models(tmp_path: Path) -> Iterator[tuple[Stack, ModelServer]]:
    server = ModelServer()
    settings = GatewaySettings(api_keys=KEYS, max_body_bytes=1024)
    with running_stack(tmp_path, settings, upstream_transport=server.transport) as running:
        yield running, server


MANAGEMENT = [
    ("POST", "/api/pull", {"model": "tiny"}),
    ("POST", "/api/push", {"model": "me/tiny"}),
    ("POST", "/api/create", {"model": "mine", "from": "tiny"}),
    ("POST", "/api/copy", {"source": "tiny", "destination": "mine"}),
    ("DELETE", "/api/delete", {"model": "mine"}),
    ("HEAD", "/api/blobs/sha256:abc", None),
    ("POST", "/api/blobs/sha256:abc", None),
]


@pytest.mark.parametrize(("method", "path", "body"), MANAGEMENT)
def test_model_management_is_refused_to_a_key_without_admin_naming_the_route(
    models: tuple[Stack, ModelServer], method: str, path: str, body: dict[str, Any] | None
) -> None:
    stack, server = models
    with stack.client(ALICE) as http:
        response = http.request(method, path, json=body)
    assert response.status_code == 403
    if method != "HEAD":
        error = response.json()
        assert error["field"] == "authorization" and f"{method} {path}" in error["error"]
    assert server.seen == [], "nothing reached the model server"


def test_an_admins_pull_streams_the_servers_progress_line_by_line(
    models: tuple[Stack, ModelServer],
) -> None:
    stack, server = models
    parts = []
    for part in ollama_client(stack.url, ADMIN).pull("tiny", stream=True):
        parts.append(part)
        server.read_one()
    assert [p.status for p in parts] == [line["status"] for line in PULL_PROGRESS]
    assert parts[2].completed == 900 and parts[2].digest == "sha256:8eeb52dfb3bb"
    assert server.waited_for_reader == [True] * len(PULL_PROGRESS), "no line was held back"
    [(method, path, body)] = server.seen
    assert (method, path, json.loads(body)) == (
        "POST", "/api/pull", {"model": "tiny", "insecure": False, "stream": True}
    )  # fmt: skip


def test_an_admin_copies_creates_pushes_and_deletes_through_the_official_client(
    models: tuple[Stack, ModelServer],
) -> None:
    stack, server = models
    client = ollama_client(stack.url, ADMIN)
    assert client.copy("tiny", "mine").status == "success"
    assert client.create(model="mine", from_="tiny").status == "success"
    assert client.push("me/mine").status == "success"
    assert client.delete("mine").status == "success"
    routes = [(method, path) for method, path, _ in server.seen]
    assert routes == [
        ("POST", "/api/copy"), ("POST", "/api/create"), ("POST", "/api/push"),
        ("DELETE", "/api/delete"),
    ]  # fmt: skip
    assert json.loads(server.seen[0][2]) == {"source": "tiny", "destination": "mine"}


def test_a_blob_upload_passes_through_whatever_its_size(
    models: tuple[Stack, ModelServer], tmp_path: Path
) -> None:
    stack, server = models
    blob = tmp_path / "model.gguf"
    blob.write_bytes(bytes(range(256)) * 40)  # 10 KiB: ten times gateway.max_body_bytes
    digest = ollama_client(stack.url, ADMIN).create_blob(blob)
    with stack.client(ADMIN) as http:
        assert http.head(f"/api/blobs/{digest}").status_code == 404
    method, path, body = server.seen[0]
    assert (method, path) == ("POST", f"/api/blobs/{digest}") and body == blob.read_bytes()


def test_a_model_server_error_reaches_the_admin_as_the_server_said_it(
    models: tuple[Stack, ModelServer],
) -> None:
    stack, _ = models
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client(stack.url, ADMIN).pull("missing")
    assert caught.value.status_code == 500 and "file does not exist" in caught.value.error


def test_with_one_backend_the_backend_header_may_name_it_and_nothing_else(
    models: tuple[Stack, ModelServer],
) -> None:
    stack, server = models
    with stack.client(ADMIN) as http:
        named = http.post("/api/copy", json={"source": "tiny", "destination": "mine"},
                          headers={"X-Gpulane-Backend": "local"})  # fmt: skip
        other = http.post("/api/copy", json={"source": "tiny", "destination": "mine"},
                          headers={"X-Gpulane-Backend": "elsewhere"})  # fmt: skip
    assert named.status_code == 200
    assert other.status_code == 400
    body = other.json()
    assert body["field"] == "X-Gpulane-Backend" and "'elsewhere'" in body["error"]
    assert body["allowed"] == ["local"]
    assert [path for _, path, _ in server.seen] == ["/api/copy"], "the refused one never left"


# --- the catalog on an OpenAI-compatible server ---------------------------------------------------


@pytest.fixture
def on_openai(tmp_path: Path) -> Iterator[OpenAIStack]:
    with running_openai_stack(tmp_path) as running:
        yield running


def test_ollama_clients_list_show_and_chat_on_an_openai_compatible_server(
    on_openai: OpenAIStack,
) -> None:
    client = ollama_client(on_openai.url)
    listed = client.list().models
    assert [m.model for m in listed] == ["tiny"]
    assert listed[0].digest is not None and len(listed[0].digest) == 64  # the CLI shows [:12]
    running = client.ps().models
    assert [m.model for m in running] == ["tiny"]
    assert running[0].expires_at is not None and running[0].expires_at.year > 2200  # "Forever"
    assert client.show("tiny").capabilities == ["completion"]
    with pytest.raises(ollama.ResponseError) as caught:
        client.show("no-such-model")
    assert caught.value.status_code == 404
    reply = client.chat(model="tiny", messages=HELLO)
    job = on_openai.wait_for_job(lambda j: j.state is JobState.SUCCEEDED)
    assert reply.message.content == job.result


def test_openai_clients_list_and_retrieve_models_of_an_openai_compatible_server(
    on_openai: OpenAIStack,
) -> None:
    client = openai_client(on_openai.url)
    assert [(m.id, m.owned_by) for m in client.models.list().data] == [("tiny", "fake")]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_version_is_gpulanes_own_on_an_openai_compatible_server(on_openai: OpenAIStack) -> None:
    with on_openai.client() as http:
        assert http.get("/api/version").json() == {"version": "0.1.0", "gpulane": "0.1.0"}


def test_model_management_is_a_501_naming_the_backend_kind_on_an_openai_server(
    on_openai: OpenAIStack,
) -> None:
    with on_openai.client(ADMIN) as http:
        response = http.post("/api/pull", json={"model": "tiny"})
    assert response.status_code == 501 and response.json()["field"] == "backend.kind"


def test_an_admin_pulls_copies_and_deletes_on_the_simulated_ollama(stack: Stack) -> None:
    client = ollama_client(stack.url, ADMIN)
    progress = list(client.pull("tiny", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert client.copy("tiny", "mine").status == "success"
    assert "mine:latest" in [m.model for m in client.list().models]
    assert client.delete("mine").status == "success"
    assert "mine:latest" not in [m.model for m in client.list().models]
