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
from protocol.messages import InsertJob, ListJobs

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


def middle_leaf(path: Path, table: str) -> int:
    """A leaf page of ``table`` in the middle of its b-tree: a child of its root (an interior
    table page, type 0x05) that is neither the first nor the right-most one, so not on an
    edge the open check reads (page layout from sqlite.org/fileformat2.html, 1.6)."""
    data = path.read_bytes()
    root = root_page(path, table)
    page = data[(root - 1) * PAGE : root * PAGE]
    assert page[0] == 0x05, "the table must be deep enough for an interior root"
    cells = int.from_bytes(page[3:5], "big")
    pointer = int.from_bytes(page[12 + 2 * (cells // 2) : 14 + 2 * (cells // 2)], "big")
    child = int.from_bytes(page[pointer : pointer + 4], "big")
    assert data[(child - 1) * PAGE] == 0x0D, "a table leaf page"
    return child


def test_a_page_damaged_mid_tree_passes_the_open_check_and_fails_the_read_that_reaches_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    filled(path, 3000)
    scribble(path, middle_leaf(path, "jobs"))
    db = JobDB.open(str(path), ManualClock())  # the edges are whole: it opens
    try:
        with pytest.raises(StoreError, match="corrupt"):
            db.list_jobs(ListJobs(limit=10_000))
        assert db.get_by_seq(1).seq == 1  # a read that does not reach the page still works
    finally:
        db.close()
