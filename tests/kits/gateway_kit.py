"""A whole gpulane behind a real gateway for end-to-end tests: simulated Ollama → OllamaBackend
→ GpuLane → gateway (uvicorn on a loopback port, in a thread) → official clients; or the
same on a fake OpenAI-compatible server (``running_openai_stack``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fake_openai import FakeOpenAI
from profiles import ENDLESS, TINY

from actors import Config, GpuLane
from actors.backends.ollama import OllamaBackend
from actors.backends.openai_compat import OpenAICompatBackend
from actors.backends.simulated import SimulatedOllama
from actors.config import ApiKey, BackendSettings, GatewaySettings
from actors.gateway import GatewayServer, create_app
from actors.testing import wait_until
from protocol import Job, RetryPolicy, StoreSettings

CATALOG = {"tiny": TINY, "endless": ENDLESS}

ALICE = "alice-key-0001"
BOB = "bob-key-00002"
BOT = "bot-key-00003"
ADMIN = "admin-key-004"
KEYS = (
    ApiKey(ALICE, "alice"),
    ApiKey(BOB, "bob"),
    ApiKey(BOT, "bot", allow_internal=True),
    ApiKey(ADMIN, "ops", admin=True),
)
HELLO = [{"role": "user", "content": "hello there"}]


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


@dataclasses.dataclass
class Running:
    """A lane behind a gateway: what every stack has."""

    lane: GpuLane
    server: GatewayServer

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self.server.url

    def client(self, key: str | None = ALICE) -> httpx.Client:
        """An httpx client on the gateway, authenticated as ``key`` (None: no header)."""
        return httpx.Client(base_url=self.url, headers=bearer(key) if key else {}, timeout=10.0)

    def wait_for_job(self, predicate: Callable[[Job], bool], timeout: float = 5.0) -> Job:
        """The first job (newest first) matching ``predicate``, waiting up to ``timeout``."""
        found: list[Job] = []

        def matched() -> bool:
            found.extend(job for job in self.lane.list(limit=1000) if predicate(job))
            return bool(found)

        wait_until(matched, timeout, "no job matched in time")
        return found[0]


@dataclasses.dataclass
class Stack(Running):
    """The running pieces a test can poke, on the simulated Ollama server."""

    sim: SimulatedOllama


@dataclasses.dataclass
class OpenAIStack(Running):
    """The same on a fake OpenAI-compatible server (``backend.kind = "openai"``)."""

    fake: FakeOpenAI


@contextmanager
def running_stack(
    tmp_path: Path, settings: GatewaySettings | None = None, **app_options: Any
) -> Iterator[Stack]:
    """Start everything on loopback; stop it all afterwards (no leaked threads)."""
    settings = settings or GatewaySettings(api_keys=KEYS)
    config = _config(tmp_path, settings, BackendSettings())
    with SimulatedOllama(CATALOG) as sim:
        backend = OllamaBackend(sim.url, timeout=10.0)
        lane = GpuLane.start(config, backend=backend)
        try:
            app = create_app(lane, settings, upstream=sim.url, **app_options)
            with GatewayServer(app) as server:
                yield Stack(lane, server, sim)
        finally:
            lane.stop()
            backend.close()


@contextmanager
def running_openai_stack(
    tmp_path: Path, settings: GatewaySettings | None = None
) -> Iterator[OpenAIStack]:
    """A gateway on a fake OpenAI-compatible server serving ``tiny``, driven as
    ``backend.kind = "openai"`` (the catalog routes translate its ``/v1/models``)."""
    settings = settings or GatewaySettings(api_keys=KEYS)
    with FakeOpenAI(("tiny",)) as fake:
        backend = OpenAICompatBackend(fake.url, timeout=10.0)
        config = _config(tmp_path, settings, BackendSettings(kind="openai", url=fake.url))
        lane = GpuLane.start(config, backend=backend)
        try:
            app = create_app(lane, settings, upstream=fake.url)
            with GatewayServer(app) as server:
                yield OpenAIStack(lane, server, fake)
        finally:
            lane.stop()
            backend.close()


def _config(tmp_path: Path, settings: GatewaySettings, backend: BackendSettings) -> Config:
    return Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3"), synchronous="NORMAL"),
        retry=RetryPolicy(base_delay_s=0.0, max_delay_s=0.0, jitter=0.0),
        backend=backend,
        gateway=settings,
    )
