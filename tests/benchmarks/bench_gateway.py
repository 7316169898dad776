"""The HTTP gateway under load: many waiting clients, job-surface submits, added latency.

    .venv/bin/python tests/benchmarks/bench_gateway.py [--quick] [--json]

The gateway runs in a child process (gateway_child.py): uvicorn, a GpuLane with its
durable store (synchronous=FULL) and one GPU slot, and an OllamaBackend on a simulated
Ollama server whose model answers at once; the server runs in a process of its own, as a
real Ollama does, so it does not share the gateway's GIL. Figures:

- 1,000 clients (one httpx.AsyncClient and connection each) all waiting on ``/api/chat`` at
  once; how many complete, the wall time, and the child's peak resident memory (VmHWM);
- ``POST /jobs`` submits per second and latency percentiles over HTTP (64 in flight,
  keep-alive connections, dispatch paused so the figure is the submit path alone);
- per-request latency of a non-streaming ``/api/chat``, one at a time, three ways side by
  side: straight to the simulated server, through an in-process GpuLane (same store
  settings), and through the gateway. Added latency = gateway minus direct.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from _common import goal, parse_args, percentile, report
from gateway_child import KEY

from actors import Config, GpuLane
from actors.backends.ollama import OllamaBackend
from protocol import JobSpec, Limits, StoreSettings

HEADERS = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": False}


_TLS = ssl.create_default_context()


def client(url: str, timeout: float = 60) -> httpx.AsyncClient:
    """A client with its own connection. They share one TLS context (unused on plain HTTP):
    building one per client costs tens of milliseconds of CPU and would be measured."""
    return httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=timeout, verify=_TLS)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


async def waiting_clients(url: str, clients: int) -> tuple[int, float]:
    """``clients`` concurrent /api/chat requests; how many got a done answer, and the wall time."""
    pool = [client(url, timeout=300) for _ in range(clients)]

    async def one(http: httpx.AsyncClient) -> bool:
        response = await http.post("/api/chat", json=CHAT)
        return response.status_code == 200 and response.json().get("done") is True

    began = time.perf_counter()
    results = await asyncio.gather(*(one(http) for http in pool), return_exceptions=True)
    wall = time.perf_counter() - began
    await asyncio.gather(*(http.aclose() for http in pool))
    return sum(1 for r in results if r is True), wall


async def submits(url: str, count: int, in_flight: int) -> tuple[float, list[float]]:
    """``count`` POST /jobs with ``in_flight`` at a time; submits per second and latencies."""
    async with client(url) as admin:
        assert (await admin.post("/admin/pause")).status_code == 200
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    latencies: list[float] = []
    remaining = [count]

    # One client (one keep-alive connection) per worker: a single httpx pool shared by
    # many tasks slows down sharply as they grow, and would measure the client.
    pool = [client(url) for _ in range(in_flight)]

    async def worker(http: httpx.AsyncClient) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            began = time.perf_counter()
            response = await http.post("/jobs", json=body)
            latencies.append(time.perf_counter() - began)
            assert response.status_code == 202, response.text

    began = time.perf_counter()
    await asyncio.gather(*(worker(http) for http in pool))
    wall = time.perf_counter() - began
    await asyncio.gather(*(http.aclose() for http in pool))
    return count / wall, latencies


def sequential(url: str, path: str, rounds: int, headers: dict[str, str]) -> list[float]:
    """Latency of ``rounds`` non-streaming chats, one after another, on a keep-alive client."""
    latencies = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for _ in range(rounds // 10):
            http.post(path, json=CHAT).raise_for_status()  # warm-up
        for _ in range(rounds):
            began = time.perf_counter()
            response = http.post(path, json=CHAT)
            latencies.append(time.perf_counter() - began)
            response.raise_for_status()
    return latencies


def in_process(rounds: int, tmp: Path, upstream: str) -> list[float]:
    """The same chat through a GpuLane in this process (no gateway), one at a time."""
    spec = JobSpec.chat(model="fast", messages=CHAT["messages"], caller="bench")  # type: ignore[arg-type]
    latencies = []
    backend = OllamaBackend(upstream)
    lane = GpuLane.start(
        Config(store=StoreSettings(path=str(tmp / "inproc.sqlite3")), limits=Limits.off()),
        backend=backend,
    )
    try:
        for i in range(rounds + rounds // 10):
            began = time.perf_counter()
            lane.submit(spec).result(timeout=30)
            if i >= rounds // 10:
                latencies.append(time.perf_counter() - began)
    finally:
        lane.stop()
        backend.close()
    return latencies


@contextlib.contextmanager
def child_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """gateway_child.py with ``args``, and the URL it serves on; stopped on exit."""
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("gateway_child.py")), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    try:
        (url,) = json.loads(child.stdout.readline()).values()
        yield child, url
    finally:
        child.stdin.close()
        child.wait(60)


def main() -> None:
    args = parse_args(__doc__ or "")
    clients = 1000
    submit_count, rounds = (1000, 200) if args.quick else (5000, 1000)
    with (
        tempfile.TemporaryDirectory(prefix="bench-gateway-", dir=Path.cwd()) as tmp,
        child_process("sim") as (_, sim),
        child_process("gateway", str(Path(tmp) / "gateway.sqlite3"), sim) as (child, gateway),
    ):
        direct = sequential(sim, "/api/chat", rounds, {})
        via_gateway = sequential(gateway, "/api/chat", rounds, HEADERS)
        idle_mb = peak_rss_mb(child.pid)
        completed, wall = asyncio.run(waiting_clients(gateway, clients))
        peak_mb = peak_rss_mb(child.pid)
        rate, submit_latency = asyncio.run(submits(gateway, submit_count, 64))
        peak_mb = max(peak_mb, peak_rss_mb(child.pid))
        local = in_process(rounds, Path(tmp), sim)
    ms = 1000.0
    results = {
        "gateway.waiting_clients": float(clients),
        "gateway.waiting_clients_completed": float(completed),
        "gateway.waiting_clients_wall_s": wall,
        "gateway.peak_rss_mb": peak_mb,
        "gateway.rss_before_load_mb": idle_mb,
        "gateway.submits_per_s": rate,
        "gateway.submit_ms.p50": percentile(submit_latency, 50) * ms,
        "gateway.submit_ms.p99": percentile(submit_latency, 99) * ms,
        "direct.chat_ms.p50": percentile(direct, 50) * ms,
        "direct.chat_ms.p99": percentile(direct, 99) * ms,
        "in_process.chat_ms.p50": percentile(local, 50) * ms,
        "in_process.chat_ms.p99": percentile(local, 99) * ms,
        "gateway.chat_ms.p50": percentile(via_gateway, 50) * ms,
        "gateway.chat_ms.p99": percentile(via_gateway, 99) * ms,
    }
    results["gateway.added_ms.p50"] = results["gateway.chat_ms.p50"] - results["direct.chat_ms.p50"]
    results["gateway.added_ms.p99"] = results["gateway.chat_ms.p99"] - results["direct.chat_ms.p99"]
    results["http_layer.added_ms.p50"] = (
        results["gateway.chat_ms.p50"] - results["in_process.chat_ms.p50"]
    )
    print(
        f"{clients} clients waiting on /api/chat: {completed} completed in {wall:.2f} s; "
        f"gateway peak RSS {peak_mb:.1f} MB (before the load {idle_mb:.1f} MB)"
    )
    print(
        f"POST /jobs: {rate:.0f} submits/s, p50 {results['gateway.submit_ms.p50']:.2f} ms, "
        f"p99 {results['gateway.submit_ms.p99']:.2f} ms ({submit_count} submits, 64 in flight)"
    )
    print(
        f"\n{'/api/chat, one at a time':28} {'direct':>10} {'in-process':>12} {'gateway':>10} "
        f"{'added':>10}"
    )
    for q in ("p50", "p99"):
        d, i, g = (results[f"{s}.chat_ms.{q}"] for s in ("direct", "in_process", "gateway"))
        print(f"{'latency ms ' + q:28} {d:10.3f} {i:12.3f} {g:10.3f} {g - d:10.3f}")
    print(f"({rounds} requests each; gateway and in-process use a durable store, synchronous=FULL)")
    goals = [
        goal("gateway.waiting_clients_completed", ">=", 1000, completed),
        goal("gateway.peak_rss_mb", "<=", 300, peak_mb),
        goal("gateway.submits_per_s", ">=", 1000, rate),
        goal("gateway.added_ms.p50", "<=", 2.0, results["gateway.added_ms.p50"]),
    ]
    report("gateway", results, goals, args.json)


if __name__ == "__main__":
    main()
