"""A whole gpulane behind a real gateway for end-to-end tests: simulated Ollama → OllamaBackend
→ GpuLane → gateway (uvicorn on a loopback port, in a thread) → official clients."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from profiles import ENDLESS, TINY

from actors import Config, GpuLane
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import SimulatedOllama
from actors.config import ApiKey, GatewaySettings
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
class Stack:
    """The running pieces a test can poke."""

    sim: SimulatedOllama
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


@contextmanager
def running_stack(
    tmp_path: Path, settings: GatewaySettings | None = None, **app_options: Any
) -> Iterator[Stack]:
    """Start everything on loopback; stop it all afterwards (no leaked threads)."""
    settings = settings or GatewaySettings(api_keys=KEYS)
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3"), synchronous="NORMAL"),
        retry=RetryPolicy(base_delay_s=0.0, max_delay_s=0.0, jitter=0.0),
        gateway=settings,
    )
    with SimulatedOllama(CATALOG) as sim:
        backend = OllamaBackend(sim.url, timeout=10.0)
        lane = GpuLane.start(config, backend=backend)
        try:
            app = create_app(lane, settings, upstream=sim.url, **app_options)
            with GatewayServer(app) as server:
                yield Stack(sim, lane, server)
        finally:
            lane.stop()
            backend.close()
