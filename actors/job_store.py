"""The JobStore actor: owns the job database and commits the writes waiting in its mailbox together.

Group commit: when a write (InsertJob or Transition) reaches the head of the mailbox,
the store also takes the writes queued right behind it (asked ones, and the slots'
told ``stale_ok`` reports), applies them all in one transaction (a refused write
fails only its asker), commits once, and only then answers every one of them. A
submit is therefore never acknowledged before its row is durable, and one fsync
serves the whole batch. Bare moves into loading or running are the exception: recovery
puts such jobs back to queued anyway, so a batch of only those commits without an fsync
(``actors.stores.JobDB.write_batch`` says why that is sound).

Under a supervisor the store is the source of truth the other actors rebuild from:
it is a SupervisedActor, asks arrive through a StableRef (and still join batches),
and when it crashes it first applies the reports already in its mailbox (salvage),
so what GPU slots told it is not lost with the instance.

Given the lane's Timers it also prunes (docs/operations.md, "Pruning"): once at start and
then every ``store.prune_interval_s``, it deletes terminal jobs older than
``store.prune_after_s``, ``store.prune_batch`` at a time, and after a full batch it tells
itself to take the next one, so the submits that arrived meanwhile go first: a prune of
any size holds a submit back by one batch at most.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, ClassVar

import structlog

from actors.runtime import (
    BatchingInbox,
    Clock,
    Delivery,
    Mailbox,
    SupervisedActor,
    TimerHandle,
    Timers,
)
from actors.stores import BatchOutcome, JobDB, PgJobDB, Recovery, WriteMessage, is_volatile
from protocol.cluster import LeaseHold
from protocol.config import StoreSettings
from protocol.errors import IllegalTransitionError, JobNotFoundError, StoreError
from protocol.job import Job
from protocol.messages import (
    AdmittedJobs,
    ApplyStoreUpkeep,
    CountJobs,
    GetJob,
    GetJobBySeq,
    InsertJob,
    JobStats,
    ListJobs,
    LoadQueue,
    LoadQueuedJobs,
    PendingWebhooks,
    PruneDue,
    PruneJobs,
    ReadWebhook,
    RecordWebhookAttempt,
    StoreSnapshot,
    Transition,
)

__all__ = ["JobStore"]

log = structlog.get_logger("gpulane.job_store")

_WRITES = (InsertJob, Transition)


def _is_asked_write(message: Any, asked: bool) -> bool:
    """Writes that may join a batch: asked ones, and told ``stale_ok`` Transitions (a slot's
    reports), whose refusal is dropped, not raised."""
    if not isinstance(message, _WRITES):
        return False
    return asked or (isinstance(message, Transition) and message.stale_ok)


def _carries_volatile(message: Any, asked: bool) -> bool:
    """True when a write is volatile (``actors.stores.is_volatile``)."""
    return is_volatile(message)


def _is_asked_volatile_write(message: Any, asked: bool) -> bool:
    """An asked write (see above) that is volatile: it may join a batch of volatile writes."""
    return _is_asked_write(message, asked) and is_volatile(message)


def _salvageable(message: Any, asked: bool) -> bool:
    """After a crash: every ask a stable reference holds for an answer, and every told write."""
    return asked or isinstance(message, _WRITES)


_STALE = (IllegalTransitionError, JobNotFoundError)


class JobStore(SupervisedActor):
    """The one owner of the job database (docs/architecture.md sections 5 and 6).

    Start it with ``JobStore.start(settings, clock, listener)``; ``listener`` (optional)
    hears every job the store has just committed, before any writer is answered, so
    the facade can tell waiting callers only about durable outcomes. The database is opened,
    checked,
    migrated and recovered in the constructor, which runs in the starter's thread, so
    a corrupt, locked or unwritable file raises StoreError from ``start`` itself
    instead of being logged by a thread nobody watches. ``store.url`` picks the engine:
    empty, SQLite at ``store.path``; a PostgreSQL URL, that database (``PgJobDB``, which
    refuses a database another store holds, as SQLite refuses a locked file; with ``lease``,
    the leader's, every write is fenced by its token instead). Recovery
    puts jobs left in
    loading or running back to queued without charging an attempt. With
    ``recover_on_open=False`` (gpulane's tree) it waits for ``LoadQueuedJobs(recover=True)``
    instead, so a restarted store first applies the reports slots told it meanwhile.

    Messages (all by ``ask``; a told write that fails is a crash, as for any handler,
    except a ``stale_ok`` Transition the store refuses, which is logged and dropped):

    - InsertJob → Job (queued), after its commit
    - Transition → Job, after its commit; IllegalTransitionError, JobNotFoundError,
      ValidationError for that write alone (None for a refused ``stale_ok`` one)
    - GetJob, GetJobBySeq → Job or JobNotFoundError
    - ListJobs → tuple[Job, ...]; LoadQueuedJobs → every queued Job in sequence order
      (after recovering loading/running jobs when ``recover`` is set)
    - LoadQueue → QueueChunk: the queue in serving order, a chunk at a time (the arbiter's
      rebuild); AdmittedJobs → (id, caller, lane) of every job not terminal (the limiter's)
    - CountJobs → read-only {state: count}, kept in memory (O(1));
      JobStats → tuple[LaneStats, ...]
    - PruneJobs → number of terminal jobs deleted (one batch); PruneDue (told, by its timer
      or itself) → a batch of the regular prune
    - PendingWebhooks → the outbox's pending deliveries as (seq, when due); ReadWebhook →
      a PendingDelivery or None; RecordWebhookAttempt (told) → one attempt recorded in a
      transaction of its own (``actors.stores._outbox``)
    - StoreSnapshot → read-only mapping of the database (``path``: the file, or the URL
      without its password), schema version and commit counters
      (``volatile_commits``: the commits that held only moves into loading or running
      and so ran at ``synchronous=NORMAL``, without an fsync; see ``actors.stores.is_volatile``)
    """

    mailbox_type: ClassVar[type[Mailbox]] = BatchingInbox  # group commit drains its head

    def __init__(
        self,
        settings: StoreSettings,
        clock: Clock,
        listener: Callable[[Job], None] | None = None,
        *,
        recover_on_open: bool = True,
        timers: Timers | None = None,
        lease: LeaseHold | None = None,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._listener = listener
        self._timers = timers  # None: no regular prune (a store on its own, in tests)
        self._prune_timer: TimerHandle | None = None
        self._pruned = 0
        self._stale = 0
        self._recovery = Recovery(requeued=0, queued=0)
        self._db: JobDB | PgJobDB = (
            PgJobDB.open(settings.url, clock, lease=lease)
            if settings.url
            else JobDB.open(settings.path, clock, synchronous=settings.synchronous)
        )
        if self._db.vacuumed_s is not None:
            log.info("job_store.vacuumed", path=self._db.path, seconds=self._db.vacuumed_s)
        if recover_on_open:
            try:
                self._recover()
            except BaseException:
                self._db.close()
                raise
        inbox = self.mailbox
        assert isinstance(inbox, BatchingInbox)
        self._inbox = inbox

    def _recover(self) -> None:
        """Put loading/running jobs back to queued (no attempt charged) and log what it did."""
        recovery = self._db.recover()
        self._recovery = Recovery(
            requeued=self._recovery.requeued + recovery.requeued, queued=recovery.queued
        )
        log.info(
            "job_store.recovered",
            path=self._db.path,
            requeued=recovery.requeued,
            queued=recovery.queued,
        )

    def on_start(self) -> None:
        """Prune once now (a service that restarts often still prunes), then by the timer."""
        if self._timers is not None:
            self.actor_ref.tell(PruneDue())

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Crashed: apply what is already in the mailbox first (then :meth:`on_end`)."""
        self._salvage()

    def on_end(self) -> None:
        """Stopped or crashed: drop the prune timer and close the database, releasing its
        lock for the next store."""
        if self._prune_timer is not None:
            self._prune_timer.cancel()
        self._db.close()

    def _salvage(self) -> None:
        """Handle the writes and stable-reference asks that reached this instance before it
        crashed, in order, so what GPU slots told it is kept and the asks answered instead
        of dropped with the instance."""
        salvaged = self.salvage_mailbox(_salvageable)
        log.warning("job_store.salvaged", messages=salvaged)

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
        if isinstance(message, LoadQueue):
            if message.first and message.recover:
                self._recover()
            return db.load_queue(message.chunk, first=message.first)
        if isinstance(message, AdmittedJobs):
            return db.admitted()
        if isinstance(message, LoadQueuedJobs):
            if message.recover:
                self._recover()
            return db.queued_jobs()
        if isinstance(message, CountJobs):
            return db.count_by_state()
        if isinstance(message, JobStats):
            return db.lane_stats()
        if isinstance(message, PruneJobs):
            deleted = db.prune(message.older_than_s, self._settings.prune_batch)
            self._pruned += deleted
            log.info("job_store.pruned", deleted=deleted, older_than_s=message.older_than_s)
            return deleted
        if isinstance(message, PruneDue):
            self._prune_turn()
            return None
        if isinstance(message, ApplyStoreUpkeep):
            self._apply_upkeep(message.settings)
            return None
        if isinstance(message, PendingWebhooks):
            return db.outbox.pending()
        if isinstance(message, ReadWebhook):
            return db.outbox.read(message.seq)
        if isinstance(message, RecordWebhookAttempt):
            if not db.outbox.record(message):
                log.info("job_store.webhook_attempt_dropped", seq=message.seq)
            return None
        if isinstance(message, StoreSnapshot):
            return self._snapshot()
        raise TypeError(f"JobStore cannot handle {type(message).__name__}")

    def _apply_upkeep(self, settings: StoreSettings) -> None:
        """Take a reload's pruning settings (the file and durability stay as opened); a new
        interval re-arms the timer from now."""
        old, self._settings = (
            self._settings,
            dataclasses.replace(
                self._settings,
                prune_after_s=settings.prune_after_s,
                prune_interval_s=settings.prune_interval_s,
                prune_batch=settings.prune_batch,
            ),
        )
        if old.prune_interval_s != settings.prune_interval_s and self._prune_timer is not None:
            self._prune_timer.cancel()
            if self._timers is not None:
                self._prune_timer = self._timers.send_after(
                    settings.prune_interval_s, self.actor_ref, PruneDue()
                )

    def _prune_turn(self) -> None:
        """One batch of the regular prune; then the next batch (a full one may have left
        more), behind whatever arrived meanwhile, or the timer for the next prune.

        A prune that fails is logged and tried again by the timer: the store's writes
        report their own failures, and a background chore is no reason to restart the
        tree behind the store.
        """
        settings = self._settings
        try:
            deleted = self._db.prune(settings.prune_after_s, settings.prune_batch)
        except StoreError as error:
            log.error("job_store.prune_failed", error=str(error))
            deleted = 0
        self._pruned += deleted
        if deleted:
            log.info("job_store.pruned", deleted=deleted, older_than_s=settings.prune_after_s)
        if deleted == settings.prune_batch:
            self.actor_ref.tell(PruneDue())
        elif self._timers is not None:
            self._prune_timer = self._timers.send_after(
                settings.prune_interval_s, self.actor_ref, PruneDue()
            )

    def _write(self, first: WriteMessage) -> Job | None:
        """Commit ``first`` with the asked writes queued behind it; answer them after COMMIT.

        Draining stops at the first message that is not an asked write, so every
        sender's messages are still handled in the order sent. Writes are drained in
        runs (all that wait, up to ``max_batch``); if the database gives up a batch
        part-way, the drained writes it did not reach go in a fresh one. If ``first``
        and every write waiting right behind it are volatile (bare moves into loading
        or running, ``actors.stores.is_volatile``), the batch commits without an fsync and
        takes only volatile writes that arrive meanwhile: a durable one stops it and
        starts the next batch. Otherwise the batch takes any write and commits at the
        configured level. The current message's outcome is returned (or raised) for
        pykka to deliver, also after the commit.
        """
        volatile = is_volatile(first) and self._inbox.run_all(_is_asked_write, _carries_volatile)
        joins = _is_asked_volatile_write if volatile else _is_asked_write
        drained: list[Delivery] = []
        writes: list[WriteMessage] = [first]
        handed = 0  # how many of ``writes`` the database has taken

        def take() -> WriteMessage | None:
            """The next write: one already drained, else what waits at the mailbox's head."""
            nonlocal handed
            if handed == len(writes):
                room = self._settings.max_batch - len(writes)
                taken = self._inbox.take_while(joins, room) if room > 0 else []
                drained.extend(taken)
                writes.extend(delivery.message for delivery in taken)
                if handed == len(writes):
                    return None
            handed += 1
            return writes[handed - 1]

        outcomes: list[BatchOutcome | None] = list(self._db.write_batch(take, volatile=volatile))
        while len(outcomes) < len(writes):  # a batch given up part-way: the rest in a new one
            outcomes.extend(self._db.write_batch(take, volatile=volatile))
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, Exception):
                outcomes[index] = self._drop_if_stale(writes[index], outcome)
        listener = self._listener
        if listener is not None:
            for outcome in outcomes:
                if isinstance(outcome, Job):
                    listener(outcome)
        told_failure: Exception | None = None
        for delivery, outcome in zip(drained, outcomes[1:], strict=True):
            if delivery.asked:
                delivery.answer(outcome)
            elif told_failure is None and isinstance(outcome, Exception):
                told_failure = outcome
        if isinstance(outcomes[0], Exception):
            raise outcomes[0]
        if told_failure is not None:
            raise told_failure  # a told write that failed is a crash (section 8)
        return outcomes[0]

    def _drop_if_stale(self, message: WriteMessage, outcome: BatchOutcome) -> BatchOutcome | None:
        """A ``stale_ok`` Transition the store refused becomes None (logged), not an error."""
        if isinstance(message, Transition) and message.stale_ok and isinstance(outcome, _STALE):
            self._stale += 1
            log.info(
                "job_store.stale_transition",
                job_id=message.job_id,
                target=message.target.value,
                reason=str(outcome),
            )
            return None
        return outcome

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
                "volatile_commits": db.volatile_commits,
                "writes": db.writes,
                "largest_batch": db.largest_batch,
                "max_batch": self._settings.max_batch,
                "recovered_requeued": self._recovery.requeued,
                "recovered_queued": self._recovery.queued,
                "stale_transitions": self._stale,
                "pruned": self._pruned,
            }
        )
