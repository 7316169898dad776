"""Outages over real sockets: each backend marks a server that is gone, drops the
connection or is busy as the backend's outage (``BackendError.outage``), and a failure
of the request (a 500 for it, a read time-out) as the request's, against the simulated
Ollama, the fake OpenAI-compatible and Anthropic servers, and a peer that resets the
connection. A cut after output is marked an outage too: losing the host mid-stream costs
the job nothing either, it resumes after its text (docs/backends.md, "Whose failure is
it"; tests/faults/test_host_lost_mid_stream.py).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from backend_kit import failure
from fake_anthropic import FakeAnthropic
from fake_http import Fault
from fake_openai import FakeOpenAI
from profiles import ENDLESS, TINY

from actors.backends.anthropic import AnthropicBackend
from actors.backends.base import Backend
from actors.backends.ollama import OllamaBackend
from actors.backends.openai_compat import OpenAICompatBackend
from actors.backends.simulated import FaultKind, SimulatedOllama
from actors.runtime import ManualClock
from protocol import BackendError, BackendRequest, ChatMessage, JobKind

QUESTION = (ChatMessage("user", "Which job runs next?"),)
MakeBackend = Callable[[str], Backend]
BACKENDS: dict[str, MakeBackend] = {
    "ollama": lambda url: OllamaBackend(url, timeout=5.0),
    "openai": lambda url: OpenAICompatBackend(url, timeout=5.0),
    "anthropic": lambda url: AnthropicBackend(
        "sk-ant-test", model="claude-test", base_url=url, timeout=5.0
    ),
}


def chat(model: str = "tiny") -> BackendRequest:
    return BackendRequest(kind=JobKind.CHAT, model=model, messages=QUESTION)


@pytest.fixture
def server() -> Iterator[SimulatedOllama]:
    with SimulatedOllama({"tiny": TINY, "endless": ENDLESS}) as sim:
        yield sim


@pytest.fixture
def ollama(server: SimulatedOllama) -> Iterator[OllamaBackend]:
    backend = OllamaBackend(server.url, timeout=5.0)
    yield backend
    backend.close()


@pytest.fixture(params=sorted(BACKENDS))
def make(request: pytest.FixtureRequest) -> MakeBackend:
    return BACKENDS[request.param]


class ResettingPeer:
    """A TCP server that reads each request's headers and answers with a reset (RST, from
    SO_LINGER 0), as a model server killed mid-request leaves its clients."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, name="resetting-peer")
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed: the test is over
            with connection:
                received = b""
                while b"\r\n\r\n" not in received:
                    piece = connection.recv(65536)
                    if not piece:
                        break
                    received += piece
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join()


# ------------------------------------------------------------ every backend


def test_a_server_that_is_not_listening_is_an_outage_for_every_backend(
    make: MakeBackend, server: SimulatedOllama
) -> None:
    server.refuse_connections()  # its port is closed now
    backend = make(server.url)
    try:
        error, chunks = failure(backend, chat())
        with pytest.raises(BackendError) as listing:
            backend.loaded_models()
    finally:
        backend.close()
    assert (error.outage, error.transient, error.status, chunks) == (True, True, None, [])
    assert "cannot connect" in error.message and "refused" in error.message
    assert listing.value.outage


def test_a_peer_that_resets_the_connection_is_an_outage_for_every_backend(
    make: MakeBackend,
) -> None:
    peer = ResettingPeer()
    backend = make(peer.url)
    try:
        error, chunks = failure(backend, chat())
    finally:
        backend.close()
        peer.close()
    assert (error.outage, error.transient, error.status, chunks) == (True, True, None, [])


# -------------------------------------------------------------------- Ollama


def test_ollama_answering_nothing_before_closing_is_an_outage(
    ollama: OllamaBackend, server: SimulatedOllama
) -> None:
    server.inject(FaultKind.CUT_STREAM, path="/api/ps")
    with pytest.raises(BackendError) as caught:
        ollama.loaded_models()
    assert caught.value.outage and "Server disconnected" in caught.value.message


def test_an_ollama_stream_cut_before_or_after_output_is_marked_an_outage_with_its_pieces(
    ollama: OllamaBackend, server: SimulatedOllama
) -> None:
    # The backend marks the dropped connection, with the pieces it delivered; the slot
    # requeues the job uncharged either way, the second after its text (issue #17).
    server.inject(FaultKind.CUT_STREAM, after_chunks=0)
    before, no_chunks = failure(ollama, chat("endless"))
    server.inject(FaultKind.CUT_STREAM, after_chunks=3)
    after, chunks = failure(ollama, chat("endless"))
    assert (before.outage, len(no_chunks)) == (True, 0)
    assert (after.outage, len(chunks)) == (True, 3)


def test_a_busy_ollama_is_an_outage_and_a_500_for_the_call_is_not(
    ollama: OllamaBackend, server: SimulatedOllama
) -> None:
    server.inject(FaultKind.BUSY)
    busy, _ = failure(ollama, chat())
    server.inject(FaultKind.SERVER_ERROR)
    killed, _ = failure(ollama, chat())
    server.inject(FaultKind.ERROR_LINE, after_chunks=2)
    error_line, _ = failure(ollama, chat("endless"))
    assert (busy.status, busy.outage, busy.message) == (
        503,
        True,
        "server busy, please try again.  maximum pending requests exceeded",
    )
    assert (killed.status, killed.outage, killed.transient) == (500, False, True)
    assert (error_line.outage, error_line.transient) == (False, True)


def test_an_ollama_read_time_out_is_the_request_s_failure(manual_clock: ManualClock) -> None:
    # The server's clock never moves, so the second token (due 1/200 s after the first)
    # never comes: only the read time-out ends the call.
    with SimulatedOllama({"endless": ENDLESS}, clock=manual_clock) as paused:
        impatient = OllamaBackend(paused.url, timeout=httpx.Timeout(5.0, read=0.1))
        try:
            error, chunks = failure(impatient, chat("endless"))
        finally:
            impatient.close()
    assert (error.outage, error.transient, len(chunks)) == (False, True, 1)
    assert "timed out" in error.message


# ------------------------------------------- OpenAI-compatible and Anthropic


def test_an_openai_compatible_server_that_is_loading_is_an_outage_and_its_cut_stream_too() -> None:
    with FakeOpenAI() as fake:
        backend = OpenAICompatBackend(fake.url, timeout=5.0)
        try:
            fake.inject(Fault("status", status=503, message="Loading model",
                              error_type="unavailable_error"))  # fmt: skip
            loading, _ = failure(backend, chat())
            fake.inject(Fault("status", status=500, message="CUDA error"))
            broken, _ = failure(backend, chat())
            fake.inject(Fault("cut", after_chunks=3))
            cut, chunks = failure(backend, chat())
        finally:
            backend.close()
    assert (loading.status, loading.outage, loading.message) == (503, True, "Loading model")
    assert (broken.status, broken.outage, broken.transient) == (500, False, True)
    assert (cut.outage, len(chunks)) == (True, 3)


def test_an_overloaded_anthropic_api_is_an_outage_and_its_api_error_is_not() -> None:
    with FakeAnthropic() as fake:
        backend = AnthropicBackend("sk-ant-test", model="claude-test", base_url=fake.url)
        try:
            fake.inject(Fault("status", status=529, error_type="overloaded_error",
                              message="Overloaded"))  # fmt: skip
            overloaded, _ = failure(backend, chat())
            fake.inject(Fault("status", status=500, error_type="api_error"))
            api_error, _ = failure(backend, chat())
        finally:
            backend.close()
    assert (overloaded.status, overloaded.outage) == (529, True)
    assert (api_error.status, api_error.outage, api_error.transient) == (500, False, True)
