"""Suite-wide guards: every test must stop the actors and threads it starts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pykka
import pytest


@pytest.fixture(autouse=True)
def no_leaked_threads_or_actors() -> Iterator[None]:
    """Fail a test that leaves an actor running or a thread behind (ARCHITECTURE.md section 8)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        actors = pykka.ActorRegistry.get_all()
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not actors and not extra:
            return
        if time.monotonic() > deadline:
            pykka.ActorRegistry.stop_all()
            names = [t.name for t in extra]
            pytest.fail(f"test leaked {len(actors)} actor(s) and threads {names}")
        time.sleep(0.01)


pytest_plugins = ["actors.testing"]
