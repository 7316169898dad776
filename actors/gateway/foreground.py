"""uvicorn in the foreground, as ``gpulane serve`` runs it: gpulane's signals (SIGTERM and
SIGINT stop, SIGHUP reloads) and its exit ``gateway.exit_delay_s`` after the tree gave up
(docs/operations.md, "Running it as a service"). One gateway (``server.serve``) and each
of several on PostgreSQL (``cluster_serve``) run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Generator

import structlog
import uvicorn

from actors.config import GatewaySettings
from actors.gateway.core import Gateway
from actors.gateway.errors import GatewayError
from protocol import GpulaneError

__all__ = ["EXIT_FAILED", "Foreground"]

log = structlog.get_logger("actors.gateway")

EXIT_FAILED = 1  # ``gpulane serve``'s status after the supervision tree gave up


class Foreground(uvicorn.Server):
    """uvicorn in the foreground with gpulane's signals and its exit after a failure.

    SIGTERM and SIGINT stop it (a second SIGINT stops at once) without re-raising the
    signal afterwards, as uvicorn's own handling does, so the lane stops cleanly and the
    status is gpulane's. SIGHUP reloads the config file through ``gateway()``, the lane's
    gateway now (None: a follower, which runs no lane). Once ``failed`` is set, it keeps
    serving (``/readyz`` answers 503) for ``gateway.exit_delay_s`` (as in force: a reload
    changes it; ``settings`` when there is no lane), then stops.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        gateway: Callable[[], Gateway | None],
        settings: GatewaySettings,
        failed: threading.Event,
    ) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._settings = settings
        self._failed = failed
        self._failed_at: float | None = None
        self._reloads: set[asyncio.Task[None]] = set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Handle SIGTERM, SIGINT and SIGHUP on the event loop while serving."""
        loop = asyncio.get_running_loop()
        for stop in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(stop, self._stop, stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            yield
        finally:
            for handled in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(handled)

    def _stop(self, signum: signal.Signals) -> None:
        log.info("gateway_stopping", signal=signum.name)
        self.force_exit = self.should_exit and signum is signal.SIGINT
        self.should_exit = True

    def _reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_file())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_file(self) -> None:
        """Reload on SIGHUP as ``POST /admin/reload`` does; the log says what happened."""
        gateway = self._gateway()
        if gateway is None:
            log.warning("config_reload_on_follower", note="a follower reads the file on leading")
            return
        try:
            _, changed = await gateway.call(gateway.reload)
        except (GatewayError, GpulaneError) as exc:  # as the route's 4xx would say it
            log.warning("config_reload_refused", error=str(exc))
            return
        log.info("config_reloaded_on_sighup", changed=list(changed))

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (every 0.1 s); also stops ``exit_delay_s`` after a failure."""
        gateway = self._gateway()
        delay = (self._settings if gateway is None else gateway.settings).exit_delay_s
        if self._failed.is_set():
            now = time.monotonic()
            if self._failed_at is None:
                self._failed_at = now
                log.error("gateway_unready", exit_in_s=delay, status=EXIT_FAILED)
            if now - self._failed_at >= delay:
                return True
        return await super().on_tick(counter)
