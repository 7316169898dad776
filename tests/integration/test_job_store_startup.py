"""The JobStore refuses what it cannot use at start, with an error that says why: a corrupt,
damaged, locked, unreachable, read-only or newer SQLite file, a second store on one file,
and a ``store.url`` that names no PostgreSQL database (split from ``test_job_store.py``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pykka
import pytest
from job_store_helpers import make_spec
from store_engines import StoreEngine

from actors.config import Config
from actors.job_store import JobStore
from actors.runtime import ManualClock
from protocol import StoreError, StoreSettings, ValidationError
from protocol.messages import CountJobs, InsertJob


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> StoreSettings:
    return StoreSettings(path=str(tmp_path / "jobs.sqlite3"))


# --- start-up errors ------------------------------------------------------------------


def assert_refused(settings: StoreSettings, *words: str) -> StoreError:
    with pytest.raises(StoreError) as caught:
        JobStore.start(settings, ManualClock())
    text = str(caught.value)
    assert settings.path in text
    for word in words:
        assert word in text
    assert pykka.ActorRegistry.get_all() == []
    return caught.value


def test_a_corrupt_file_is_refused_at_start_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(bytes(range(256)) * 64)
    assert_refused(StoreSettings(path=str(path)), "not an SQLite database")
    assert path.read_bytes() == bytes(range(256)) * 64, "the file is left alone"


def test_a_database_with_a_damaged_page_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    settings = StoreSettings(path=str(path))
    store = JobStore.start(settings, ManualClock())
    for n in range(300):
        store.ask(InsertJob(make_spec(n)))
    store.stop()
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page : 3 * page] = b"\xa5" * page  # scribble over a page of the table
    path.write_bytes(bytes(data))
    assert_refused(settings, "corrupt")


def test_a_locked_database_is_refused_at_start_with_a_clear_error(
    sqlite_settings: StoreSettings,
) -> None:
    settings = sqlite_settings
    JobStore.start(settings, ManualClock()).stop()
    holder = sqlite3.connect(settings.path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        assert_refused(settings, "locked")
    finally:
        holder.close()


def test_a_second_store_on_the_same_database_is_refused(engine: StoreEngine) -> None:
    settings = engine.settings()
    store = JobStore.start(settings, ManualClock())
    try:
        reason = "in use by another gpulane store" if engine.is_postgres else "locked"
        with pytest.raises(StoreError, match=reason):
            JobStore.start(settings, ManualClock())
        assert store.ask(CountJobs())["queued"] == 0, "the first store is unharmed"
    finally:
        store.stop()


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        ("missing-dir", ("does not exist",)),
        ("parent-is-file", ("is not a directory",)),
        ("path-is-dir", ("is a directory",)),
    ],
)
def test_an_unusable_path_is_refused_at_start_with_a_clear_error(
    tmp_path: Path, layout: str, words: tuple[str, ...]
) -> None:
    if layout == "missing-dir":
        path = tmp_path / "nowhere" / "jobs.sqlite3"
    elif layout == "parent-is-file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "jobs.sqlite3"
    else:
        path = tmp_path / "dir.sqlite3"
        path.mkdir()
    assert_refused(StoreSettings(path=str(path)), *words)


def test_a_read_only_directory_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    real_access = __import__("os").access

    def access(path: Any, mode: int, **kw: Any) -> bool:  # root ignores chmod, so pretend
        return False if str(path) == str(directory) else real_access(path, mode, **kw)

    monkeypatch.setattr("actors.stores._files.os.access", access)
    assert_refused(StoreSettings(path=str(directory / "jobs.sqlite3")), "not writable")


def test_a_database_from_a_newer_gpulane_is_refused(sqlite_settings: StoreSettings) -> None:
    settings = sqlite_settings
    JobStore.start(settings, ManualClock()).stop()
    conn = sqlite3.connect(settings.path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    assert_refused(settings, "schema version 99", "newer")


@pytest.mark.parametrize("url", ["mysql://me:secret@db/jobs", "host=db password=secret"])
def test_a_store_url_that_names_no_postgresql_database_is_refused_by_name(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        StoreSettings(url=url)
    assert refused.value.field == "store.url" and "postgresql://" in str(refused.value)
    assert "secret" not in str(refused.value), "the value may hold a password"


def test_the_store_url_comes_from_the_environment_and_picks_postgresql() -> None:
    url = "postgresql://gpulane@db.example:5432/jobs"
    config = Config.from_mapping({}, env={"GPULANE_STORE_URL": url})
    assert (config.store.url, StoreSettings().url) == (url, "")
