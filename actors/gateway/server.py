"""Running the gateway: ``serve`` (the ``gpulane serve`` command, in the foreground) and
``GatewayServer`` (uvicorn on its own thread and event loop, for tests, benchmarks and hosts).

``serve`` is what a service manager runs (docs/operations.md, "Running it as a
service"): SIGTERM or SIGINT stops it with status 0, SIGHUP reloads the config file,
and when the supervision tree gives up it answers ``/readyz`` 503 for
``gateway.exit_delay_s``, lets the responses in flight end, and exits with
``EXIT_FAILED``, so ``Restart=on-failure`` starts it again. On ``store.url`` it is one of
several gateways, leading or following by the lease (``cluster_serve``).
"""

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

from actors.config import Config
from actors.gateway.app import create_app, lane_upstreams
from actors.gateway.cluster_serve import serve_cluster
from actors.gateway.foreground import EXIT_FAILED, Foreground
from actors.system import GpuLane

__all__ = ["EXIT_FAILED", "GatewayServer", "serve"]

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
) -> int:
    """Start a GpuLane on the configured backends and serve it until stopped; answers the
    exit status: 0 after SIGTERM or SIGINT, ``EXIT_FAILED`` after the tree gave up.

    The lane builds a client for each backend ``config.hosts`` names (``[backend]`` or
    every ``[[backends]]`` table, ``actors.backend_factory``); one with ``kind =
    "simulated"`` starts a simulated Ollama server on loopback, so the gateway can be
    tried without a GPU. The catalog and model routes reach each backend's server at the
    URL its client talks to. ``host`` and ``port`` override the file's, and a reload
    keeps them.
    """
    overrides: dict[str, Any] = {
        key: value for key, value in (("host", host), ("port", port)) if value is not None
    }
    settings = dataclasses.replace(config.gateway, **overrides)
    config = config.replace(gateway=settings)
    if config.store.url:
        return serve_cluster(config, config_path=config_path, overrides=overrides)
    failed = threading.Event()
    releases: list[Callable[[], None]] = []
    try:
        lane = GpuLane.start(config, on_failure=lambda _: failed.set())
        releases.append(lane.stop)
        upstreams = lane_upstreams(lane)
        app = create_app(
            lane, settings, upstreams=upstreams, config_path=config_path, overrides=overrides
        )
        log.info(
            "gateway_listening", url=f"http://{settings.host}:{settings.port}",
            backends={upstream.name: upstream.url for upstream in upstreams},
            open=not settings.api_keys,
        )  # fmt: skip
        server_config = uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level="warning"
        )
        gateway = app.state.gateway
        Foreground(server_config, lambda: gateway, settings, failed).run()
    finally:
        for release in reversed(releases):
            release()
    return EXIT_FAILED if failed.is_set() else 0
