"""LiteLLM's proxy as bench_gateway.py measures it: ``litellm_child.py UPSTREAM DIR LIFETIME_S``.

Runs with the `bench` extra's interpreter (``.venv/bench/bin/python``, which ``make bench``
installs) and starts the proxy as its command line does (``litellm --config FILE --host
127.0.0.1 --port N``, one uvicorn worker, its defaults otherwise) with one model, ``fast``,
on its ``ollama_chat`` provider in front of the Ollama server at UPSTREAM. It makes no
call beyond loopback: the bundled model cost map (``LITELLM_LOCAL_MODEL_COST_MAP``), its
telemetry off, ``OLLAMA_API_BASE`` at UPSTREAM (at start-up it asks the default Ollama
address otherwise), no ``.env`` read (``LITELLM_MODE=PRODUCTION``), no database. Prints
one JSON line with its URL and master key once it answers (its config and its own output,
``proxy.log``, go in DIR), and exits when its stdin closes or after LIFETIME_S, whichever
comes first.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
from pathlib import Path
from typing import TextIO

import httpx

from actors.testing import wait_until

READY_WITHIN_S = 120.0  # its start-up imports take 5 to 20 s on 2 busy cores


def free_port() -> int:
    """A loopback port free now (the proxy binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def announce_when_ready(url: str, key: str, out: TextIO) -> None:
    """Print the URL and key once the proxy answers its liveness route; exit if it never does."""

    def live() -> bool:
        try:
            return httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(live, READY_WITHIN_S, "LiteLLM's proxy did not come up")
    except AssertionError:
        os._exit(2)
    out.write(json.dumps({"litellm": url, "key": key}) + "\n")
    out.flush()


def exit_when_parent_goes(lifetime_s: float) -> None:
    """End the process when stdin closes (the benchmark is done or gone) or at its lifetime."""
    deadline = threading.Timer(lifetime_s, os._exit, (3,))
    deadline.daemon = True  # a proxy that stops by itself is not kept alive by it
    deadline.start()
    sys.stdin.read()
    os._exit(0)


def main() -> None:
    upstream, work, lifetime_s = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    config = {  # YAML is a superset of JSON
        "model_list": [
            {
                "model_name": "fast",
                "litellm_params": {"model": "ollama_chat/fast", "api_base": upstream},
            }
        ]
    }
    (work / "config.yaml").write_text(json.dumps(config))
    key = "sk-" + secrets.token_hex(32)
    os.environ.update(
        LITELLM_MASTER_KEY=key,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY_DISABLED="true",
        LITELLM_MODE="PRODUCTION",
        OLLAMA_API_BASE=upstream,
    )
    # The first line on the real stdout is ours; the proxy's banner and logs go to a file.
    out = os.fdopen(os.dup(1), "w")
    log = (work / "proxy.log").open("w")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    threading.Thread(target=exit_when_parent_goes, args=(lifetime_s,), daemon=True).start()
    threading.Thread(target=announce_when_ready, args=(url, key, out), daemon=True).start()

    from litellm.proxy.proxy_cli import run_server  # its imports take seconds: after the pipes

    args = ["--config", str(work / "config.yaml"), "--host", "127.0.0.1", "--port", str(port)]
    run_server.main(args=args, prog_name="litellm")


if __name__ == "__main__":
    main()
