"""Which job runs next, and whether to preempt: the arbiter's decisions, with no threads.

Keys, first key first (docs/architecture.md section 4): lane, priority, a preempted job
returning to the head of its class, chain continuation, residency (bounded by
``max_swap_defer_s``), fair share between callers (round-robin), age.
docs/scheduling.md explains the keys, the starvation bound and how to tune them.

The starvation bound counts from a job's FIFO turn: the moment it is the oldest ready
job of its class and a job for a resident model is taken instead. From then on it
runs within ``max_swap_defer_s`` plus the run of the call in progress at that time.

Structure: a fixed number of classes (lane x priority), each holding heaps per
chain and per placement group (a model key and the backend labels its jobs require),
and per group a round-robin ring of callers, each caller a FIFO heap. Removal is lazy
(an entry is marked dead and skipped when met), so every operation is O(log n) in the
jobs queued plus O(groups in a class) for the residency check; nothing walks the whole
queue.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import deque
from collections.abc import Iterable, Iterator

from actors.placement import ANY_HOST, HostFit
from protocol import Job, Lane, Priority, SchedulingPolicy

__all__ = ["RELOAD_CHUNK", "ReadyQueue", "SlotView", "choose_preemption", "displaces"]

ClassKey = tuple[int, int]  # (lane rank, priority rank): lower is served first
GroupKey = tuple[str, tuple[str, ...]]  # (model key, labels required): one placement group
# Jobs per chunk when the arbiter reloads the queue from the store after a restart: the
# first dispatch waits for one chunk, and each later one holds the arbiter for the store's
# time to decode it (about 40 ms here; docs/benchmarks.md, "Scale").
RELOAD_CHUNK = 1000
CLASS_ORDER: tuple[ClassKey, ...] = tuple(
    (lane.rank, prio.rank)
    for lane in (Lane.INTERNAL, Lane.EXTERNAL)
    for prio in sorted(Priority, reverse=True)
)


@dataclasses.dataclass(eq=False, slots=True)
class _Entry:
    """A queued job's place in the indexes; ``alive`` goes False once taken or removed.
    Slots: there is one per queued job, and a ``__dict__`` would double its size."""

    job: Job
    alive: bool = True
    delayed: bool = False

    def __lt__(self, other: _Entry) -> bool:
        return self.job.seq < other.job.seq


def _pop_alive(heap: list[_Entry]) -> _Entry | None:
    while heap:
        entry = heapq.heappop(heap)
        if entry.alive:
            return entry
    return None


def _peek_alive(heap: list[_Entry]) -> _Entry | None:
    while heap and not heap[0].alive:
        heapq.heappop(heap)
    return heap[0] if heap else None


def _runs_on(entry: _Entry, host: HostFit) -> bool:
    """True if ``host`` may run ``entry``'s job: its model and the labels it requires."""
    spec = entry.job.spec
    return host.can_run(spec.model_key, spec.labels)


def _group(job: Job) -> GroupKey:
    """The placement group of ``job``: jobs alike for placement queue together."""
    return (job.spec.model_key, job.spec.labels)


def _first_eligible(heap: list[_Entry], host: HostFit) -> _Entry | None:
    """The oldest live entry of ``heap`` that ``host`` may run. Walks the heap when its head
    is not one: used for preempted jobs, of which there are few."""
    head = _peek_alive(heap)
    if head is None or _runs_on(head, host):
        return head
    runnable = [e for e in heap if e.alive and _runs_on(e, host)]
    return min(runnable, default=None)


class _Declined:
    """A host taking only warm work was offered a job that would swap: it takes nothing."""


DECLINED = _Declined()
_Candidate = tuple[float, int, "_ModelQueue", _Entry]


class _ModelQueue:
    """The jobs of one class in one placement group (a model key and the labels they
    require): oldest-first overall, round-robin by caller."""

    def __init__(self) -> None:
        self.live = 0
        self.by_age: list[_Entry] = []
        self.by_caller: dict[str, list[_Entry]] = {}
        self.caller_live: dict[str, int] = {}
        self.turns: deque[str] = deque()  # callers in round-robin order, each at most once
        self.in_turns: set[str] = set()

    def add(self, entry: _Entry) -> None:
        caller = entry.job.spec.caller
        self.live += 1
        heapq.heappush(self.by_age, entry)
        heapq.heappush(self.by_caller.setdefault(caller, []), entry)
        self.caller_live[caller] = self.caller_live.get(caller, 0) + 1
        if caller not in self.in_turns:
            self.in_turns.add(caller)
            self.turns.append(caller)

    def forget(self, entry: _Entry) -> None:
        """Account for an entry that died elsewhere (taken via a chain heap, or removed)."""
        caller = entry.job.spec.caller
        self.live -= 1
        self.caller_live[caller] -= 1

    def oldest(self) -> _Entry | None:
        return _peek_alive(self.by_age)

    def next_fair(self) -> _Entry:
        """The oldest job of the caller whose turn it is; that caller goes to the back."""
        while True:
            caller = self.turns.popleft()
            if self.caller_live.get(caller, 0) <= 0:
                self.in_turns.discard(caller)
                self.caller_live.pop(caller, None)
                self.by_caller.pop(caller, None)
                continue
            entry = _pop_alive(self.by_caller[caller])
            assert entry is not None, "caller_live says this caller has a job"
            self.turns.append(caller)  # dropped at its next turn if it has nothing left
            return entry


class _ClassQueue:
    """All ready jobs of one (lane, priority) class."""

    def __init__(self) -> None:
        self.live = 0
        self.returning: list[_Entry] = []  # preempted jobs: back to the head of the class
        self.by_chain: dict[str, list[_Entry]] = {}
        self.by_group: dict[GroupKey, _ModelQueue] = {}
        self.models: dict[str, int] = {}  # live jobs per model key, over its groups
        # Per backend, the oldest job of the class it may run while it waits for a swap
        # there, and since when (the starvation bound holds per backend).
        self.passed_over: dict[str, tuple[_Entry, float]] = {}

    def add(self, entry: _Entry) -> None:
        job = entry.job
        self.live += 1
        if job.preemptions > 0:
            heapq.heappush(self.returning, entry)
        if job.spec.chain_id is not None:
            heapq.heappush(self.by_chain.setdefault(job.spec.chain_id, []), entry)
        self.by_group.setdefault(_group(job), _ModelQueue()).add(entry)
        key = job.spec.model_key
        self.models[key] = self.models.get(key, 0) + 1

    def forget(self, entry: _Entry) -> None:
        self.live -= 1
        group = _group(entry.job)
        model = self.by_group[group]
        model.forget(entry)
        if model.live == 0:
            del self.by_group[group]
        key = entry.job.spec.model_key
        self.models[key] -= 1
        if self.models[key] == 0:
            del self.models[key]
        chain = entry.job.spec.chain_id
        if (
            chain is not None
            and chain in self.by_chain
            and _peek_alive(self.by_chain[chain]) is None
        ):
            del self.by_chain[chain]

    def choose(
        self,
        now: float,
        chains: frozenset[str],
        resident: frozenset[str],
        max_swap_defer_s: float,
        host: HostFit,
        warm_only: bool,
    ) -> _Entry | _Declined | None:
        """The entry ``host`` should take from this class: None if it may run none of them,
        DECLINED if ``warm_only`` and the one it should take needs a swap there."""
        entry = _first_eligible(self.returning, host)
        if entry is None:
            for chain in sorted(chains):
                heap = self.by_chain.get(chain)
                entry = _peek_alive(heap) if heap else None
                if entry is not None and _runs_on(entry, host):
                    break
                entry = None
        if entry is not None:
            warm = entry.job.spec.model_key in resident
            return DECLINED if warm_only and not warm else entry
        return self._choose_by_model(now, resident, max_swap_defer_s, host, warm_only)

    def _choose_by_model(
        self,
        now: float,
        resident: frozenset[str],
        max_swap_defer_s: float,
        host: HostFit,
        warm_only: bool,
    ) -> _Entry | _Declined | None:
        """Residency with the starvation bound, then fair share inside the chosen group.

        The deferral clock of a job that needs a swap starts when it becomes the oldest
        ready job of its class that ``host`` may run, i.e. at the moment FIFO would have
        run it there, not at its creation: under a backlog every job is older than
        ``max_swap_defer_s``, and a clock started at creation would make every choice a
        swap (FIFO again). Once it has been passed over for ``max_swap_defer_s`` on that
        host, that very job runs next there. A host with nothing of its own loaded prefers
        a model no other host has loaded (placement), under the same bound.
        """
        oldest: _Candidate | None = None
        warm: _Candidate | None = None
        lonely: _Candidate | None = None
        for (key, labels), queue in self.by_group.items():
            if not host.can_run(key, labels):
                continue
            head = queue.oldest()
            assert head is not None, "a model queue with live jobs has an oldest one"
            candidate = (head.job.created_at, head.job.seq, queue, head)
            if oldest is None or candidate[:2] < oldest[:2]:
                oldest = candidate
            if key in resident:
                if warm is None or candidate[:2] < warm[:2]:
                    warm = candidate
            elif key not in host.elsewhere and (lonely is None or candidate[:2] < lonely[:2]):
                lonely = candidate
        if oldest is None:
            return None
        if warm is None and warm_only:
            return DECLINED
        pick = warm or lonely or oldest
        if pick[2] is oldest[2]:
            self.passed_over.pop(host.name, None)
            return oldest[2].next_fair()
        head = oldest[3]
        deferred = self.passed_over.get(host.name)
        if deferred is None or deferred[0] is not head:
            deferred = (head, now)  # its FIFO turn: from now on it is being deferred
            self.passed_over[host.name] = deferred
        if now - deferred[1] >= max_swap_defer_s:
            del self.passed_over[host.name]
            return head  # the starvation bound: this one has been deferred long enough
        return pick[2].next_fair()


class ReadyQueue:
    """The arbiter's queued jobs: ready ones by the order keys, delayed ones by ``not_before``."""

    def __init__(self) -> None:
        self._classes: dict[ClassKey, _ClassQueue] = {key: _ClassQueue() for key in CLASS_ORDER}
        self._entries: dict[str, _Entry] = {}
        self._delayed: list[tuple[float, int, _Entry]] = []
        # Queued jobs per (lane, priority), kept as they come and go: a snapshot (the
        # status, the alerts' samples, cloud routing) must not walk a deep queue.
        self._depths = {(lane, prio): 0 for lane in Lane for prio in Priority}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def add(self, job: Job, now: float) -> bool:
        """Queue ``job`` (ready now, or once ``not_before`` passes); False if already queued."""
        if job.id in self._entries:
            return False
        entry = _Entry(job)
        self._entries[job.id] = entry
        self._depths[(job.spec.lane, job.spec.priority)] += 1
        if job.not_before is not None and job.not_before > now:
            entry.delayed = True
            heapq.heappush(self._delayed, (job.not_before, job.seq, entry))
        else:
            self._class_of(job).add(entry)
        return True

    def remove(self, job_id: str) -> Job | None:
        """Take a job out (cancel); returns it, or None if it was not queued."""
        entry = self._entries.pop(job_id, None)
        if entry is None:
            return None
        entry.alive = False
        self._depths[(entry.job.spec.lane, entry.job.spec.priority)] -= 1
        if not entry.delayed:
            self._class_of(entry.job).forget(entry)
        return entry.job

    def promote_due(self, now: float) -> list[Job]:
        """Make delayed jobs whose ``not_before`` has passed ready; returns them."""
        moved = []
        while self._delayed and self._delayed[0][0] <= now:
            _, _, entry = heapq.heappop(self._delayed)
            if entry.alive:
                entry.delayed = False
                entry.job = entry.job.replace(not_before=None)
                self._class_of(entry.job).add(entry)
                moved.append(entry.job)
        return moved

    def next_due(self) -> float | None:
        """The earliest ``not_before`` among delayed jobs, if any."""
        while self._delayed and not self._delayed[0][2].alive:
            heapq.heappop(self._delayed)
        return self._delayed[0][0] if self._delayed else None

    def peek_class(self) -> tuple[Lane, Priority] | None:
        """Lane and priority of the best ready class, without taking anything."""
        for (lane_rank, prio_rank), queue in self._classes.items():
            if queue.live:
                lane = Lane.INTERNAL if lane_rank == 0 else Lane.EXTERNAL
                return lane, Priority(Priority.URGENT - prio_rank)
        return None

    def pop(
        self,
        now: float,
        policy: SchedulingPolicy,
        *,
        chains: frozenset[str] = frozenset(),
        resident: frozenset[str] = frozenset(),
        host: HostFit = ANY_HOST,
        warm_only: bool = False,
    ) -> Job | None:
        """Take the next job to run on ``host``, or None when it should take nothing.

        ``chains`` are the chain ids running there now (continuation); ``resident`` the
        model keys loaded there now (residency). Only jobs ``host`` may run are offered
        (placement). With ``warm_only`` it takes nothing when the job it should take would
        swap (the warm pass: a better host for it may be free); the class order holds
        either way, so a host never takes a lower class's job while a better one waits.
        """
        self.promote_due(now)
        bound = policy.max_swap_defer_s
        for queue in self._classes.values():
            if not queue.live:
                continue
            entry = queue.choose(now, chains, resident, bound, host, warm_only)
            if entry is None:
                continue  # nothing in this class may run on this host
            if isinstance(entry, _Declined):
                return None
            entry.alive = False
            del self._entries[entry.job.id]
            self._depths[(entry.job.spec.lane, entry.job.spec.priority)] -= 1
            queue.forget(entry)
            return entry.job
        return None

    def wants(self, model_keys: Iterable[str]) -> bool:
        """True if a ready job waits for one of ``model_keys`` (a swap would evict a model
        someone waits for). O(classes x keys)."""
        keys = tuple(model_keys)
        return any(key in queue.models for queue in self._classes.values() for key in keys)

    def depths(self) -> dict[tuple[Lane, Priority], int]:
        """Ready jobs per (lane, priority); delayed ones are counted under their class too."""
        return dict(self._depths)

    def jobs(self) -> Iterator[Job]:
        """Every queued job, in no particular order."""
        return (entry.job for entry in self._entries.values())

    def _class_of(self, job: Job) -> _ClassQueue:
        return self._classes[(job.spec.lane.rank, job.spec.priority.rank)]


@dataclasses.dataclass(frozen=True, slots=True)
class SlotView:
    """What the preemption decision needs to know about one busy slot: ``swaps``, its
    backend would have to load the incoming job's model (a slot whose backend cannot run
    that model at all is no candidate)."""

    slot_id: str
    job: Job
    swaps: bool = False


def choose_preemption(
    incoming: Job, busy: list[SlotView], now: float, policy: SchedulingPolicy
) -> SlotView | None:
    """The busy slot whose external call ``incoming`` should preempt, or None.

    Internal work preempts external work during active hours, or always when URGENT;
    a job preempted ``max_preemptions`` times already is left to finish.
    """
    if incoming.spec.lane is not Lane.INTERNAL:
        return None
    if incoming.spec.priority is not Priority.URGENT and not policy.in_active_hours(now):
        return None
    victims = [
        view
        for view in busy
        if view.job.spec.lane is Lane.EXTERNAL and view.job.preemptions < policy.max_preemptions
    ]
    if not victims:
        return None
    # The slot that best serves the incoming job (its model loaded there), then the least
    # important external call, and among equals the one that started last.
    return min(
        victims, key=lambda v: (v.swaps, -v.job.spec.priority.rank, -(v.job.started_at or 0.0))
    )


def _class_key(job: Job) -> ClassKey:
    return (job.spec.lane.rank, job.spec.priority.rank)


def displaces(incoming: Job, prefetched: Job, running_chain: str | None) -> bool:
    """True if ``incoming``, just ready, should run before ``prefetched``, the job a busy
    slot holds as its next call (so the arbiter recalls that one).

    The same keys as the queue's, first ones first: a better lane or priority; in the
    same class, a preempted job returning to the head, or the continuation of the chain
    running on that slot. Residency and fair share stay as decided when it was handed over.
    """
    if _class_key(incoming) != _class_key(prefetched):
        return _class_key(incoming) < _class_key(prefetched)
    if incoming.preemptions > 0 and prefetched.preemptions == 0:
        return True
    return (
        running_chain is not None
        and incoming.spec.chain_id == running_chain
        and prefetched.spec.chain_id != running_chain
    )
