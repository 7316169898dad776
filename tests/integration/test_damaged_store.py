"""A damaged job database at open: the check reads each b-tree's edges, not the whole file
(``actors/stores/_files.py``, ``check_edges``; docs/reliability.md)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from job_store_helpers import make_spec

from actors.runtime import ManualClock
from actors.stores import JobDB
from protocol.errors import StoreError
from protocol.messages import InsertJob

PAGE = 4096


def filled(path: Path, jobs: int) -> None:
    db = JobDB.open(str(path), ManualClock())
    it = iter([InsertJob(make_spec(n)) for n in range(jobs)])
    db.write_batch(lambda: next(it, None))
    db.close()


def scribble(path: Path, page: int) -> None:
    """Overwrite page number ``page`` (1-based) with a byte no b-tree page starts with."""
    data = bytearray(path.read_bytes())
    data[(page - 1) * PAGE : page * PAGE] = b"\xa5" * PAGE
    path.write_bytes(bytes(data))


def root_page(path: Path, name: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(
            conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = ?", (name,)).fetchone()[0]
        )
    finally:
        conn.close()


def test_an_index_with_a_damaged_root_is_refused_at_open_naming_the_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    filled(path, 300)
    scribble(path, root_page(path, "jobs_by_state"))
    with pytest.raises(StoreError, match=r"is corrupt \(reading jobs_by_state\)") as caught:
        JobDB.open(str(path), ManualClock())
    assert str(path) in str(caught.value)
