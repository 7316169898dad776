"""``gpulane demo`` / ``make run``: a bot and external callers share one simulated GPU over HTTP.

Everything is real except the GPU. A simulated Ollama server (real HTTP on loopback,
realistic load time, time to first token and tokens per second) stands in for the
GPU; gpulane drives it; the gateway serves gpulane on a loopback port. An internal
bot (an API key allowed internal work) and external callers (each with its own key)
talk to the gateway with the official ``ollama`` Python client, as any Ollama client
would. The bot runs two-step tasks (plan, then act on the plan) at high priority,
every fourth one urgent, which takes the GPU back from external calls; the callers
stream answers across three models, which makes the GPU swap models; a few injected
backend faults show the retries.

The live view is ``gpulane top``'s, read from the gateway's ``/status``. The closing
summary is computed from the jobs as the store keeps them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import FaultKind, SimulatedOllama
from actors.config import ApiKey, Config, GatewaySettings
from actors.gateway import GatewayServer, create_app
from actors.logs import configure_logging
from actors.system import GpuLane
from actors.top import GatewayUnreachable, fetch_status, render
from protocol import (
    ActiveHours,
    Job,
    JobState,
    Lane,
    RetryPolicy,
    SchedulingPolicy,
    StoreSettings,
)

__all__ = ["main", "run_demo", "summarise"]

CHAT_MODELS = ("llama3.2", "qwen2.5:7b", "mistral")
TOPICS = ("the weather", "a haiku", "rust vs go", "sourdough", "black holes", "tax forms", "chess")
BOT_KEY = "demo-bot-key"
OPS_KEY = "demo-ops-key"
DRAIN_SECONDS = 60.0
FAULTS = (FaultKind.SERVER_ERROR, FaultKind.BUSY, FaultKind.CUT_STREAM)


def caller_key(index: int) -> str:
    """The API key of external caller ``index``."""
    return f"demo-caller-{index}-key"


def demo_keys(callers: int) -> tuple[ApiKey, ...]:
    """The bot's key (internal work allowed), one per external caller, and an admin's."""
    return (
        ApiKey(BOT_KEY, "bot", allow_internal=True),
        *(ApiKey(caller_key(i), f"caller-{i}") for i in range(callers)),
        ApiKey(OPS_KEY, "ops", admin=True),
    )


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Traffic:
    """The bot and the external callers: ``ollama.AsyncClient`` s on one asyncio thread.

    Producers start requests at random intervals without waiting for earlier ones, so
    the queue fills as it would behind a busy GPU. :meth:`stop_submitting` stops the
    producers; requests already sent are left to finish; :meth:`close` cancels those
    still open (their connections close, which cancels their jobs) and joins the thread.
    """

    def __init__(self, url: str, callers: int, rng: random.Random) -> None:
        self._url = url
        self._callers = callers
        self._rng = rng
        self._lock = threading.Lock()
        self._in_flight = 0
        self.answered = 0
        self.refused = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._close: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="demo-traffic")

    def start(self) -> None:
        """Start the thread; returns once the producers run."""
        self._thread.start()
        self._ready.wait()
        if not self._thread.is_alive():
            raise RuntimeError("the demo traffic did not start (is the ollama client installed?)")

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        with self._lock:
            return self._in_flight

    def stop_submitting(self) -> None:
        """No new requests from now on."""
        self._signal(self._stop)

    def close(self) -> None:
        """Cancel what is still in flight, close the clients and join the thread."""
        self._signal(self._stop)
        self._signal(self._close)
        self._thread.join()

    def _signal(self, event: asyncio.Event | None) -> None:
        if self._loop is not None and event is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed in the meantime
                self._loop.call_soon_threadsafe(event.set)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import ollama  # the official client: installed with the dev extra (`make run` does)

        self._loop = asyncio.get_running_loop()
        self._stop, self._close = asyncio.Event(), asyncio.Event()
        clients: dict[tuple[str, str, str], ollama.AsyncClient] = {}

        def client(key: str, lane: str, priority: str) -> ollama.AsyncClient:
            if (key, lane, priority) not in clients:
                headers = {
                    "Authorization": f"Bearer {key}",
                    "X-Gpulane-Lane": lane,
                    "X-Gpulane-Priority": priority,
                }
                clients[key, lane, priority] = ollama.AsyncClient(host=self._url, headers=headers)
            return clients[key, lane, priority]

        requests: set[asyncio.Task[None]] = set()

        def spawn(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
            task = asyncio.create_task(self._counted(make))
            requests.add(task)
            task.add_done_callback(requests.discard)

        producers = [asyncio.create_task(self._bot(client, spawn))] + [
            asyncio.create_task(self._caller(i, client, spawn)) for i in range(self._callers)
        ]
        self._ready.set()
        try:
            await self._stop.wait()
            for producer in producers:
                producer.cancel()
            await asyncio.gather(*producers, return_exceptions=True)
            await self._close.wait()
        finally:
            for task in list(requests):
                task.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            for each in clients.values():
                close = cast(Callable[[], Awaitable[None]], each.close)  # untyped upstream
                await close()
            self._ready.set()  # start() must not wait forever if this failed early

    async def _counted(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        import ollama

        with self._lock:
            self._in_flight += 1
        try:
            await make()
            with self._lock:
                self.answered += 1
        except (ollama.ResponseError, httpx.HTTPError):
            with self._lock:
                self.refused += 1  # a 429/503 at the door, or a job that failed for good
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _bot(self, client: Any, spawn: Callable[[Callable[[], Any]], None]) -> None:
        step = 0
        while True:
            await asyncio.sleep(self._rng.uniform(3.0, 6.0))
            step += 1
            priority = "urgent" if step % 4 == 0 else "high"
            bot = client(BOT_KEY, "internal", priority)

            async def task(step: int = step, bot: Any = bot) -> None:
                ask = _ask(f"plan step {step}")
                plan = await bot.chat(model="llama3.2", messages=ask)
                said = {"role": "assistant", "content": plan.message.content or ""}
                await bot.chat(model="llama3.2", messages=[*ask, said, *_ask("act on it")])

            spawn(task)

    async def _caller(
        self, index: int, client: Any, spawn: Callable[[Callable[[], Any]], None]
    ) -> None:
        while True:
            await asyncio.sleep(self._rng.uniform(3.0, 7.0))
            model = self._rng.choices(CHAT_MODELS, weights=(6, 2, 2))[0]
            priority = self._rng.choices(("low", "normal", "high"), weights=(2, 6, 2))[0]
            topic = self._rng.choice(TOPICS)
            caller = client(caller_key(index), "external", priority)

            async def ask(caller: Any = caller, model: str = model, topic: str = topic) -> None:
                stream = await caller.chat(model=model, messages=_ask(topic), stream=True)
                async for _ in stream:
                    pass

            spawn(ask)


def _percentile(values: Sequence[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarise(jobs: Sequence[Job]) -> dict[str, Any]:
    """From the stored jobs: jobs per lane and state, p50/p99 wait per lane (creation to
    the last start), preemptions suffered, and retries (charged attempts that were followed
    by another: every attempt but the last of a job that failed)."""
    out: dict[str, Any] = {}
    for lane in Lane:
        mine = [j for j in jobs if j.spec.lane is lane]
        waits = sorted(j.wait_seconds for j in mine if j.wait_seconds is not None)
        out[lane.value] = {
            "jobs": len(mine),
            "succeeded": sum(j.state is JobState.SUCCEEDED for j in mine),
            "failed": sum(j.state is JobState.FAILED for j in mine),
            "cancelled": sum(j.state is JobState.CANCELLED for j in mine),
            "wait_p50_s": _percentile(waits, 50),
            "wait_p99_s": _percentile(waits, 99),
        }
    out["preemptions"] = sum(j.preemptions for j in jobs)
    out["retries"] = sum(j.attempts - (j.state is JobState.FAILED) for j in jobs if j.attempts)
    return out


def _unfinished(picture: Mapping[str, Any] | None) -> int:
    """Jobs queued or on the GPU in ``picture`` (a job's end is committed after its answer)."""
    if picture is None:
        return 0
    jobs = picture["jobs"]
    return int(jobs["queued"] + jobs["loading"] + jobs["running"])


def _frame(picture: Mapping[str, Any] | None, url: str, note: str) -> Group:
    if picture is None:
        return Group(Text(note))
    return Group(render(picture, source=url), Text(note, style="bold"))


def run_demo(
    seconds: float, speed: float, callers: int, seed: int, console: Console
) -> dict[str, Any]:
    """Run the demo for ``seconds``, let the requests in flight finish, print the summary."""
    rng = random.Random(seed)
    settings = GatewaySettings(api_keys=demo_keys(callers))
    with (
        tempfile.TemporaryDirectory(prefix="gpulane-demo-") as tmp,
        SimulatedOllama(speed=speed) as sim,
    ):
        backend = OllamaBackend(sim.url)
        config = Config(
            store=StoreSettings(path=str(Path(tmp) / "demo.sqlite3")),
            scheduling=SchedulingPolicy(
                active_hours=ActiveHours.parse("00:00-23:59"), max_swap_defer_s=8.0
            ),
            retry=RetryPolicy(base_delay_s=0.5, max_delay_s=4.0),
            gateway=settings,
        )
        lane = GpuLane.start(config, backend=backend)
        try:
            with (
                GatewayServer(create_app(lane, settings, upstream=sim.url)) as server,
                httpx.Client(
                    base_url=server.url, headers={"Authorization": f"Bearer {OPS_KEY}"}
                ) as ops,
            ):
                traffic = Traffic(server.url, callers, rng)
                traffic.start()
                try:
                    picture = _drive(sim, ops, traffic, seconds, rng, console, server.url)
                finally:
                    traffic.close()
            jobs = lane.list(limit=1_000_000)
        finally:
            lane.stop()
            backend.close()
        loads = sim.stats().loads
    summary = summarise(jobs)
    summary["swaps"] = picture["counters"]["swaps"] if picture else 0
    summary["model_loads"] = loads
    summary["refused"] = traffic.refused
    _print_summary(summary, console)
    return summary


def _drive(
    sim: SimulatedOllama,
    ops: httpx.Client,
    traffic: Traffic,
    seconds: float,
    rng: random.Random,
    console: Console,
    url: str,
) -> Mapping[str, Any] | None:
    """Show the live view while the traffic runs, then while it drains; the last picture."""
    picture: Mapping[str, Any] | None = None
    started = time.monotonic()
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while (elapsed := time.monotonic() - started) < seconds:
            if rng.random() < 0.03:
                sim.inject(rng.choice(FAULTS), after_chunks=3)
            note = (
                f"demo: {elapsed:.0f}/{seconds:.0f}s · {traffic.in_flight} requests in flight"
                f" · {traffic.answered} answered"
            )
            try:
                picture = fetch_status(ops)
            except GatewayUnreachable as exc:
                note += f" · {exc}"
            live.update(_frame(picture, url, note))
            time.sleep(0.25)
        traffic.stop_submitting()
        sim.clear_faults()
        deadline = time.monotonic() + DRAIN_SECONDS
        while (traffic.in_flight or _unfinished(picture)) and time.monotonic() < deadline:
            picture = fetch_status(ops)
            note = f"demo: no new requests; waiting for {traffic.in_flight} in flight"
            live.update(_frame(picture, url, note))
            time.sleep(0.25)
        live.update(_frame(picture, url, "demo: done"))
    return picture


def _print_summary(summary: Mapping[str, Any], console: Console) -> None:
    console.print()
    table = Table(title="gpulane demo: summary (from the jobs as stored)")
    for column in ("lane", "jobs", "succeeded", "failed", "cancelled", "wait p50", "wait p99"):
        table.add_column(column, justify="right")
    for lane in Lane:
        row = summary[lane.value]
        table.add_row(
            lane.value,
            str(row["jobs"]),
            str(row["succeeded"]),
            str(row["failed"]),
            str(row["cancelled"]),
            f"{row['wait_p50_s']:.2f}s",
            f"{row['wait_p99_s']:.2f}s",
        )
    console.print(table)
    console.print(
        f"preemptions: {summary['preemptions']}   retries: {summary['retries']}   "
        f"swaps gpulane counted: {summary['swaps']}   model loads the simulated GPU did: "
        f"{summary['model_loads']}   requests refused or failed: {summary['refused']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gpulane demo``."""
    parser = argparse.ArgumentParser(prog="gpulane demo", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="how long the callers submit work (default 30)"
    )
    parser.add_argument(
        "--speed", type=float, default=3.0, help="simulated GPU speed-up factor (default 3)"
    )
    parser.add_argument("--callers", type=int, default=4, help="external callers (default 4)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.speed <= 0 or args.callers < 1:
        parser.error("--seconds and --speed must be more than 0, --callers at least 1")
    configure_logging("warning")
    run_demo(args.seconds, args.speed, args.callers, args.seed, Console())
    return 0
