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
    """A mailbox whose one consumer may take the head envelope only if it qualifies."""

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


def _reply(envelope: Envelope[Any], outcome: Job | Exception) -> None:
    """Answer a drained envelope with its job or its error."""
    assert envelope.reply_to is not None
    if isinstance(outcome, Exception):
        envelope.reply_to.set_exception(exc_info=(type(outcome), outcome, outcome.__traceback__))
    else:
        envelope.reply_to.set(outcome)


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
        self._db = JobDB.open(settings.path, clock, synchronous=settings.synchronous)
        try:
            self._recovery: Recovery = self._db.recover()
        except BaseException:
            self._db.close()
            raise
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
        """Close the database, releasing its lock."""
        self._db.close()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the database so a restarted store can open it."""
        self._db.close()

    def on_receive(self, message: Any) -> Any:
        """Handle one protocol message; writes take their queued neighbours along."""
        if isinstance(message, (InsertJob, Transition)):
            return self._write(message)
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

    def _write(self, first: WriteMessage) -> Job:
        """Commit ``first`` with the asked writes queued behind it; answer them after COMMIT.

        Draining stops at the first message that is not an asked write, so every
        sender's messages are still handled in the order sent. The current message's
        outcome is returned (or raised) for pykka to deliver, also after the commit.
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
        if self._listener is not None:
            for outcome in outcomes:
                if isinstance(outcome, Job):
                    self._listener(outcome)
        for envelope, outcome in zip(drained, outcomes[1:], strict=True):
            _reply(envelope, outcome)
        if isinstance(outcomes[0], Exception):
            raise outcomes[0]
        return outcomes[0]

    def _snapshot(self) -> Mapping[str, Any]:
        db = self._db
        journal_mode, synchronous = db.durability()
        return MappingProxyType(
            {
                "path": db.path,
                "journal_mode": journal_mode,
                "synchronous": synchronous,
                "schema_version": db.schema_version(),
                "commits": db.commits,
                "writes": db.writes,
                "largest_batch": db.largest_batch,
                "max_batch": self._settings.max_batch,
                "recovered_requeued": self._recovery.requeued,
                "recovered_queued": self._recovery.queued,
            }
        )
