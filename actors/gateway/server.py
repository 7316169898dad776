"""Running the gateway: ``serve`` (the ``gpulane serve`` command, in the foreground) and
``GatewayServer`` (uvicorn on its own thread and event loop, for tests, benchmarks and hosts)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI

from actors.backend_factory import local_backend
from actors.config import Config
from actors.gateway.app import create_app
from actors.system import GpuLane

__all__ = ["GatewayServer", "serve"]

log = structlog.get_logger("actors.gateway")


class GatewayServer:
    """uvicorn serving ``app`` on a background thread; :meth:`start` returns once it listens."""

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, **options: Any
    ) -> None:
        options.setdefault("log_level", "warning")
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, lifespan="on", **options)
        )
        self._thread: threading.Thread | None = None
        self.host = host

    def start(self, timeout: float = 10.0) -> GatewayServer:
        """Start listening (on a free port when ``port`` was 0)."""
        self._thread = threading.Thread(target=self._server.run, name="gateway-uvicorn")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the gateway did not start listening")
            time.sleep(0.005)
        return self

    @property
    def port(self) -> int:
        """The port it listens on."""
        sockets = self._server.servers[0].sockets
        port: int = sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Close connections, run the app's shutdown and join the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    config: Config,
    *,
    config_path: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Start a GpuLane on the configured backend and serve it until interrupted.

    The backend is the one ``[backend]`` names (``actors.backend_factory``); with
    ``kind = "simulated"`` a simulated Ollama server is started on loopback first, so
    the gateway can be tried without a GPU.
    """
    settings = dataclasses.replace(
        config.gateway,
        host=config.gateway.host if host is None else host,
        port=config.gateway.port if port is None else port,
    )
    config = config.replace(gateway=settings)
    releases: list[Callable[[], None]] = []
    try:
        built = local_backend(config.backend)
        releases.append(built.close)
        backend, url = built.backend, built.url
        lane = GpuLane.start(config, backend=backend)
        releases.append(lane.stop)
        app = create_app(lane, settings, upstream=url, config_path=config_path)
        log.info(
            "gateway_listening", url=f"http://{settings.host}:{settings.port}", backend=url,
            open=not settings.api_keys,
        )  # fmt: skip
        uvicorn.Server(
            uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning")
        ).run()
    finally:
        for release in reversed(releases):
            release()
