"""The gateway under benchmark, in its own process so its peak memory can be read.

Starts a simulated Ollama server with one fast model, a GpuLane on it (durable store,
synchronous=FULL) and the gateway on a loopback port; prints one JSON line with both
URLs; serves until its stdin closes. Run by bench_gateway.py, not by hand.
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


def main() -> None:
    configure_logging("warning")
    store = sys.argv[1]
    settings = GatewaySettings(api_keys=(ApiKey(KEY, "bench", admin=True),))
    config = Config(store=StoreSettings(path=store), gateway=settings, limits=Limits.off())
    with SimulatedOllama({"fast": FAST}) as sim:
        backend = OllamaBackend(sim.url, timeout=120.0)
        lane = GpuLane.start(config, backend=backend)
        try:
            app = create_app(lane, settings, upstream=sim.url)
            with GatewayServer(app, log_level="error", backlog=4096) as server:
                print(json.dumps({"gateway": server.url, "sim": sim.url}), flush=True)
                sys.stdin.read()
        finally:
            lane.stop()
            backend.close()


if __name__ == "__main__":
    main()
