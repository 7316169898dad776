"""A PostgreSQL server for tests: find it, give each test a database of its own, skip or fail.

The admin URL comes from ``GPULANE_TEST_POSTGRES_URL``, else the role that ``make postgres``
(and CI's ``.ci/run``, through ``.ci/postgres``) creates on the local cluster. The admin role
needs LOGIN CREATEDB CREATEROLE, not superuser: each ``fresh_database()`` is a new database
owned by a new role that alone may connect to it, so a test sees only its own tables and
connects with its own credentials, as a gateway would. Where no server answers,
``require_postgres()`` skips naming the URL and the cause, except under CI (``CI`` set and
not ``0``/``false``), where the tests must run and it fails instead (docs/testing.md, "The
PostgreSQL tests").
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

REQUIRED_VAR = "GPULANE_TEST_POSTGRES_REQUIRED"  # .ci/run: the tests must not skip
ENV_VAR = "GPULANE_TEST_POSTGRES_URL"
DEFAULT_URL = "postgresql://gpulane_test:gpulane_test@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT = 3  # seconds; libpq's least useful value is 2
NAME_PREFIX = "gpulane_t_"


def admin_url() -> str:
    """The admin URL the tests use: ``GPULANE_TEST_POSTGRES_URL``, else the local default."""
    return os.environ.get(ENV_VAR) or DEFAULT_URL


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


@functools.cache
def _unreachable(url: str) -> str | None:
    """Why ``url`` cannot be used (one line), or None when it answers; asked once a run."""
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def postgres_url() -> str | None:
    """The admin URL when a server answers on it, else None."""
    url = admin_url()
    return None if _unreachable(url) else url


def _in_ci() -> bool:
    """Whether this run is CI's, where the PostgreSQL tests must run rather than skip: ``CI``
    set (CI systems set it), or ``GPULANE_TEST_POSTGRES_REQUIRED`` (``.ci/run`` sets it)."""
    return any(
        os.environ.get(name, "").strip().lower() not in ("", "0", "false")
        for name in ("CI", REQUIRED_VAR)
    )


def require_postgres() -> str:
    """The admin URL; skips the test when no server answers (fails it under CI), naming the
    URL, what failed and how to start one."""
    url = admin_url()
    cause = _unreachable(url)
    if cause is None:
        return url
    source = ENV_VAR if os.environ.get(ENV_VAR) else "the default"
    message = (
        f"no PostgreSQL server at {redact(url)} ({source}): {cause}; start one with `make postgres`"
    )
    if _in_ci():
        pytest.fail(f"CI must run the PostgreSQL tests: {message}", pytrace=False)
    pytest.skip(message)


def _with_login(url: str, user: str, password: str, database: str) -> str:
    """``url`` on the same server, logged in as ``user`` to ``database``."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, path="/" + quote(database, safe="")))


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new database owned by a new role (unique names); yields its URL with that role's
    credentials, and drops both after, ending any session still on the database.

    Skips (fails under CI) where no server answers. In a fixture::

        @pytest.fixture
        def pg_url() -> Iterator[str]:
            with fresh_database() as url:
                yield url
    """
    admin = require_postgres()
    name = NAME_PREFIX + secrets.token_hex(6)
    password = secrets.token_hex(16)
    role, database = sql.Identifier(name), sql.Identifier(name)
    with psycopg.connect(admin, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password))
        )
        # PostgreSQL 15: a CREATEROLE admin may give a database to a role it is a member of.
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(database, role))
        # Only its owner (and the admin) may connect: another test's role is refused.
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(database))
    try:
        yield _with_login(admin, name, password, name)
    finally:
        with psycopg.connect(admin, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
            # WITH (FORCE) ends the sessions a test (or a store it did not close) left open.
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
