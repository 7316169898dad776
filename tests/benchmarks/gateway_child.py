"""The processes bench_gateway.py starts: the model server, and the gateway in front of it.

``gateway_child.py sim`` runs a simulated Ollama server with one fast model, in a process
of its own as a real Ollama is. ``gateway_child.py gateway STORE UPSTREAM`` runs the
gateway (uvicorn, a GpuLane with its durable store at synchronous=FULL) on that server,
in its own process so its peak memory can be read. Each prints one JSON line with its
URL and serves until its stdin closes. Run by bench_gateway.py, not by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from actors import Config, GpuLane
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import ModelProfile, SimulatedOllama
from actors.config import ApiKey, GatewaySettings
from actors.gateway import GatewayServer, create_app
from actors.logs import configure_logging
from protocol import Limits, StoreSettings

KEY = "bench-key-0001"
FAST = ModelProfile(
    load_seconds=0.0, first_token_seconds=0.0, tokens_per_second=1e6,
    mean_answer_tokens=8, max_answer_tokens=16, size_bytes=1_000_000,
)  # fmt: skip


def serve_sim() -> None:
    """The simulated model server alone."""
    with SimulatedOllama({"fast": FAST}) as sim:
        print(json.dumps({"sim": sim.url}), flush=True)
        sys.stdin.read()


def serve_gateway(store: str, upstream: str) -> None:
    """The gateway, with its GpuLane and an OllamaBackend on ``upstream``."""
    settings = GatewaySettings(api_keys=(ApiKey(KEY, "bench", admin=True),))
    config = Config(store=StoreSettings(path=store), gateway=settings, limits=Limits.off())
    backend = OllamaBackend(upstream, timeout=120.0)
    lane = GpuLane.start(config, backend=backend)
    try:
        app = create_app(lane, settings, upstream=upstream)
        with GatewayServer(app, log_level="error", backlog=4096) as server:
            print(json.dumps({"gateway": server.url}), flush=True)
            sys.stdin.read()
    finally:
        lane.stop()
        backend.close()


def main() -> None:
    configure_logging("warning")
    if sys.argv[1:2] == ["sim"]:
        serve_sim()
    else:
        serve_gateway(*sys.argv[2:4])


if __name__ == "__main__":
    main()
