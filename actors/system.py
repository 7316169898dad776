"""The GpuLane facade: turns a host's calls into messages and holds the waiting callers' sinks.

It is not an actor (docs/architecture.md section 2): a host calls it from any thread or
from asyncio; it never awaits a pykka future on an event loop. It starts the tree
``actors.tree.lane_tree`` declares (docs/supervision.md, "gpulane's tree") and
addresses the actors through the tree's StableRefs. The backends, with their slots and
embedding executors, come from ``actors.lane_hosts``, and ``status()`` is assembled by
``actors.status_view``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import pykka
import structlog

from actors.alerts import Alerting
from actors.arbiter import CancelOutcome
from actors.backend_factory import BuiltBackend, ReplaceableBackend, cloud_backend
from actors.backends.base import Backend
from actors.cloud import ApplyCloudPolicy
from actors.config import CLOUD_BOUNDS_KEYS, CLOUD_CLIENT_KEYS, Config, check_reload, config_changes
from actors.embedding import embed_request
from actors.hosts import tracker_id_for
from actors.lane_hosts import LaneHosts
from actors.leadership import LaneLease, Lead
from actors.runtime import (
    ChildUnavailableError,
    Clock,
    ExitKind,
    ExitReason,
    StableRef,
    StableRefs,
    Supervisor,
    SupervisorSnapshot,
    SystemClock,
    Timers,
    ask_through_restarts,
)
from actors.sinks import SinkRegistry
from actors.status_view import lane_status, root_snapshot, slot_status, wait_until_started
from actors.ticket import Ticket
from actors.tree import (
    CHILD_ORDER,
    DEFAULT_FACTORIES,
    WATCHERS,
    ChildFactory,
    GpuFactory,
    LaneWiring,
    SupervisionSettings,
    lane_tree,
)
from actors.webhooks import check_webhook
from protocol import (
    BackendRequest,
    CancelReason,
    EmbedResult,
    Job,
    JobSpec,
    JobState,
    Lane,
    SystemStoppedError,
    ValidationError,
)
from protocol.cluster import LeaseHold, LeaseLostError
from protocol.messages import (
    Admit,
    Admitted,
    ApplyAlerts,
    ApplyLimits,
    ApplyPolicy,
    ApplyResidency,
    ApplyStoreUpkeep,
    CancelQueued,
    CountJobs,
    GetJob,
    GetJobBySeq,
    InsertJob,
    JobEnded,
    JobQueued,
    LimiterSnapshot,
    ListJobs,
    PauseDispatch,
    PreemptionsCommitted,
    PruneJobs,
    QueueSnapshot,
    ReleaseAdmission,
    ResidencySnapshot,
    ResumeDispatch,
)

__all__ = ["GpuLane"]

log = structlog.get_logger(__name__)


class GpuLane:
    """A running gpulane: submit jobs, watch them, steer the queue. Start with :meth:`start`."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        timers: Timers,
        sinks: SinkRegistry,
        supervision: SupervisionSettings,
        on_failure: Callable[[ExitReason], None] | None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._timers = timers
        self._sinks = sinks
        self._supervision = supervision
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._stopped = False
        self._paused = False
        self._failure: ExitReason | None = None
        self._released = False
        self._refs = StableRefs()
        self._root: pykka.ActorRef[Any] | None = None
        self._slot_ids: tuple[str, ...] = ()
        self._built: list[BuiltBackend] = []  # backends the lane made, closed at its end
        self._cloud_client: ReplaceableBackend | None = None  # the cloud one, if made here
        self._counters = {"submitted": 0, "cancel_requests": 0, "retries_requested": 0}
        self._hosts = LaneHosts((), {}, None)  # the backends, their slots and embedders
        self._alerting = Alerting(config.alerts, clock, timers, lambda: self._root)
        self._lease = LaneLease(None)  # what it leads by on PostgreSQL

    @classmethod
    def start(
        cls,
        config: Config | None = None,
        *,
        gpu: GpuFactory | None = None,
        backend: Backend | None = None,
        clock: Clock | None = None,
        factories: Mapping[str, ChildFactory] | None = None,
        supervision: SupervisionSettings | None = None,
        on_failure: Callable[[ExitReason], None] | None = None,
        cloud: Backend | None = None,
        lease: Lead | None = None,
    ) -> GpuLane:
        """Build and start the supervision tree: store, arbiter, then the GPU slots.

        ``gpu`` replaces the slot actor of every backend (tests pass
        ``actors.testing.FakeGpu``); otherwise slots drive ``backend`` (one backend
        only), or the clients built from ``config.hosts``.
        ``factories`` replaces other children by id (``"store"``, ``"arbiter"``); a
        factory gets a :class:`LaneWiring` and returns a SupervisedActor's ref.
        ``on_failure(reason)`` is called once if the tree gives up (restart budget
        spent); the lane is stopped then, and every later call raises SystemStoppedError.
        A backend's client also serves :meth:`embed`. ``cloud`` (or ``config.cloud.enabled``)
        adds ``config.cloud.slots`` cloud slots on that backend (cloud fallback). On
        ``store.url`` the lane leads by ``lease`` (a serve cluster member's), else by one it
        takes (``actors.leadership.LaneLease``).
        """
        config = config or Config()
        children = (*CHILD_ORDER, *WATCHERS)
        unknown = sorted(set(factories or {}) - set(children))
        if unknown:
            raise ValidationError("factories", f"unknown child {unknown[0]!r}", allowed=children)
        clock = clock or SystemClock()
        timers = Timers(clock).start()
        supervision = supervision or SupervisionSettings()
        lane = cls(config, clock, timers, SinkRegistry(), supervision, on_failure)
        try:
            lane._lease = LaneLease.for_lane(config, timers, lease, lane._lease_lost)
            factories = {**DEFAULT_FACTORIES, **(factories or {})}
            lane._build_tree(gpu, backend, cloud, factories, lane._lease.hold)
        except BaseException:
            lane.stop()
            raise
        return lane

    def _build_tree(
        self,
        gpu: GpuFactory | None,
        backend: Backend | None,
        cloud: Backend | None,
        factories: Mapping[str, ChildFactory],
        lease: LeaseHold | None,
    ) -> None:
        """Start the root supervisor and wait until every child has had its first start."""
        settings = self._supervision
        config = self._config
        if cloud is None and config.cloud.enabled:
            self._cloud_client = ReplaceableBackend(cloud_backend(config.cloud))
            cloud = self._own(
                BuiltBackend(self._cloud_client, config.cloud.url, (self._cloud_client.close,))
            )
        # With ``gpu`` alone (a fake GPU) each tracker learns from its slots only.
        hosts = self._hosts = LaneHosts.build(
            config,
            gpu=gpu,
            backend=backend,
            cloud=cloud,
            join_s=settings.slot_join_s,
            own=self._own,
            residency=lambda: self._config.residency,
            guard=self._lease.guard,
        )
        self._slot_ids, cloud_slot_ids = tuple(hosts.slots), hosts.cloud_slot_ids
        wiring = LaneWiring(
            refs=self._refs,
            slot_ids=self._slot_ids,
            sinks=self._sinks,
            clock=self._clock,
            timers=self._timers,
            config=lambda: self._config,
            paused=lambda: self._paused,
            listener=self._committed,
            alerting=self._alerting,
            cloud_slot_ids=cloud_slot_ids,
            slot_backends=hosts.slot_backends,
            backends=hosts.clients,
            lease=lease,
        )
        tree = lane_tree(wiring, settings, factories, hosts.slots)
        self._root = Supervisor.start_spec(
            tree, refs=self._refs, timers=self._timers, on_escalate=self._escalated
        )
        self._wait_until_started()
        slots = {host.name: len(host.slot_ids) for host in hosts.hosts}
        log.info("gpulane_started", slots=slots, cloud_slots=len(cloud_slot_ids))

    def _lease_lost(self, reason: str) -> None:
        """The lane's own keeper lost the lease: stop the tree (off the keeper's thread) and
        fail as on a give-up."""
        why = ExitReason.from_exception(ExitKind.ESCALATED, LeaseLostError(reason))
        threading.Thread(target=self._stop_and_fail, args=(why,), daemon=True).start()

    def _stop_and_fail(self, reason: ExitReason) -> None:
        if self._root is not None:
            self._root.stop(block=True, timeout=self._supervision.shutdown_s * 4)
        self._escalated(reason)

    def _own(self, built: BuiltBackend) -> Backend:
        """Keep a backend the lane made, to close when the lane ends; returns its client."""
        self._built.append(built)
        return built.backend

    def _wait_until_started(self) -> None:
        """Block until each child has started once (or the tree gave up, which raises)."""
        timeout = self._supervision.call_timeout_s
        wait_until_started(self.supervision, lambda: self._failure, timeout)

    # --- the public surface ---------------------------------------------------------

    def submit(self, spec: JobSpec, *, detach: bool = False) -> Ticket:
        """Queue a job durably and return its ticket once the insert is committed."""
        if not isinstance(spec, JobSpec):
            raise ValidationError("spec", f"must be a JobSpec, got {type(spec).__name__}")
        return self._ticket_for(self._admit_and_insert(InsertJob(spec)), detach)

    def _admit_and_insert(self, insert: InsertJob) -> Job:
        """Ask the RateLimiter, then the store; the admission is bound to the stored job.

        Raises RateLimitedError or QueueFullError (limit, figure, retry_after) when the
        RateLimiter refuses ``spec.caller``.
        """
        spec = insert.spec
        self._refuse_uncarried(spec)
        check_webhook(spec, self._config)
        reservation: int = self._ask("limiter", Admit(spec.caller, spec.lane))
        limiter = self._refs.ref_for("limiter")
        try:
            job: Job = self._ask("store", insert, retry_exited=False)
        except BaseException:
            with contextlib.suppress(ChildUnavailableError):
                limiter.tell(ReleaseAdmission(reservation))
            raise
        with contextlib.suppress(ChildUnavailableError):
            limiter.tell(Admitted(reservation, job.id))
        return job

    def _refuse_uncarried(self, spec: JobSpec) -> None:
        """ValidationError naming a field some backend (or, for ``allow_cloud``, the cloud
        backend) cannot carry: never dropped in silence (docs/architecture.md section 9)."""
        request = BackendRequest.for_spec(spec)
        self._hosts.refuse_uncarried(request, allow_cloud=spec.allow_cloud, labels=spec.labels)

    def _committed(self, job: Job) -> None:
        """The store's commit listener: wake the job's caller; an ended job frees its place;
        a job preempted ``alerts.job_preemptions`` times goes to the Alerter."""
        self._sinks.committed(job)
        if job.state.is_terminal:
            with contextlib.suppress(ChildUnavailableError, KeyError):
                self._refs.ref_for("limiter").tell(JobEnded(job))
        if job.preemptions >= self._config.alerts.job_preemptions > 0:
            with contextlib.suppress(ChildUnavailableError, KeyError):
                self._refs.ref_for("alerter").tell(PreemptionsCommitted(job))

    def _ticket_for(self, job: Job, detach: bool) -> Ticket:
        sink = self._sinks.register(job.id)
        self._tell_arbiter(JobQueued(job))
        with self._lock:
            self._counters["submitted"] += 1
        return Ticket(job, sink, self._cancel_quietly, detach=detach)

    def embed(
        self,
        model: str,
        inputs: str | Iterable[str],
        *,
        caller: str = "anonymous",
        lane: Lane = Lane.EXTERNAL,
        options: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> EmbedResult:
        """Embed ``inputs`` with ``model`` straight on a backend, bypassing the GPU queue.

        Embedding calls run concurrently beside the GPU queue (``actors.embedding``),
        never waiting behind a long chat call; with several backends, on the one
        ``LaneHosts.embedder_for`` picks. Blocks until the vectors come back; after
        ``timeout`` seconds the call is cancelled (its connection dropped) and
        TimeoutError raised.
        """
        texts, frozen = embed_request(model, inputs, options)
        embedder = self._hosts.embedder_for(model, self._trackers)
        # Embeddings skip the GPU queue but not the RateLimiter's embeddings budget.
        self._ask("limiter", Admit(caller, lane, embedding=True))
        try:
            return embedder.embed(model, texts, frozen, timeout)
        finally:
            log.debug("embedded", caller=caller, model=model, inputs=len(texts))

    def cancel(self, job_id: str, reason: CancelReason = CancelReason.USER) -> str:
        """Cancel a queued or running job; says which it was ('queued', 'running', 'not_found')."""
        with self._lock:
            self._counters["cancel_requests"] += 1
        outcome = str(self._ask("arbiter", CancelQueued(job_id, reason)))
        if outcome == CancelOutcome.NOT_FOUND:
            self.get(job_id)  # raises JobNotFoundError for an unknown id
        return outcome

    def _cancel_quietly(self, job_id: str) -> None:
        """A caller went away: cancel without waiting, and never raise."""
        if self._stopped or self._failure is not None:
            return
        try:
            self._refs.ref_for("arbiter").tell(CancelQueued(job_id, CancelReason.CALLER_GONE))
        except ChildUnavailableError:
            log.info("cancel_dropped", job_id=job_id)

    def retry(self, job_id: str, *, detach: bool = False) -> Ticket:
        """Run a failed or cancelled job again, as a new job with the same spec."""
        old = self.get(job_id)
        if old.state not in (JobState.FAILED, JobState.CANCELLED):
            raise ValidationError(
                "job_id", f"job {job_id} is {old.state.value}", allowed="a failed or cancelled job"
            )
        with self._lock:
            self._counters["retries_requested"] += 1
        job = self._admit_and_insert(InsertJob(old.spec, retry_of=old.id))
        return self._ticket_for(job, detach)

    def get(self, job_id: str | int) -> Job:
        """A job by its id, or by its sequence number."""
        message = GetJobBySeq(job_id) if isinstance(job_id, int) else GetJob(job_id)
        job: Job = self._ask("store", message)
        return job

    def list(self, **filters: Any) -> tuple[Job, ...]:
        """Jobs matching filters (see ``protocol.messages.ListJobs``), newest first."""
        jobs: tuple[Job, ...] = self._ask("store", ListJobs(**filters))
        return jobs

    def prune(self, older_than_s: float | None = None) -> int:
        """Delete the terminal jobs that finished more than ``older_than_s`` seconds ago
        (default ``store.prune_after_s``), as the store's timer does, and return how many.

        One batch (``store.prune_batch``) per ask, so submits are never held behind a big
        delete (docs/operations.md, "Pruning"). ValidationError for a negative age.
        """
        store = self._config.store
        older = store.prune_after_s if older_than_s is None else older_than_s
        total = 0
        while True:
            deleted: int = self._ask("store", PruneJobs(older))
            total += deleted
            if deleted < store.prune_batch:
                log.info("pruned", deleted=total, older_than_s=older)
                return total

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until a job ends (for jobs submitted elsewhere, e.g. detached)."""
        sink = self._sinks.register(job_id)
        job = self.get(job_id)
        if job.state.is_terminal:
            self._sinks.committed(job)
        final = sink.wait(timeout)
        if final is None:
            raise TimeoutError(f"job {job_id} still running after {timeout}s")
        return final

    def status(self) -> Mapping[str, Any]:
        """Queue depth per lane and priority, the running jobs, each backend (``backends``),
        resident models, counters, and the supervision tree (each child's state and restart
        count); ``swaps`` and ``residency`` are totals over the backends."""
        queue: Mapping[str, Any] = self._ask("arbiter", QueueSnapshot())
        gone = "stopped" if self._failure or self._stopped else "restarting"
        timeout = self._supervision.call_timeout_s
        slots = {s: slot_status(self._refs.ref_for(s), timeout, gone) for s in self._slot_ids}
        hosts = self._hosts.views()
        admission: Mapping[str, Any] = self._ask("limiter", LimiterSnapshot())
        with self._lock:
            counters = dict(self._counters)
        return lane_status(
            queue=queue,
            slots=slots,
            trackers=self._trackers(hosts),
            hosts=hosts,
            admission=admission,
            jobs=self._ask("store", CountJobs()),
            facade_counters=counters,
            supervision=self.supervision(),
            alerts=self._alerting.firing(),
            cluster=self._lease.status(),
        )

    def _trackers(self, names: Iterable[str]) -> Mapping[str, Mapping[str, Any]]:
        """The snapshots of these backends' trackers, by backend name."""
        return {name: self._ask(tracker_id_for(name), ResidencySnapshot()) for name in names}

    def supervision(self) -> SupervisorSnapshot | None:
        """The root supervisor's snapshot (children, states, restart counts); None once stopped."""
        return root_snapshot(self._root, self._supervision.call_timeout_s)

    def ref_for(self, child_id: str) -> StableRef:
        """The stable address of a child ("store", "arbiter", "gpu0", ...).

        For tests and diagnostics, such as telling a child a fault to inject; hosts
        should use the facade's methods.
        """
        return self._refs.ref_for(child_id)

    def pause(self) -> None:
        """Stop starting new jobs; running calls finish. Kept across an arbiter restart."""
        self._check_running()
        self._paused = True
        self._tell_arbiter(PauseDispatch())

    def resume(self) -> None:
        """Start dispatching again."""
        self._check_running()
        self._paused = False
        self._tell_arbiter(ResumeDispatch())

    def reload_config(self, config: Config) -> tuple[str, ...]:
        """Apply a new configuration, keeping the queue, the buckets' fill and the counters;
        answers the keys (``section.key``) that changed. Scheduling, retry, limits,
        residency, alerts, pruning, the cloud's routing bounds and client apply at once;
        ``[gateway]`` is the host's to apply. Anything else is refused before any change,
        naming every key (``actors.config.check_reload``): the store's file, the backend,
        the cloud slots."""
        self._check_running()
        changes = config_changes(self._config, config)
        rebuilt = self._cloud_client is not None
        check_reload(changes, self._hosts.cloud is not None, rebuilt)
        client = None
        if rebuilt and CLOUD_CLIENT_KEYS.intersection(changes):
            client = cloud_backend(config.cloud)  # a missing key raises before any change
        self._config = config  # first, so an actor that restarts meanwhile starts with it
        message = ApplyPolicy(config.scheduling, config.retry, config.residency)
        self._tell_arbiter(message)
        for child_id, update in (
            *((slot_id, message) for slot_id in self._slot_ids),
            ("limiter", ApplyLimits(config.limits)),
            *((tracker_id_for(h.name), ApplyResidency(config.residency)) for h in config.hosts),
            ("alerter", ApplyAlerts(config.alerts)),
            ("store", ApplyStoreUpkeep(config.store)),
        ):
            # A child that is restarting reads the new config when it starts.
            with contextlib.suppress(ChildUnavailableError):
                self._refs.ref_for(child_id).tell(update)
        if CLOUD_BOUNDS_KEYS.intersection(changes):
            self._tell_arbiter(ApplyCloudPolicy(config.cloud.policy))
        if self._cloud_client is not None and client is not None:
            self._cloud_client.replace(client)
        log.info("config_reloaded", changed=list(changes))
        return changes

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._config

    @property
    def backends(self) -> Mapping[str, Backend | None]:
        """Each backend's client by name, in config order (None with a fake GPU)."""
        return self._hosts.clients

    @property
    def clock(self) -> Clock:
        """The clock every actor runs on."""
        return self._clock

    @property
    def failure(self) -> ExitReason | None:
        """Why the tree gave up, if it did (the lane is stopped then)."""
        return self._failure

    def stop(self) -> None:
        """Stop the tree, last started first; running calls go back to the queue. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        root = self._root
        if root is not None:
            try:
                root.stop(block=True, timeout=self._supervision.shutdown_s * 4)
            except pykka.Timeout:
                log.error("gpulane_stop_timeout")
        self._hosts.stop()
        self._sinks.fail_all(SystemStoppedError("gpulane was stopped before the job ended"))
        self._release()
        log.info("gpulane_stopped")

    def __enter__(self) -> GpuLane:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- failure at the top -----------------------------------------------------------

    def _escalated(self, reason: ExitReason) -> None:
        """The root gave up (its tree is already stopped): fail waiters, tell the host.

        Runs on the root supervisor's thread; it only records, wakes and releases, so
        it returns promptly and nothing waits on a dead tree.
        """
        self._failure = reason
        log.error("gpulane_failed", reason=str(reason))
        error = SystemStoppedError(f"gpulane stopped after a failure: {reason}")
        failed = self._sinks.fail_all(error)
        log.info("waiting_callers_failed", count=failed)
        self._alerting.gave_up(reason)
        if self._on_failure is not None:
            try:
                self._on_failure(reason)
            except Exception:
                log.exception("on_failure_callback_failed")
        self._release()

    def _release(self) -> None:
        """Stop the timer thread and what the lane owns (a backend, a simulated server);
        the alerts' webhook first posts what it holds."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._alerting.close()
        self._lease.stop()  # releases a lease the lane took, for the next leader
        self._timers.stop()
        for built in reversed(self._built):
            built.close()

    def _check_running(self) -> None:
        if self._failure is not None:
            raise SystemStoppedError(f"gpulane stopped after a failure: {self._failure}")
        if self._stopped:
            raise SystemStoppedError("gpulane is stopped")

    # --- talking to the tree ----------------------------------------------------------

    def _tell_arbiter(self, message: Any) -> None:
        """Tell the arbiter; while it restarts the message is held for the next instance."""
        self._check_running()
        try:
            self._refs.ref_for("arbiter").tell(message)
        except ChildUnavailableError as error:
            self._check_running()
            raise SystemStoppedError(f"the arbiter cannot take messages: {error}") from error

    def _ask(self, child_id: str, message: Any, *, retry_exited: bool = True) -> Any:
        """Ask a child through its restarts up to ``call_timeout_s`` (a write met by an
        instance that died unanswered is not retried: ``retry_exited=False``); once the
        tree has given up, SystemStoppedError with the reason."""
        self._check_running()
        return ask_through_restarts(
            self._refs.ref_for(child_id),
            message,
            timeout_s=self._supervision.call_timeout_s,
            check=self._check_running,
            retry_exited=retry_exited,
        )
