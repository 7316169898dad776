"""The HTTP gateway under load: many waiting clients, job-surface submits, added latency,
and LiteLLM's proxy beside it.

    .venv/bin/python tests/benchmarks/bench_gateway.py [--quick] [--json]

The gateway runs in a child process (gateway_child.py): uvicorn, a GpuLane with its
durable store (synchronous=FULL) and one GPU slot, and an OllamaBackend on a simulated
Ollama server whose model answers at once; the server runs in a process of its own, as a
real Ollama does, so it does not share the gateway's GIL. The peer is LiteLLM's proxy
(litellm_child.py, from the `bench` extra that ``make bench`` installs in .venv/bench),
its ``ollama_chat`` provider in front of the same server, in a process of its own too.
Figures:

- 1,000 clients (one httpx.AsyncClient and connection each) all waiting on ``/api/chat`` at
  once; how many complete, the wall time, and the child's peak resident memory (VmHWM);
- ``POST /jobs`` submits per second and latency percentiles over HTTP (64 in flight,
  keep-alive connections, dispatch paused so the figure is the submit path alone);
- per-request latency of one non-streaming chat, one at a time, side by side in blocks
  taken in turn: straight to the simulated server (``/api/chat``), through the gateway on
  ``/api/chat`` and on ``/v1/chat/completions``, through LiteLLM's proxy on
  ``/v1/chat/completions``, and through an in-process GpuLane (same store settings).
  Added latency = that column minus direct.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from _common import ROOT, goal, parse_args, percentile, report
from gateway_child import KEY

from actors import Config, GpuLane
from actors.backends.ollama import OllamaBackend
from protocol import JobSpec, Limits, StoreSettings

HEADERS = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": False}
V1_CHAT = "/v1/chat/completions"
OPENAI_CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}  # the same chat
LITELLM_PYTHON = ROOT / ".venv" / "bench" / "bin" / "python"  # the `bench` extra (make bench)
BLOCKS = 10  # the latency columns are measured in this many blocks, taken in turn


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


@dataclasses.dataclass(frozen=True)
class Column:
    """One way to send the chat: where, on which route, with which body and key."""

    name: str
    url: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    pid: int  # the process that answers on ``url``, whose CPU time per request is counted


def cpu_seconds(pid: int) -> float:
    """The process's user and system CPU time so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def side_by_side(
    columns: list[Column], rounds: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Latency of ``rounds`` chats per column, one at a time on a keep-alive client each, in
    ``BLOCKS`` blocks taken in turn, so a busy moment of the machine falls on every column;
    and the CPU seconds per request of the process each column talks to."""
    latencies: dict[str, list[float]] = {column.name: [] for column in columns}
    cpu = dict.fromkeys(latencies, 0.0)
    clients = {c.name: httpx.Client(base_url=c.url, headers=c.headers, timeout=30) for c in columns}
    try:
        for column in columns:
            for _ in range(rounds // 10):  # warm-up
                clients[column.name].post(column.path, json=column.body).raise_for_status()
        for _ in range(BLOCKS):
            for column in columns:
                http, out = clients[column.name], latencies[column.name]
                cpu[column.name] -= cpu_seconds(column.pid)
                for _ in range(rounds // BLOCKS):
                    began = time.perf_counter()
                    response = http.post(column.path, json=column.body)
                    out.append(time.perf_counter() - began)
                    response.raise_for_status()
                cpu[column.name] += cpu_seconds(column.pid)
    finally:
        for http in clients.values():
            http.close()
    return latencies, {name: spent / len(latencies[name]) for name, spent in cpu.items()}


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


@contextlib.contextmanager
def litellm_process(
    upstream: str, work: Path, lifetime_s: float
) -> Iterator[subprocess.Popen[str]]:
    """LiteLLM's proxy (litellm_child.py) on ``upstream``, started now; stopped on exit.

    Its start-up takes seconds, so the caller reads its URL (``litellm_url``) when it needs it.
    """
    if not LITELLM_PYTHON.exists():
        raise SystemExit(
            f"LiteLLM's proxy is not installed ({LITELLM_PYTHON} is missing): `make bench` "
            "installs the `bench` extra there"
        )
    work.mkdir()
    child = subprocess.Popen(
        [str(LITELLM_PYTHON), str(Path(__file__).with_name("litellm_child.py")), upstream,
         str(work), str(lifetime_s)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdin is not None
    try:
        yield child
    finally:
        child.stdin.close()
        child.wait(60)


def litellm_url(child: subprocess.Popen[str], work: Path) -> tuple[str, str]:
    """The proxy's URL and master key, once it answers; its log's end if it never does."""
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        log = (work / "proxy.log").read_text(errors="replace").splitlines()
        raise SystemExit("LiteLLM's proxy did not start:\n" + "\n".join(log[-30:]))
    started = json.loads(line)
    return started["litellm"], started["key"]


def main() -> None:
    args = parse_args(__doc__ or "")
    clients = 1000
    submit_count, rounds = (1000, 200) if args.quick else (5000, 1000)
    with (
        tempfile.TemporaryDirectory(prefix="bench-gateway-", dir=Path.cwd()) as tmp,
        child_process("sim") as (sim_child, sim),
        litellm_process(sim, Path(tmp) / "litellm", 600.0) as litellm,
        child_process("gateway", str(Path(tmp) / "gateway.sqlite3"), sim) as (child, gateway),
    ):
        peer, peer_key = litellm_url(litellm, Path(tmp) / "litellm")
        peer_headers = {"Authorization": f"Bearer {peer_key}"}
        latency, cpu = side_by_side(
            [
                Column("direct", sim, "/api/chat", CHAT, {}, sim_child.pid),
                Column("gateway", gateway, "/api/chat", CHAT, HEADERS, child.pid),
                Column("gateway_openai", gateway, V1_CHAT, OPENAI_CHAT, HEADERS, child.pid),
                Column("litellm", peer, V1_CHAT, OPENAI_CHAT, peer_headers, litellm.pid),
            ],
            rounds,
        )
        idle_mb = peak_rss_mb(child.pid)
        completed, wall = asyncio.run(waiting_clients(gateway, clients))
        peak_mb = peak_rss_mb(child.pid)
        rate, submit_latency = asyncio.run(submits(gateway, submit_count, 64))
        peak_mb = max(peak_mb, peak_rss_mb(child.pid))
        latency["in_process"] = in_process(rounds, Path(tmp), sim)
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
    }
    columns = ("direct", "in_process", "gateway", "gateway_openai", "litellm")
    for name in columns:
        if name in cpu:
            results[f"{name}.cpu_ms_per_request"] = cpu[name] * ms
        for q in (50, 99):
            results[f"{name}.chat_ms.p{q}"] = percentile(latency[name], q) * ms
            if name != "direct":
                added = results[f"{name}.chat_ms.p{q}"] - results[f"direct.chat_ms.p{q}"]
                results[f"{name}.added_ms.p{q}"] = added
    results["http_layer.added_ms.p50"] = (
        results["gateway.chat_ms.p50"] - results["in_process.chat_ms.p50"]
    )
    ratio = results["gateway_openai.added_ms.p50"] / results["litellm.added_ms.p50"]
    results["ratio.gateway_vs_litellm.added_ms.p50"] = ratio
    print(
        f"{clients} clients waiting on /api/chat: {completed} completed in {wall:.2f} s; "
        f"gateway peak RSS {peak_mb:.1f} MB (before the load {idle_mb:.1f} MB)"
    )
    print(
        f"POST /jobs: {rate:.0f} submits/s, p50 {results['gateway.submit_ms.p50']:.2f} ms, "
        f"p99 {results['gateway.submit_ms.p99']:.2f} ms ({submit_count} submits, 64 in flight)"
    )
    labels = {
        "direct": "direct to the server, /api/chat",
        "in_process": "GpuLane in-process",
        "gateway": "gateway, /api/chat",
        "gateway_openai": "gateway, /v1/chat/completions",
        "litellm": "LiteLLM proxy, /v1/chat/completions",
    }
    head = f"{'p50 ms':>9} {'p99 ms':>9} {'added p50':>10} {'added p99':>10} {'CPU ms':>7}"
    print(f"\n{'one chat at a time':38} {head}")
    for name in columns:
        p50, p99 = results[f"{name}.chat_ms.p50"], results[f"{name}.chat_ms.p99"]
        added = "" if name == "direct" else f"{results[f'{name}.added_ms.p50']:10.3f}"
        added99 = "" if name == "direct" else f"{results[f'{name}.added_ms.p99']:10.3f}"
        spent = f"{cpu[name] * ms:7.2f}" if name in cpu else ""
        print(f"{labels[name]:38} {p50:9.3f} {p99:9.3f} {added:>10} {added99:>10} {spent:>7}")
    print(
        f"({rounds} requests each, in {BLOCKS} blocks taken in turn, in-process after them; "
        f"gateway and in-process use a durable store, synchronous=FULL; CPU ms: the answering "
        f"process's CPU time per request)\ngateway's added p50 / LiteLLM's on the same "
        f"route: {ratio:.3f}"
    )
    goals = [
        goal("gateway.waiting_clients_completed", ">=", 1000, completed),
        goal("gateway.peak_rss_mb", "<=", 300, peak_mb),
        goal("gateway.submits_per_s", ">=", 1000, rate),
        goal("gateway.added_ms.p50", "<=", 2.0, results["gateway.added_ms.p50"]),
        goal("gateway_openai.added_ms.p50", "<=", 2.0, results["gateway_openai.added_ms.p50"]),
        goal("ratio.gateway_vs_litellm.added_ms.p50", "<=", 0.25, ratio),
    ]
    report("gateway", results, goals, args.json)


if __name__ == "__main__":
    main()
