"""The PostgreSQL test kit (tests/kits/postgres_kit.py): each fresh database belongs to a role
of its own, is closed to other tests' roles, and is gone after; no server skips, or fails in CI.
"""

from __future__ import annotations

import socket

import psycopg
import pytest
from postgres_kit import ENV_VAR, REQUIRED_VAR, fresh_database, redact, require_postgres


def _exists(admin: str, name: str) -> tuple[bool, bool]:
    """Whether a database and a role named ``name`` exist on the admin's server."""
    with psycopg.connect(admin, autocommit=True) as conn:
        database = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        has_database = database.fetchone() is not None
        role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        return has_database, role.fetchone() is not None


def test_a_fresh_database_is_usable_by_its_own_role() -> None:
    with fresh_database() as url, psycopg.connect(url) as conn:
        user, database = conn.execute("SELECT current_user, current_database()").fetchone() or ()
        assert user == database
        assert database.startswith("gpulane_t_")
        conn.execute("CREATE TABLE jobs (id text PRIMARY KEY, seq bigserial)")
        conn.execute("INSERT INTO jobs (id) VALUES ('a'), ('b')")
        assert conn.execute("SELECT id FROM jobs ORDER BY seq").fetchall() == [("a",), ("b",)]


def test_two_fresh_databases_share_no_tables_and_refuse_each_others_roles() -> None:
    with fresh_database() as first, fresh_database() as second:
        with psycopg.connect(first, autocommit=True) as conn:
            conn.execute("CREATE TABLE jobs (id text)")
        with psycopg.connect(second, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('jobs')").fetchone() == (None,)
        trespass = first.rpartition("/")[0] + "/" + second.rpartition("/")[2]
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(trespass).close()


def test_a_fresh_database_and_its_role_are_gone_after_even_with_a_session_left_open() -> None:
    admin = require_postgres()
    with fresh_database() as url:
        name = url.rpartition("/")[2]
        left_open = psycopg.connect(url, autocommit=True)
        assert _exists(admin, name) == (True, True)
    assert _exists(admin, name) == (False, False)
    with pytest.raises(psycopg.OperationalError):
        left_open.execute("SELECT 1")
    left_open.close()


def _nothing_listening() -> str:
    """A URL on a loopback port where nothing listens (the OS's free port, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://someone:s3cret@127.0.0.1:{port}/postgres"


def test_no_server_skips_naming_the_url_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = _nothing_listening()
    monkeypatch.setenv(ENV_VAR, url)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(REQUIRED_VAR, raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_postgres()
    assert redact(url) in str(skipped.value)
    assert "s3cret" not in str(skipped.value)
    assert "make postgres" in str(skipped.value)


def test_no_server_fails_in_ci_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    url = _nothing_listening()
    monkeypatch.setenv(ENV_VAR, url)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_postgres()
    assert "CI must run the PostgreSQL tests" in str(failed.value)
    assert redact(url) in str(failed.value)
