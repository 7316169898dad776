"""procrastinate and pgqueuer enqueueing bench_submit.py's job on PostgreSQL, in a process of
their own.

bench_submit.py runs this with the `bench` extra's interpreter (``.venv/bench/bin/python``,
which ``make bench`` installs; the main environment does not carry these peers):

    pg_peers.py --versions                  # one JSON line: each peer's version
    pg_peers.py SYSTEM SUBMITTERS TOTAL     # stdin: {"url": ..., "spec": {...}}

The database URL comes on stdin, not on the command line, since it holds a password. The
database is fresh and empty; the peer installs its own schema, warms up, then ``TOTAL``
submits go through ``SUBMITTERS`` threads, each doing one enqueue at a time and returning
only once the job is committed (``synchronous_commit`` on, the server's default). It prints
one JSON line: submits per second and every latency in seconds. The job's payload is the
spec's JSON, encoded on every submit (with the standard library's encoder; gpulane uses
orjson, a few microseconds less per submit), as a caller with a new job would.

What each peer does, read from its source (procrastinate 3.10, pgqueuer 1.6) and docs:

- **procrastinate**: ``App(connector=PsycopgConnector(conninfo=URL, min_size=N,
  max_size=N))``, the connector its docs recommend, opened with the synchronous
  ``app.open()``: the async connector then hands its sync calls to a
  ``SyncPsycopgConnector`` (docs: "Control the way synchronous calls to defer are handled"),
  a ``psycopg_pool.ConnectionPool`` sized here to one connection per submitter (its default
  is 4). The schema is ``app.schema_manager.apply_schema()``, what ``procrastinate schema
  --apply`` runs. Each submit is a task's sync ``defer(spec=...)``: the pool checks the
  connection (an empty query, as procrastinate configures the pool), then one call of
  ``procrastinate_defer_jobs_v1`` in a transaction the pool commits as it takes the
  connection back.
- **pgqueuer**: the schema by ``Queries(PsycopgDriver(conn)).install()`` on an async
  psycopg connection (what ``pgq install`` runs), at its default durability (``durable``:
  every table logged, none UNLOGGED). Each submitter thread has its own
  ``psycopg.connect(URL, autocommit=True)`` in a ``SyncQueries(SyncPsycopgDriver(conn))``,
  the synchronous enqueue its docs show, and calls ``enqueue("run_job", payload)``: one
  statement (the id's ``nextval``, the job's INSERT and its log row, in one CTE) that
  autocommit commits.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import procrastinate
import psycopg
from pgqueuer.db import PsycopgDriver, SyncPsycopgDriver
from pgqueuer.queries import Queries, SyncQueries
from submitters import Submit, measure, warm_up

PEERS = ("procrastinate", "pgqueuer")


@contextmanager
def procrastinate_peer(url: str, spec: dict[str, Any], submitters: int) -> Iterator[list[Submit]]:
    """A procrastinate app with its schema installed; one sync ``defer`` per submit."""
    connector = procrastinate.PsycopgConnector(
        conninfo=url, min_size=submitters, max_size=submitters
    )
    app = procrastinate.App(connector=connector)

    @app.task(name="run_job", queue="bench")
    def run_job(spec: dict[str, Any]) -> None:
        """Never runs: only enqueueing is measured."""

    with app.open():
        app.schema_manager.apply_schema()
        yield [lambda: run_job.defer(spec=spec)] * submitters


@contextmanager
def pgqueuer_peer(url: str, spec: dict[str, Any], submitters: int) -> Iterator[list[Submit]]:
    """pgqueuer's schema installed; a connection and a ``SyncQueries`` per submitter."""

    async def install() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await Queries(PsycopgDriver(conn)).install()

    asyncio.run(install())
    conns = [psycopg.connect(url, autocommit=True) for _ in range(submitters)]
    try:
        yield [_enqueuer(SyncQueries(SyncPsycopgDriver(conn)), spec) for conn in conns]
    finally:
        for conn in conns:
            conn.close()


def _enqueuer(queries: SyncQueries, spec: dict[str, Any]) -> Submit:
    """One submitter's enqueue of the spec's JSON through its own connection."""
    return lambda: queries.enqueue("run_job", json.dumps(spec).encode())


FACTORIES = {"procrastinate": procrastinate_peer, "pgqueuer": pgqueuer_peer}


def main() -> None:
    if sys.argv[1:] == ["--versions"]:
        print(json.dumps({name: version(name) for name in PEERS}))
        return
    system, submitters, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    given = json.loads(sys.stdin.readline())
    with FACTORIES[system](given["url"], given["spec"], submitters) as submits:
        for submit in dict.fromkeys(submits):  # each connection once
            warm_up(submit)
        rate, latencies = measure(submits, total)
    print(json.dumps({"submits_per_s": rate, "latencies_s": latencies}))


if __name__ == "__main__":
    main()
