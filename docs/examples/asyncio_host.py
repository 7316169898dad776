"""An asyncio bot host embedding gpulane: submits internal and external work and streams it.

Run it with the project's environment: ``.venv/bin/python docs/examples/asyncio_host.py``.
It starts a simulated Ollama server on loopback, so no GPU is needed.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from actors import Config, GpuLane
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import SimulatedOllama
from actors.logs import configure_logging
from protocol import JobSpec, Lane, Priority, StoreSettings


async def main(db_path: Path, server_url: str) -> int:
    backend = OllamaBackend(server_url)
    lane = GpuLane.start(Config(store=StoreSettings(path=str(db_path))), backend=backend)
    try:
        question = [{"role": "user", "content": "Summarise the logs"}]
        bot = lane.submit(
            JobSpec.chat(model="llama3.2", messages=question, lane=Lane.INTERNAL,
                         priority=Priority.HIGH, caller="bot")
        )  # fmt: skip
        visitor = lane.submit(
            JobSpec.generate(model="llama3.2", prompt="Tell me a story", caller="visitor")
        )
        pieces = [chunk async for chunk in bot.stream()]
        story = await visitor
        print(f"bot streamed {len(pieces)} chunks: {''.join(pieces)[:60]!r}...")
        print(f"visitor got {len(story.split())} words")
        return 0 if pieces and story else 1
    finally:
        lane.stop()
        backend.close()


if __name__ == "__main__":
    configure_logging("warning")
    with tempfile.TemporaryDirectory() as tmp, SimulatedOllama(speed=20.0) as sim:
        sys.exit(asyncio.run(main(Path(tmp) / "jobs.sqlite3", sim.url)))
