"""The job store tests on both engines: SQLite in a temporary file, PostgreSQL in a database
from ``postgres_kit`` (one per test module, emptied before each test: a fresh database costs
100-300 ms). tests/conftest.py turns these helpers into the fixtures ``engine_home`` (once
per engine and module) and ``engine``, so a test that takes ``engine`` runs on both.

PostgreSQL cases skip naming the missing server, and fail under CI (``postgres_kit``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from postgres_kit import fresh_database

from actors.runtime import Clock, ManualClock
from actors.stores import JobDB, PgJobDB
from protocol.config import StoreSettings

ENGINES = ("sqlite", "postgres")
_SQLITE_HOME = "sqlite"  # the home of the SQLite engine: each test's own tmp_path


@contextmanager
def engine_home_for(engine: str) -> Iterator[str]:
    """Where a test module's stores live: ``"sqlite"``, or a fresh PostgreSQL database's URL."""
    if engine == "sqlite":
        yield _SQLITE_HOME
        return
    with fresh_database() as url:
        yield url


def empty_database(url: str) -> None:
    """End every other session on the database (a store a failed test left open holds the
    advisory lock) and drop gpulane's tables and its fence function, so the next store
    starts from version 0."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND usename = current_user "
            "AND pid <> pg_backend_pid()"
        )
        conn.execute(
            "DROP TABLE IF EXISTS webhook_outbox, jobs, gpulane_schema, gpulane_lease CASCADE"
        )
        conn.execute("DROP FUNCTION IF EXISTS gpulane_fence")


class StoreEngine:
    """One test's empty job database on one engine: open it, or name it in StoreSettings."""

    def __init__(self, name: str, *, path: str = "", url: str = "") -> None:
        self.name = name
        self.path = path  # SQLite's file
        self.url = url  # PostgreSQL's database

    @classmethod
    def in_home(cls, home: str, tmp_path: Path) -> StoreEngine:
        """An empty database in ``home`` (``engine_home_for``) for one test."""
        if home == _SQLITE_HOME:
            return cls("sqlite", path=str(tmp_path / "jobs.sqlite3"))
        empty_database(home)
        return cls("postgres", url=home)

    @property
    def is_postgres(self) -> bool:
        return self.name == "postgres"

    @property
    def durable_level(self) -> str:
        """What the store's snapshot calls its durable commits: SQLite's ``synchronous``,
        PostgreSQL's ``synchronous_commit`` (a volatile batch sets it off for itself only)."""
        return "on" if self.is_postgres else "FULL"

    def open(self, clock: Clock | None = None) -> JobDB | PgJobDB:
        """The engine's database opened directly, without an actor."""
        clock = ManualClock() if clock is None else clock
        return PgJobDB.open(self.url, clock) if self.is_postgres else JobDB.open(self.path, clock)

    def settings(self, **fields: Any) -> StoreSettings:
        """StoreSettings naming this database, with ``fields`` besides."""
        where = {"url": self.url} if self.is_postgres else {"path": self.path}
        return StoreSettings(**where, **fields)
