"""The JobStore actor: owns the job database and commits the writes waiting in its mailbox together.

Group commit: when a write (InsertJob or Transition) reaches the head of the mailbox,
the store also takes the asked writes queued right behind it, applies them all in one
transaction (a refused write fails only its asker), commits once, and only then
answers every one of them. A submit is therefore never acknowledged before its row
is durable, and one fsync serves the whole batch.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

import pykka
import structlog

from actors.clock import Clock
from actors.job_db import JobDB, Recovery, WriteMessage
from actors.wal_sync import Reply, WalSyncer, answer, running_on_linux
from protocol.config import StoreSettings
from protocol.job import Job
from protocol.messages import (
    CountJobs,
    GetJob,
    GetJobBySeq,
    InsertJob,
    JobStats,
    ListJobs,
    LoadQueuedJobs,
    PruneJobs,
    StoreSnapshot,
    Transition,
)

if TYPE_CHECKING:
    from pykka._actor import ActorInbox
    from pykka._envelope import Envelope

__all__ = ["BatchingInbox", "JobStore"]

log = structlog.get_logger("gpulane.job_store")


class BatchingInbox(queue.Queue["Envelope[Any]"]):
    """A mailbox whose one consumer may take the head envelope only if it qualifies.

    It also keeps the reply of every asked write for the store to give itself, after
    the write is durable, instead of pykka answering when the handler returns.
    """

    def __init__(self) -> None:
        super().__init__()
        self._held_reply: Any = None

    def get(self, block: bool = True, timeout: float | None = None) -> Envelope[Any]:
        """The next envelope; an asked write's reply future is held back for the store."""
        envelope = super().get(block, timeout)
        if envelope.reply_to is not None and isinstance(envelope.message, (InsertJob, Transition)):
            self._held_reply, envelope.reply_to = envelope.reply_to, None
        return envelope

    def take_held_reply(self) -> Any:
        """The reply future of the write just handed out (None for a told write)."""
        held, self._held_reply = self._held_reply, None
        return held

    def take_if(self, predicate: Callable[[Envelope[Any]], bool]) -> Envelope[Any] | None:
        """Pop and return the head envelope if ``predicate`` holds for it, else None.

        Only the actor's own thread consumes, so the head cannot change between the
        test and the pop; the mutex keeps producers out while we look.
        """
        with self.mutex:
            if not self.queue or not predicate(self.queue[0]):
                return None
            envelope: Envelope[Any] = self._get()
            self.not_full.notify()
            return envelope


def _is_asked_write(envelope: Envelope[Any]) -> bool:
    """Writes that may join a batch: only asked ones, so a failing told write leads its own."""
    return envelope.reply_to is not None and isinstance(envelope.message, (InsertJob, Transition))


class JobStore(pykka.ThreadingActor):
    """The one owner of the job database (ARCHITECTURE.md sections 5 and 6).

    Start it with ``JobStore.start(settings, clock, listener)``; ``listener`` (optional)
    hears every job the store has just committed, before any writer is answered, so
    the facade can tell waiting callers only about durable outcomes. The database is opened,
    checked,
    migrated and recovered in the constructor, which runs in the starter's thread, so
    a corrupt, locked or unwritable file raises StoreError from ``start`` itself
    instead of being logged by a thread nobody watches. Recovery puts jobs left in
    loading or running back to queued without charging an attempt.

    Messages (all by ``ask``; a told write that fails is a crash, as for any handler):

    - InsertJob → Job (queued), after its commit
    - Transition → Job, after its commit; IllegalTransitionError, JobNotFoundError,
      ValidationError for that write alone
    - GetJob, GetJobBySeq → Job or JobNotFoundError
    - ListJobs → tuple[Job, ...]; LoadQueuedJobs → every queued Job in sequence order
    - CountJobs → read-only {state: count}; JobStats → tuple[LaneStats, ...]
    - PruneJobs → number of terminal jobs deleted
    - StoreSnapshot → read-only mapping of the file, schema version and commit counters
    """

    def __init__(
        self,
        settings: StoreSettings,
        clock: Clock,
        listener: Callable[[Job], None] | None = None,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._listener = listener
        pipelined = settings.synchronous == "FULL" and running_on_linux()
        self._db = JobDB.open(
            settings.path, clock, synchronous="NORMAL" if pipelined else settings.synchronous
        )
        try:
            self._recovery: Recovery = self._db.recover()
        except BaseException:
            self._db.close()
            raise
        self._syncer = WalSyncer(settings.path, listener) if pipelined else None
        log.info(
            "job_store.recovered",
            path=settings.path,
            requeued=self._recovery.requeued,
            queued=self._recovery.queued,
        )
        inbox = self.actor_inbox
        assert isinstance(inbox, BatchingInbox)
        self._inbox = inbox

    @staticmethod
    def _create_actor_inbox() -> ActorInbox:
        return BatchingInbox()

    def on_stop(self) -> None:
        """Answer the writes still being flushed, then close the database (its lock too)."""
        self._close()

    def _close(self) -> None:
        if self._syncer is not None:
            self._syncer.close()
        self._db.close()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the database so a restarted store can open it."""
        self._close()

    def on_receive(self, message: Any) -> Any:
        """Handle one protocol message; writes take their queued neighbours along."""
        if isinstance(message, (InsertJob, Transition)):
            self._write(message, self._inbox.take_held_reply())
            return None
        db = self._db
        if isinstance(message, GetJob):
            return db.get(message.job_id)
        if isinstance(message, GetJobBySeq):
            return db.get_by_seq(message.seq)
        if isinstance(message, ListJobs):
            return db.list_jobs(message)
        if isinstance(message, LoadQueuedJobs):
            return db.queued_jobs()
        if isinstance(message, CountJobs):
            return db.count_by_state()
        if isinstance(message, JobStats):
            return db.lane_stats()
        if isinstance(message, PruneJobs):
            deleted = db.prune(message.older_than_s)
            log.info("job_store.pruned", deleted=deleted, older_than_s=message.older_than_s)
            return deleted
        if isinstance(message, StoreSnapshot):
            return self._snapshot()
        raise TypeError(f"JobStore cannot handle {type(message).__name__}")

    def _write(self, first: WriteMessage, first_reply: Any) -> None:
        """Commit ``first`` with the asked writes queued behind it; answer them once durable.

        Draining stops at the first message that is not an asked write, so every
        sender's messages are still handled in the order sent. With pipelined flushing
        the answers (and the listener) wait for the WAL fsync on the syncer thread while
        this thread goes on with the next batch. A told write that fails is a crash.
        """
        drained: list[Envelope[Any]] = []
        started = False

        def take() -> WriteMessage | None:
            nonlocal started
            if not started:
                started = True
                return first
            if len(drained) + 1 >= self._settings.max_batch:
                return None
            envelope = self._inbox.take_if(_is_asked_write)
            if envelope is None:
                return None
            drained.append(envelope)
            message: WriteMessage = envelope.message
            return message

        outcomes = self._db.write_batch(take)
        replies: list[Reply] = [(first_reply, outcomes[0])]
        replies += [(env.reply_to, out) for env, out in zip(drained, outcomes[1:], strict=True)]
        if self._syncer is not None:
            self._syncer.submit(replies)
        else:
            for future, outcome in replies:
                if isinstance(outcome, Job) and self._listener is not None:
                    self._listener(outcome)
                if future is not None:
                    answer(future, outcome)
        if first_reply is None and isinstance(outcomes[0], Exception):
            raise outcomes[0]

    def _snapshot(self) -> Mapping[str, Any]:
        db = self._db
        journal_mode, synchronous = db.durability()
        return MappingProxyType(
            {
                "path": db.path,
                "journal_mode": journal_mode,
                # Pipelined flushing gives FULL's guarantee with SQLite itself at NORMAL.
                "synchronous": "FULL" if self._syncer is not None else synchronous,
                "log_flush": "pipelined" if self._syncer is not None else "sqlite",
                "schema_version": db.schema_version(),
                "commits": db.commits,
                "writes": db.writes,
                "largest_batch": db.largest_batch,
                "max_batch": self._settings.max_batch,
                "recovered_requeued": self._recovery.requeued,
                "recovered_queued": self._recovery.queued,
            }
        )
