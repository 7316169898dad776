"""Suite-wide guards: every test must stop the actors and threads it starts; and the job
store's engines, for the store tests that take ``engine`` (tests/kits/store_engines.py).

The fixtures ``lane``, ``fake_gpu`` and ``manual_clock`` come from gpulane's pytest plugin
(``actors.testing.pytest_plugin``), which installing gpulane registers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
from store_engines import ENGINES, StoreEngine, engine_home_for

from actors.testing import wait_until


@pytest.fixture(scope="module", params=ENGINES)
def engine_home(request: pytest.FixtureRequest) -> Iterator[str]:
    """Where a test module's stores live, once per engine: SQLite (each test's own file) or
    a PostgreSQL database made for the module (skipped naming the server where none is)."""
    with engine_home_for(request.param) as home:
        yield home


@pytest.fixture
def engine(engine_home: str, tmp_path: Path) -> StoreEngine:
    """A test's store engine in its module's home, emptied for it."""
    return StoreEngine.in_home(engine_home, tmp_path)


@pytest.fixture(autouse=True)
def no_leaked_threads_or_actors() -> Iterator[None]:
    """Fail a test that leaves an actor running or a thread behind (docs/architecture.md
    section 8). Threads end on their own after a stop, so the guard waits for them."""
    before = set(threading.enumerate())
    yield

    def leaked() -> tuple[list[pykka.ActorRef[pykka.Actor]], list[str]]:
        extra = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
        return pykka.ActorRegistry.get_all(), extra

    try:
        wait_until(lambda: leaked() == ([], []), 5.0)
    except AssertionError:
        actors, names = leaked()
        pykka.ActorRegistry.stop_all()
        pytest.fail(f"test leaked {len(actors)} actor(s) and threads {names}")
