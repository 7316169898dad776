"""The messages actors exchange. Every one is a frozen dataclass of immutable values."""

from __future__ import annotations

import dataclasses

from protocol._residency_messages import (
    ApplyResidency,
    BackendHealthChanged,
    BackendUnreachable,
    CallEnded,
    CallStarting,
    CatalogChanged,
    CatalogRead,
    CatalogReadFailed,
    ModelLoaded,
    PinFinished,
    PollResidency,
    ReadCatalog,
    RefreshCatalog,
    ResidencyChanged,
    ResidencyPolled,
    ResidencyPollFailed,
    ResidencySnapshot,
)
from protocol._watcher_messages import (
    ApplyAlerts,
    LaneSampled,
    PreemptionsCommitted,
    SampleLane,
    WebhookAttempted,
    WebhookDue,
    WebhooksFound,
)
from protocol.backend import BackendResult
from protocol.config import (
    Limits,
    ResidencySettings,
    RetryPolicy,
    SchedulingPolicy,
    StoreSettings,
)
from protocol.enums import CancelReason, JobState, Lane
from protocol.job import Job, JobMetrics
from protocol.output import Output
from protocol.spec import JobSpec
from protocol.webhook import WebhookAttempt, WebhookState

__all__ = [
    "Admit",
    "Admitted",
    "AdmittedJobs",
    "ApplyAlerts",
    "ApplyLimits",
    "ApplyPolicy",
    "ApplyResidency",
    "ApplyStoreUpkeep",
    "BackendHealthChanged",
    "BackendUnreachable",
    "CallCancelled",
    "CallEnded",
    "CallFailed",
    "CallFinished",
    "CallStarting",
    "CallStreaming",
    "CancelCall",
    "CancelQueued",
    "CatalogChanged",
    "CatalogRead",
    "CatalogReadFailed",
    "ContinueLoad",
    "CountJobs",
    "Dispatch",
    "ExecTimedOut",
    "GetJob",
    "GetJobBySeq",
    "InsertJob",
    "JobEnded",
    "JobQueued",
    "JobStats",
    "LaneSampled",
    "LaneStats",
    "LimiterSnapshot",
    "ListJobs",
    "LoadQueue",
    "LoadQueuedJobs",
    "ModelLoaded",
    "PauseDispatch",
    "PendingWebhooks",
    "PinFinished",
    "PollResidency",
    "PreemptionDeclined",
    "PreemptionsCommitted",
    "PruneDue",
    "PruneJobs",
    "QueueChunk",
    "QueueSnapshot",
    "ReadCatalog",
    "ReadWebhook",
    "Recall",
    "Recalled",
    "RecordWebhookAttempt",
    "RefreshCatalog",
    "ReleaseAdmission",
    "ResidencyChanged",
    "ResidencyPollFailed",
    "ResidencyPolled",
    "ResidencySnapshot",
    "ResumeDispatch",
    "SampleLane",
    "SlotIdle",
    "SlotSnapshot",
    "SlotStarted",
    "StoreSnapshot",
    "TimersDue",
    "Transition",
    "WebhookAttempted",
    "WebhookDue",
    "WebhooksFound",
]

# --- JobStore -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class InsertJob:
    """Store a new job as ``queued``; the reply (the Job) comes after the commit."""

    spec: JobSpec
    retry_of: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """Move a job to ``target``; the store refuses illegal moves and sets the timestamps.

    ``expected`` guards against acting on stale news: if the job is not in one of
    those states the store raises IllegalTransitionError and changes nothing.
    ``stale_ok`` marks news that may be out of date (a GPU slot's report, told after
    a restart elsewhere): if the store refuses it, it logs and drops it instead of
    raising, so a stale report is never a crash of the store. ``output`` (with
    ``result``) belongs to a move to succeeded; ``segments`` replaces the job's
    per-call metrics (an empty tuple clears them, for a job that starts over). ``backend``
    and ``slot`` name where the job runs (the slot's move to loading carries them); kept
    when not given.
    """

    job_id: str
    target: JobState
    expected: frozenset[JobState] | None = None
    charge_attempt: bool = False
    count_preemption: bool = False
    partial_output: str | None = None
    result: str | None = None
    error: str | None = None
    metrics: JobMetrics | None = None
    not_before: float | None = None
    stale_ok: bool = False
    output: Output | None = None
    segments: tuple[JobMetrics, ...] | None = None
    backend: str | None = None
    slot: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class GetJob:
    """Ask for one job by id; replies with the Job or raises JobNotFoundError."""

    job_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class GetJobBySeq:
    """Ask for one job by its sequence number."""

    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class ListJobs:
    """Ask for jobs matching every given filter, newest first unless ``oldest_first``."""

    states: frozenset[JobState] | None = None
    lane: Lane | None = None
    caller: str | None = None
    model: str | None = None
    limit: int = 100
    oldest_first: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class CountJobs:
    """Ask for the number of jobs in each state (replies with a read-only mapping)."""


@dataclasses.dataclass(frozen=True, slots=True)
class LaneStats:
    """Average wait and run time of the finished jobs of one lane."""

    lane: Lane
    finished: int
    avg_wait_s: float | None
    avg_run_s: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class JobStats:
    """Ask for a LaneStats per lane."""


@dataclasses.dataclass(frozen=True, slots=True)
class LoadQueuedJobs:
    """Ask for every queued job in sequence order, all at once (the arbiter, which must
    not wait for a deep queue, takes it in chunks instead: LoadQueue).

    With ``recover``, jobs left in loading or running go back to queued first (no
    attempt charged), as LoadQueue's: safe when no GPU slot runs anything and every
    slot's last report has reached the store, as when the arbiter (re)starts.
    """

    recover: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class LoadQueue:
    """Ask for the queued jobs in the order the arbiter serves them, ``chunk`` at a time
    (a QueueChunk), so a deep queue is not decoded in one go before the first dispatch.

    With ``first`` a new load begins: after recovering loading/running jobs when
    ``recover`` (as LoadQueuedJobs), the store notes which jobs are queued now, in that
    order (lane, priority, jobs coming back from a preemption, sequence number); asks
    without it take the next chunk of that load. Jobs queued later are not in it: their
    JobQueued tells the arbiter.
    """

    chunk: int
    first: bool = False
    recover: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class QueueChunk:
    """The store's answer to LoadQueue: the next jobs of the load still queued, and how
    many of the load are left to hand out."""

    jobs: tuple[Job, ...]
    remaining: int


@dataclasses.dataclass(frozen=True, slots=True)
class AdmittedJobs:
    """Ask for the ids of every job that is not terminal, as (caller, lane, ids), read
    from their columns without decoding a spec: what the RateLimiter counts at its start."""


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyStoreUpkeep:
    """New pruning settings (``prune_after_s``, ``prune_interval_s``, ``prune_batch``) from a
    reload; the store's file and durability stay as they opened."""

    settings: StoreSettings


@dataclasses.dataclass(frozen=True, slots=True)
class PruneJobs:
    """Delete one batch (``store.prune_batch``, oldest first) of terminal jobs that
    finished more than ``older_than_s`` seconds ago; the reply is how many went. Ask again
    while a full batch comes back: each ask is one turn of the store's mailbox, so the
    submits that arrive meanwhile are not held behind a big delete."""

    older_than_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class PruneDue:
    """The store's prune timer (``store.prune_interval_s``), or its note to itself to take
    the next batch after a full one."""


@dataclasses.dataclass(frozen=True, slots=True)
class PendingWebhooks:
    """Ask for the outbox's pending deliveries as (sequence number, next attempt time),
    the soonest due first."""


@dataclasses.dataclass(frozen=True, slots=True)
class ReadWebhook:
    """Ask for the delivery of the job with sequence number ``seq`` (a PendingDelivery), or
    None if it is not pending (any more)."""

    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class RecordWebhookAttempt:
    """Record a post of the delivery of job ``seq``: the attempt, the delivery's state after
    it, and when the next attempt is due if it stays pending (told by the delivery actor)."""

    seq: int
    attempt: WebhookAttempt
    state: WebhookState
    next_attempt_at: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """Ask the store for its file, schema version and write counters (a read-only mapping)."""


# --- PriorityArbiter ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class JobQueued:
    """A job is queued (new, preempted, retried or recovered) and may be dispatched."""

    job: Job


@dataclasses.dataclass(frozen=True, slots=True)
class CancelQueued:
    """Cancel a job: queued ones leave the queues; replies queued, running or not_found."""

    job_id: str
    reason: CancelReason


@dataclasses.dataclass(frozen=True, slots=True)
class SlotIdle:
    """A GPU slot has nothing to run; ``model_key`` is the model it holds now, if any.

    ``incarnation`` names the slot actor instance: a new one means the slot restarted,
    and the arbiter checks the job it had given the old one against the store.
    ``outage_at`` is set when its last call (begun then) met a backend outage: the
    arbiter stops dispatching to the backend until the tracker says it is up again
    (docs/architecture.md section 13). ``ended`` is the job whose call just ended (None
    when a fresh slot instance announces itself).
    """

    slot_id: str
    model_key: str | None
    incarnation: str = ""
    outage_at: float | None = None
    ended: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SlotStarted:
    """A GPU slot started the call for ``job_id`` (one the arbiter handed it, maybe as next)."""

    slot_id: str
    job_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class PreemptionDeclined:
    """A slot kept its call although told to make way: the call's client has seen output
    that cannot be resumed exactly (thinking, a tool call), docs/architecture.md section 3."""

    slot_id: str
    job_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class Recalled:
    """A slot gave back ``job_id`` unstarted (after a Recall); the store still has it queued."""

    slot_id: str
    job_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class PauseDispatch:
    """Stop dispatching new jobs; running calls go on."""


@dataclasses.dataclass(frozen=True, slots=True)
class ResumeDispatch:
    """Start dispatching again."""


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyPolicy:
    """New scheduling, retry and residency settings (slots read the pins); queues are kept."""

    scheduling: SchedulingPolicy
    retry: RetryPolicy
    residency: ResidencySettings


@dataclasses.dataclass(frozen=True, slots=True)
class TimersDue:
    """A timer fired: jobs whose ``not_before`` has passed may now be ready."""


@dataclasses.dataclass(frozen=True, slots=True)
class ContinueLoad:
    """The arbiter's note to itself to take the next chunk of the queue from the store
    (LoadQueue), one chunk per turn of its mailbox, so it dispatches while a deep queue
    loads."""


@dataclasses.dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """Ask the arbiter for its queue depths and slots (replies with a read-only mapping)."""


# --- GpuSlot --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Dispatch:
    """Run this job: now if the slot is free, else as its next call (prefetch), which the
    slot's worker starts the moment the running call succeeds. ``call_id`` names this one
    call so stale news can be told apart.

    ``incarnation`` is the slot instance it is meant for (from its SlotIdle); a new
    instance drops a Dispatch meant for the one before it, which the arbiter recovers.
    ``charge_outage``: an outage on this call counts against the job (it is suspected
    of taking the server down: ``actors.outage_suspects``).
    """

    job: Job
    call_id: int
    incarnation: str = ""
    charge_outage: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Recall:
    """Give back ``job_id``, the slot's next call, if it has not started (answer: Recalled)."""

    job_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class CancelCall:
    """Stop the call running ``job_id``, if it is still running."""

    job_id: str
    reason: CancelReason


@dataclasses.dataclass(frozen=True, slots=True)
class CallFinished:
    """The backend call ended with an answer (its text excludes any resume prefix)."""

    call_id: int
    result: BackendResult


@dataclasses.dataclass(frozen=True, slots=True)
class CallFailed:
    """The backend call failed; ``outage``: the backend's fault (before output or mid-stream)."""

    call_id: int
    error: str
    transient: bool
    outage: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class CallCancelled:
    """The backend call stopped because its cancel token was tripped."""

    call_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class ExecTimedOut:
    """The execution time-out of call ``call_id`` ran out."""

    call_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class SlotSnapshot:
    """Ask a slot what it is doing (replies with a read-only mapping)."""


@dataclasses.dataclass(frozen=True, slots=True)
class CallStreaming:
    """The call produced its first piece of output: the model is loaded and running."""

    call_id: int


# --- RateLimiter ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Admit:
    """May ``caller`` queue a job in ``lane`` (or make an embedding call) now?

    Replies with a reservation number to bind with Admitted once the job is stored
    (or release with ReleaseAdmission), or raises RateLimitedError / QueueFullError
    naming the limit, the current figure and a retry-after.
    """

    caller: str
    lane: Lane
    embedding: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Admitted:
    """The admitted job was stored as ``job_id``: it counts against its caps until it ends."""

    reservation: int
    job_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseAdmission:
    """The admitted job was never stored (the insert failed): give its place back."""

    reservation: int


@dataclasses.dataclass(frozen=True, slots=True)
class JobEnded:
    """The store committed a terminal state for ``job``: it no longer counts as queued."""

    job: Job


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyLimits:
    """New admission limits; buckets keep their fill, counts are kept."""

    limits: Limits


@dataclasses.dataclass(frozen=True, slots=True)
class LimiterSnapshot:
    """Ask the RateLimiter for its counts and counters (replies with a read-only mapping)."""
