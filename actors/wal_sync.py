"""Pipelined group commit: fsync the write-ahead log off the store's thread, then answer.

With ``synchronous=FULL`` SQLite fsyncs the WAL inside COMMIT, on the store's own
thread, which then sits idle for the whole flush. Instead the store commits with
``synchronous=NORMAL`` (the WAL is written but not flushed) and hands the batch's
replies here: this thread fsyncs the WAL file and only then tells the listener and
answers the writers. Durability is that of FULL (no write is acknowledged before
the WAL holding it is on disk; checkpoints flush the WAL first under NORMAL too),
and the next batch is applied while this one flushes.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from actors.supervision_refs import PendingAsk
from protocol import Job, StoreError

__all__ = ["Reply", "WalSyncer", "answer", "running_on_linux"]

log = structlog.get_logger("gpulane.job_store")

Reply = tuple[Any, Job | Exception | None]  # (where the answer goes, or None; the outcome)


class WalSyncer:
    """One thread that makes committed batches durable, then releases their replies."""

    def __init__(self, database_path: str, listener: Callable[[Job], None] | None) -> None:
        self._wal_path = database_path + "-wal"
        self._directory = str(Path(database_path).resolve().parent)
        self._listener = listener
        self._fd: int | None = None
        self._batches: queue.SimpleQueue[Sequence[Reply] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gpulane-wal-sync", daemon=True)
        self._thread.start()
        self.syncs = 0

    def submit(self, replies: Sequence[Reply]) -> None:
        """Answer ``replies`` once the WAL, as committed now, is on disk."""
        self._batches.put(replies)

    def close(self) -> None:
        """Flush and answer what is pending, then stop the thread and close the file."""
        self._batches.put(None)
        self._thread.join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _run(self) -> None:
        while True:
            batches = [self._batches.get()]
            while True:
                try:
                    batches.append(self._batches.get_nowait())
                except queue.Empty:
                    break
            stopping = None in batches
            pending = [batch for batch in batches if batch is not None]
            if pending:
                self._flush(pending)
            if stopping:
                return

    def _flush(self, batches: list[Sequence[Reply]]) -> None:
        error: StoreError | None = None
        try:
            os.fsync(self._wal_fd())
            self.syncs += 1
        except OSError as exc:
            error = StoreError(f"cannot flush the job database log {self._wal_path}: {exc}")
            log.error("job_store.flush_failed", path=self._wal_path, error=str(exc))
        for batch in batches:
            for future, outcome in batch:
                final = error if error is not None and isinstance(outcome, Job) else outcome
                if isinstance(final, Job) and self._listener is not None:
                    self._listener(final)
                if future is not None:
                    answer(future, final)

    def _wal_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._wal_path, os.O_RDONLY)
            directory = os.open(self._directory, os.O_RDONLY)
            try:
                os.fsync(directory)  # the log file's own directory entry must be durable too
            finally:
                os.close(directory)
        return self._fd


def answer(target: Any, outcome: Job | Exception | None) -> None:
    """Give a writer its outcome: ``target`` is a StableRef's PendingAsk or a pykka future."""
    if isinstance(target, PendingAsk):
        if isinstance(outcome, Exception):
            target.fail(outcome)
        else:
            target.resolve(outcome)
    elif isinstance(outcome, Exception):
        target.set_exception(exc_info=(type(outcome), outcome, outcome.__traceback__))
    else:
        target.set(outcome)


def running_on_linux() -> bool:
    """fsync on a read-only descriptor flushes the file on Linux; elsewhere keep SQLite's FULL."""
    return sys.platform.startswith("linux")
