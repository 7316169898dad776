"""``gpulane serve`` on PostgreSQL: one of several gateways, leader or follower by the lease
(docs/architecture.md section 14; docs/operations.md, "Several gateways").

The process listens at once, as a follower: it forwards to the leader and serves health,
status, metrics and job reads itself (``actors.gateway.follower``). Its LeaseKeeper
contends for the lease; when it wins, the member's thread starts a GpuLane fenced by that
hold (recovering what the last leader left in loading or running) and switches the
listener to the lane's gateway; when it loses, it switches back and stops the lane. A lane
that gives up while it still leads releases the lease and the process exits
``EXIT_FAILED`` after ``gateway.exit_delay_s``, as a single gateway does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.config import Config
from actors.gateway.app import create_app, lane_upstreams
from actors.gateway.core import Gateway
from actors.gateway.follower import create_follower_app
from actors.gateway.foreground import EXIT_FAILED, Foreground
from actors.leadership import Leadership
from actors.lease_keeper import LeaseEvent
from actors.runtime import ExitReason, SystemClock, Timers
from actors.stores import PgJobReader
from actors.system import GpuLane
from protocol.cluster import LeaseAcquired, LeaseHold, LeaseLost, LeaseLostError

__all__ = ["ClusterMember", "RoleSwitch", "serve_cluster"]

log = structlog.get_logger("actors.gateway")

# How long a role change waits for the event loop to open or close the leader's app.
_SWITCH_TIMEOUT_S = 30.0


class RoleSwitch:
    """The ASGI app uvicorn serves: each request goes to the app of this gateway's role now.
    The follower's app runs under uvicorn's lifespan; the leader's is opened on
    :meth:`lead` and closed on :meth:`follow`, both on the event loop, and at the latest
    when uvicorn shuts down."""

    def __init__(self, follower: FastAPI) -> None:
        self._follower = follower
        self.current: ASGIApp = follower
        self._leader: contextlib.AsyncExitStack | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()  # the event loop runs: roles can change

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.loop = asyncio.get_running_loop()
            self.started.set()

            async def closing_the_leader_first() -> Message:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    await self.follow()
                return message

            await self._follower(scope, closing_the_leader_first, send)
            return
        await self.current(scope, receive, send)

    async def lead(self, app: FastAPI) -> None:
        """Open the leader's app and send every new request to it."""
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(app.router.lifespan_context(app))
        self._leader, self.current = stack, app

    async def follow(self) -> None:
        """Send every new request to the follower's app, then close the leader's."""
        self.current = self._follower
        leader, self._leader = self._leader, None
        if leader is not None:
            await leader.aclose()


class ClusterMember:
    """This gateway's lease keeper and, while it leads, its lane; one thread applies the
    keeper's events in order, so a lane is never started and stopped at once."""

    def __init__(
        self,
        config: Config,
        switch: RoleSwitch,
        failed: threading.Event,
        *,
        config_path: str | Path | None,
        overrides: Mapping[str, Any],
    ) -> None:
        self._config = config
        self._switch = switch
        self._failed = failed
        self._config_path = config_path
        self._overrides = overrides
        self._events: queue.Queue[LeaseEvent | None] = queue.Queue()
        self._timers = Timers(SystemClock()).start()
        self.leadership = Leadership.start(config, self._timers, self._events.put, contend=True)
        self._lane: GpuLane | None = None
        self._gateway: Gateway | None = None
        self._thread = threading.Thread(target=self._run, name="cluster-member", daemon=True)
        self._thread.start()

    def gateway(self) -> Gateway | None:
        """The lane's gateway while this gateway leads; None while it follows."""
        return self._gateway

    def stop(self) -> None:
        """Stop the lane (if leading) and the keeper, which releases the lease."""
        self._events.put(None)
        self._thread.join(timeout=_SWITCH_TIMEOUT_S * 2)
        self.leadership.stop()
        self._timers.stop()

    def _run(self) -> None:
        while (event := self._events.get()) is not None:
            if isinstance(event, LeaseAcquired):
                self._lead(event.hold)
            elif isinstance(event, LeaseLost):
                self._follow(event.reason)
        self._follow("the gateway is stopping")

    def _lead(self, hold: LeaseHold) -> None:
        config = self._config_in_file()
        log.info("gateway_leading", token=hold.token)
        try:
            lane = GpuLane.start(
                config, on_failure=self._lane_failed, lease=self.leadership.lead(hold)
            )
        except Exception:
            if not self.leadership.still_leads():
                log.warning("lease_lost_while_starting", token=hold.token)
                return  # the keeper tells LeaseLost; this gateway goes on following
            log.exception("leader_lane_failed_to_start", token=hold.token)
            self._failed.set()
            self.leadership.stop()  # release the lease now: another gateway can lead
            return
        self._lane = lane
        app = create_app(
            lane,
            config.gateway,
            upstreams=lane_upstreams(lane),
            config_path=self._config_path,
            overrides=self._overrides,
        )
        self._on_loop(self._switch.lead(app))
        self._gateway = app.state.gateway

    def _follow(self, reason: str) -> None:
        lane, self._lane, self._gateway = self._lane, None, None
        if lane is None:
            return
        log.warning("gateway_following", reason=reason)
        self._on_loop(self._switch.follow())
        lane.stop()

    def _lane_failed(self, reason: ExitReason) -> None:
        """The lane gave up: a lost lease makes this gateway a follower again; any other
        failure while it still leads ends the process as on a single gateway."""
        if reason.error_type == LeaseLostError.__name__ or not self.leadership.still_leads():
            return  # the keeper tells LeaseLost, and the member follows
        log.error("leader_lane_gave_up", reason=str(reason), status=EXIT_FAILED)
        self._failed.set()
        self.leadership.stop()  # release the lease now: another gateway can lead meanwhile

    def _on_loop(self, step: Coroutine[Any, Any, None]) -> None:
        """Run a role change on the event loop and wait for it; once the loop has ended
        (the gateway stopped: its lifespan closed the leader's app) there is none to run."""
        loop = self._switch.loop if self._switch.started.wait(_SWITCH_TIMEOUT_S) else None
        if loop is None or loop.is_closed() or not loop.is_running():
            step.close()
            return
        asyncio.run_coroutine_threadsafe(step, loop).result(_SWITCH_TIMEOUT_S)

    def _config_in_file(self) -> Config:
        """The config to lead with: the file as it is now (a follower reads it on leading),
        with the command line's gateway keys, and the store and cluster this process
        started with (they change only with a restart); the one it started with if the
        file cannot be read."""
        if self._config_path is None:
            return self._config
        try:
            config = Config.load(self._config_path)
        except Exception as exc:
            log.warning("config_unreadable_on_leading", error=str(exc))
            return self._config
        started = self._config
        if (config.store, config.cluster) != (started.store, started.cluster):
            log.warning("config_store_or_cluster_changed", applies="after a restart")
        return config.replace(
            gateway=dataclasses.replace(config.gateway, **self._overrides),
            store=started.store,
            cluster=started.cluster,
        )


def serve_cluster(
    config: Config, *, config_path: str | Path | None, overrides: Mapping[str, Any]
) -> int:
    """Serve as one of several gateways on ``config.store.url`` until stopped; answers the
    exit status, as ``actors.gateway.server.serve`` does."""
    failed = threading.Event()
    settings = config.gateway
    reader = PgJobReader(config.store.url)
    follower = create_follower_app(
        lambda: member.leadership.view(), reader, settings, cluster=config.cluster
    )
    switch = RoleSwitch(follower)
    member = ClusterMember(config, switch, failed, config_path=config_path, overrides=overrides)
    try:
        log.info(
            "gateway_listening", url=f"http://{settings.host}:{settings.port}",
            node=member.leadership.view().node, role="follower until it takes the lease",
        )  # fmt: skip
        server_config = uvicorn.Config(
            switch, host=settings.host, port=settings.port, log_level="warning"
        )
        Foreground(server_config, member.gateway, settings, failed).run()
    finally:
        member.stop()
        reader.close()
    return EXIT_FAILED if failed.is_set() else 0
