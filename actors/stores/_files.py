"""What is wrong with a job database's file, in words: where it may live, its synchronous
mode, a damaged file at open, and SQLite's errors with their likely cause. Shared by the
SQLite engine's modules."""

from __future__ import annotations

import os
import sqlite3

from protocol.errors import StoreError, ValidationError

__all__ = ["check_edges", "check_location", "explain", "sync_mode"]


def sync_mode(synchronous: str) -> str:
    """The synchronous mode named, upper case; a ValidationError for any but FULL and NORMAL."""
    mode = str(synchronous).upper()
    if mode not in ("FULL", "NORMAL"):
        raise ValidationError(
            "store.synchronous", f"unknown mode {synchronous!r}", ("FULL", "NORMAL")
        )
    return mode


def check_location(path: str) -> None:
    """Refuse a path SQLite could not use, with the reason in words."""
    if path == ":memory:" or path.startswith("file:"):
        raise StoreError(f"job database {path!r}: store.path must name a file on disk")
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise StoreError(f"cannot open job database {path}: it is a directory, not a file")
    if not os.path.isdir(directory):
        what = "does not exist" if not os.path.exists(directory) else "is not a directory"
        raise StoreError(f"cannot open job database {path}: the directory {directory} {what}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(
            f"cannot open job database {path}: the directory {directory} is not writable "
            "(WAL mode needs to create files next to the database)"
        )
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"cannot open job database {path}: the file is not readable and writable")


_CAUSES = {
    "SQLITE_NOTADB": "the file is not an SQLite database (corrupt, or some other kind of file)",
    "SQLITE_CORRUPT": "the database file is corrupt",
    "SQLITE_BUSY": "the database is locked by another process (is another gpulane using it?)",
    "SQLITE_LOCKED": "the database is locked by another connection",
    "SQLITE_CANTOPEN": "the file cannot be opened or created",
    "SQLITE_READONLY": "the file or its directory is read-only",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "an I/O error occurred",
    "SQLITE_PERM": "permission denied",
}


def explain(exc: sqlite3.Error) -> str:
    """SQLite's error plus, where we know it, the cause in plain words."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    cause = _CAUSES.get("_".join(name.split("_")[:2]))  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
    return f"{cause} ({exc})" if cause else str(exc)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _edge_probes(conn: sqlite3.Connection) -> list[tuple[str, str, list[str]]]:
    """(b-tree name, query without its ORDER BY, the columns that order it by the tree)
    for every table and index in the file."""
    probes = []
    schema = "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE rootpage > 0"
    for kind, name, table, sql in conn.execute(schema).fetchall():
        if kind == "table":  # every table of ours has a rowid
            probes.append((name, f"SELECT * FROM {_quoted(name)}", ["rowid"]))
            continue
        columns = [_quoted(row[2]) for row in conn.execute(f"PRAGMA index_info({name!r})")]
        query = f"SELECT {', '.join(columns)} FROM {_quoted(table)} INDEXED BY {_quoted(name)}"
        if sql is not None and " WHERE " in sql.upper():  # a partial index: only a query
            query += sql[sql.upper().rindex(" WHERE ") :]  # that implies its WHERE walks it
        probes.append((name, query, columns))
    return probes


def check_edges(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a damaged file at open by reading the first and last entry of every b-tree.

    That reads the header, the schema, and each tree's root and its pages down both
    edges: a few pages per tree, however long the file's history (``PRAGMA quick_check``
    reads every page: about 1.2 s per GB). A page damaged inside a tree is not seen here;
    the request that reaches it fails with a StoreError saying the file is corrupt
    (docs/reliability.md, "A damaged job database").
    """
    reading = "sqlite_schema"
    try:
        for tree, query, columns in _edge_probes(conn):
            reading = tree
            for direction in ("ASC", "DESC"):
                order = ", ".join(f"{column} {direction}" for column in columns)
                conn.execute(f"{query} ORDER BY {order} LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        errorname = getattr(exc, "sqlite_errorname", "") or ""
        if not errorname.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            raise
        raise StoreError(
            f"job database {path} is corrupt (reading {reading}): {explain(exc)}"
        ) from exc
