"""The simulated Ollama server as a process of its own (``python -m actors.backends.simulated``):
it prints its URL once it listens, stops on SIGTERM or SIGINT, and, killed with SIGKILL and
started again on the same port, comes back at once with nothing loaded, as a restarted
Ollama does (a new ``ollama serve`` has no runners: server/sched.go starts with an empty
``loaded`` map). Meanwhile a client sees the backend's outage, not the request's failure.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import httpx
import pytest
from simulated_process import SimulatedProcess

from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import DEFAULT_MODELS, ModelProfile
from actors.backends.simulated.__main__ import main, parse_profile
from protocol import BackendError

FAST = {"load_seconds": 0.01, "first_token_seconds": 0.0, "tokens_per_second": 5000}
EMBEDDER = {"load_seconds": 0.01, "embedding_only": True, "embedding_dimensions": 8}
PROFILES = (f"tiny={json.dumps(FAST)}", f"embedder={json.dumps(EMBEDDER)}")


@pytest.fixture
def process() -> Iterator[SimulatedProcess]:
    with SimulatedProcess.with_profiles(PROFILES, "--max-loaded-models", "2") as child:
        yield child


def loaded(url: str) -> list[str]:
    with httpx.Client(base_url=url, timeout=5.0) as http:
        return [model["name"] for model in http.get("/api/ps").json()["models"]]


def test_a_server_killed_and_restarted_on_the_same_port_comes_back_with_nothing_loaded(
    process: SimulatedProcess,
) -> None:
    url = process.url
    backend = OllamaBackend(url, timeout=5.0)
    try:
        backend.load("tiny", keep_alive=-1)
        backend.load("embedder", keep_alive=-1, embedding=True)
        assert sorted(loaded(url)) == ["embedder:latest", "tiny:latest"]
        assert process.kill() == -signal.SIGKILL
        with pytest.raises(BackendError) as down:
            backend.loaded_models()
        assert down.value.outage and "refused" in down.value.message
        assert process.start() == url  # the same port, bound again at once
        assert loaded(url) == []
        backend.load("tiny", keep_alive=-1)  # the same client, on a new connection
        assert loaded(url) == ["tiny:latest"]
    finally:
        backend.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_sigterm_or_sigint_stops_the_server_with_status_0(
    process: SimulatedProcess, signum: signal.Signals
) -> None:
    assert loaded(process.url) == []
    assert process.terminate(signum) == 0
    with pytest.raises(httpx.ConnectError):
        loaded(process.url)


def test_a_port_in_use_ends_the_process_with_status_1_and_says_why(
    process: SimulatedProcess,
) -> None:
    second = SimulatedProcess(port=process.port)
    with pytest.raises(RuntimeError, match="exited with 1") as caught:
        second.start()
    assert f"cannot listen on 127.0.0.1:{process.port}" in str(caught.value)


# ------------------------------------------------------------- the arguments


def test_a_profile_is_a_default_model_by_name_or_fields_over_it() -> None:
    assert parse_profile("llama3.2") == ("llama3.2", DEFAULT_MODELS["llama3.2"])
    assert parse_profile("fresh") == ("fresh", ModelProfile())
    name, profile = parse_profile('llama3.2={"load_seconds": 0, "vision": true}')
    assert (name, profile.load_seconds, profile.vision) == ("llama3.2", 0, True)
    assert profile.size_bytes == DEFAULT_MODELS["llama3.2"].size_bytes


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--profile", 'tiny={"load_secondz": 1}'], "tiny: unknown field 'load_secondz'"),
        (["--profile", 'tiny={"tools": 1}'], "tiny.tools: must be true or false, not 1"),
        (["--profile", 'tiny={"load_seconds": "1"}'], "tiny.load_seconds: must be a number"),
        (["--profile", 'tiny={"context_length": 2.5}'], "tiny.context_length: must be an integer"),
        (["--profile", 'tiny={"load_seconds": -1}'], "tiny: load_seconds must not be negative"),
        (["--profile", "tiny=[1]"], "tiny: the profile must be a JSON object"),
        (["--profile", "tiny={"], "tiny: the profile is not JSON"),
        (["--profile", "={}"], "a model name is needed"),
        (["--speed", "0"], "speed must be positive"),
        (["--max-loaded-models", "0"], "max_loaded_models must be at least 1"),
    ],
)
def test_a_bad_argument_ends_the_process_with_status_2_naming_it(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
