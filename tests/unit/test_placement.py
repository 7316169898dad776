"""Placement across backends (docs/architecture.md section 4): which backend may run a
job, which takes it, and the starvation bound per backend. Thread-free: the queue, the
catalogs and the resident sets are plain values."""

from __future__ import annotations

import itertools

from actors.placement import FreeHost, HostFit, HostLoad, cold_order, place, placement_fit
from actors.scheduling import ReadyQueue, SlotView, choose_preemption
from protocol import Job, JobSpec, JobState, Lane, Priority, SchedulingPolicy

NOON = 1_767_614_400.0
POLICY = SchedulingPolicy(max_swap_defer_s=30.0)
_seq = itertools.count(1)

CATALOGS: dict[str, frozenset[str] | None] = {
    "a": frozenset({"llama3.2", "qwen2.5:7b"}),
    "b": frozenset({"llama3.2", "mistral-nemo"}),
    "c": frozenset({"qwen2.5:7b", "gemma3"}),
}


def job(
    model: str,
    lane: Lane = Lane.EXTERNAL,
    *,
    at: float | None = None,
    priority: Priority = Priority.NORMAL,
) -> Job:
    seq = next(_seq)
    spec = JobSpec.generate(model=model, prompt="p", lane=lane, priority=priority)
    t = NOON + seq if at is None else at
    return Job(id=f"j{seq}", seq=seq, spec=spec, state=JobState.QUEUED, created_at=t, updated_at=t)


def queue_of(*jobs: Job) -> ReadyQueue:
    queue = ReadyQueue()
    for j in jobs:
        queue.add(j, NOON)
    return queue


def free(*names: str) -> list[FreeHost]:
    return [FreeHost(name, [f"{name}.gpu0"]) for name in names]


def placed_on(queue: ReadyQueue, hosts: list[FreeHost], resident: dict[str, frozenset[str]]):
    return {
        p.job.id: p.backend for p in place(queue, NOON + 100, POLICY, hosts, CATALOGS, resident)
    }


def test_a_job_runs_only_on_a_backend_whose_catalog_lists_its_model() -> None:
    gemma, nemo = job("gemma3"), job("mistral-nemo")
    queue = queue_of(gemma, nemo)
    # Backend a lists neither: it takes nothing, even with its slot free and nothing loaded.
    assert placed_on(queue, free("a"), {"a": frozenset()}) == {}
    assert placed_on(queue, free("a", "b", "c"), {}) == {gemma.id: "c", nemo.id: "b"}


def test_a_model_no_backend_lists_may_run_anywhere_once_every_catalog_is_known() -> None:
    fit = placement_fit("a", CATALOGS, {})
    assert fit.can_run("phi4") and not fit.can_run("gemma3")
    # One catalog not read yet: the unlisted model may be that host's, so it waits.
    unknown = {**CATALOGS, "c": None}
    assert not placement_fit("a", unknown, {}).can_run("phi4")
    assert placement_fit("c", unknown, {}) == HostFit("c", frozenset(), None, frozenset())


def test_one_backend_with_an_unknown_catalog_may_run_anything() -> None:
    assert placement_fit("local", {"local": None}, {}).can_run("anything|num_ctx=8192")


def test_catalog_names_match_model_keys_with_options_and_the_default_tag() -> None:
    fit = placement_fit("a", CATALOGS, {})
    assert fit.can_run("llama3.2:latest|num_ctx=8192")
    assert fit.can_run("qwen2.5:7b|num_gpu=20")


def test_each_backend_drains_its_resident_model_before_anyone_swaps() -> None:
    llama = [job("llama3.2") for _ in range(3)]
    qwen = [job("qwen2.5:7b") for _ in range(3)]
    queue = queue_of(*(j for pair in zip(llama, qwen, strict=True) for j in pair))
    resident = {"a": frozenset({"qwen2.5:7b"}), "b": frozenset({"llama3.2"})}
    placed = place(queue, NOON + 100, POLICY, free("a", "b"), CATALOGS, resident)
    assert [(p.backend, p.job.id, p.swaps) for p in placed] == [
        ("a", qwen[0].id, False),
        ("b", llama[0].id, False),
    ]


def test_a_backend_that_must_swap_prefers_a_model_no_other_backend_has_loaded() -> None:
    # llama3.2 is older, but b has it loaded and will drain it; a loads qwen instead.
    llama, qwen = job("llama3.2"), job("qwen2.5:7b")
    queue = queue_of(llama, qwen)
    resident = {"a": frozenset({"gemma3"}), "b": frozenset({"llama3.2"})}
    placed = place(queue, NOON + 100, POLICY, free("a"), CATALOGS, resident)
    assert [(p.backend, p.job.id, p.swaps) for p in placed] == [("a", qwen.id, True)]


def test_the_starvation_bound_holds_per_backend() -> None:
    """A job passed over on a backend (its FIFO turn there) runs there within the bound."""
    waiting = job("llama3.2", at=NOON)
    warm = [job("qwen2.5:7b", at=NOON + 1 + i) for i in range(10)]
    queue = queue_of(waiting, *warm)
    resident = {"a": frozenset({"qwen2.5:7b"})}
    taken = []
    for t in (0, 10, 20, 29.9, 30):
        hosts = [FreeHost("a", ["a.gpu0"])]
        (placed,) = place(queue, NOON + 100 + t, POLICY, hosts, CATALOGS, resident)
        taken.append(placed.job.id)
    assert taken[:4] == [j.id for j in warm[:4]]
    assert taken[4] == waiting.id  # deferred 30 s on backend a: it goes now


def test_the_cold_pass_takes_the_backend_whose_loaded_model_nobody_waits_for_first() -> None:
    loads = [HostLoad("a", True, NOON), HostLoad("b", False, NOON + 5), HostLoad("c", False, 0)]
    assert cold_order(loads) == ["c", "b", "a"]


def test_a_cold_job_goes_to_the_backend_whose_swap_evicts_nothing_anyone_waits_for() -> None:
    internal = job("llama3.2", Lane.INTERNAL)  # needs a swap on either backend
    external = job("qwen2.5:7b")  # waits for the model a has loaded
    queue = queue_of(internal, external)
    resident = {"a": frozenset({"qwen2.5:7b"}), "b": frozenset({"mistral-nemo"})}
    # a was used longer ago, so least-recently-used alone would swap a; but evicting qwen
    # there would make the queued qwen job swap it back: b swaps instead.
    hosts = [
        FreeHost("a", ["a.gpu0"], last_used=NOON),
        FreeHost("b", ["b.gpu0"], last_used=NOON + 50),
    ]
    placed = place(queue, NOON + 100, POLICY, hosts, CATALOGS, resident)
    assert {p.job.id: (p.backend, p.swaps) for p in placed} == {
        internal.id: ("b", True),
        external.id: ("a", False),
    }


def test_a_better_class_is_never_skipped_for_a_warm_job_of_a_worse_one() -> None:
    external_warm = job("qwen2.5:7b")
    internal_cold = job("llama3.2", Lane.INTERNAL)
    queue = queue_of(external_warm, internal_cold)
    resident = {"a": frozenset({"qwen2.5:7b"})}
    (placed,) = place(queue, NOON + 100, POLICY, free("a"), CATALOGS, resident)
    assert (placed.job.id, placed.swaps) == (internal_cold.id, True)


def test_a_second_free_slot_on_the_same_backend_joins_the_model_just_placed_there() -> None:
    first, second = job("gemma3"), job("gemma3")
    queue = queue_of(first, second)
    hosts = [FreeHost("c", ["c.gpu0", "c.gpu1"])]
    placed = place(queue, NOON + 100, POLICY, hosts, CATALOGS, {"c": frozenset()})
    assert [(p.slot_id, p.job.id, p.swaps) for p in placed] == [
        ("c.gpu0", first.id, True),
        ("c.gpu1", second.id, False),
    ]


def test_the_preemption_victim_is_the_slot_whose_backend_has_the_model_loaded() -> None:
    active = SchedulingPolicy()  # no active hours: URGENT internal work preempts
    incoming = job("llama3.2", Lane.INTERNAL, priority=Priority.URGENT)
    later_start = job("gemma3").replace(state=JobState.RUNNING, started_at=NOON + 50)
    earlier_start = job("gemma3").replace(state=JobState.RUNNING, started_at=NOON + 10)
    cold = SlotView("a.gpu0", later_start, swaps=True)
    warm = SlotView("b.gpu0", earlier_start, swaps=False)
    assert choose_preemption(incoming, [cold, warm], NOON + 60, active) == warm
    # Without residency to tell them apart, the call that started last is the victim.
    unmarked = [SlotView("a.gpu0", later_start), SlotView("b.gpu0", earlier_start)]
    assert choose_preemption(incoming, unmarked, NOON + 60, active) == unmarked[0]


def test_the_worked_example_in_the_scheduling_doc_is_what_placement_does() -> None:
    """docs/scheduling.md, "Placement across backends", step by step."""
    catalogs: dict[str, frozenset[str] | None] = {
        "a": frozenset({"llama3.2", "qwen2.5:7b"}),
        "b": frozenset({"llama3.2", "mistral-nemo"}),
        "c": frozenset({"qwen2.5:7b", "gemma3"}),
    }
    models = ("gemma3", "llama3.2", "qwen2.5:7b", "llama3.2", "mistral-nemo", "qwen2.5:7b")
    j1, j2, j3, j4, j5, j6 = jobs = [job(model) for model in models]
    queue = queue_of(*jobs)
    resident = {"a": frozenset({"qwen2.5:7b"}), "b": frozenset({"llama3.2"}), "c": frozenset()}
    policy = SchedulingPolicy(max_swap_defer_s=30.0)

    def round_on(*names: str) -> list[tuple[str, str, bool]]:
        placed = place(queue, NOON + 100, policy, free(*names), catalogs, resident)
        return [(p.backend, p.job.id, p.swaps) for p in placed]

    assert round_on("a", "b", "c") == [("a", j3.id, False), ("b", j2.id, False), ("c", j1.id, True)]
    resident["c"] = frozenset({"gemma3"})
    assert round_on("a") == [("a", j6.id, False)]
    assert round_on("b") == [("b", j4.id, False)]
    assert round_on("b") == [("b", j5.id, True)]


# Backend labels (docs/scheduling.md "Placement across backends"): a and b both list
# llama3.2 and qwen2.5:7b; only a carries the labels "gpu:a100" and "fast".
LABELLED_CATALOGS: dict[str, frozenset[str] | None] = {
    "a": frozenset({"llama3.2", "qwen2.5:7b"}),
    "b": frozenset({"llama3.2", "qwen2.5:7b"}),
}
LABELS = {"a": frozenset({"gpu:a100", "fast"}), "b": frozenset()}


def labelled(model: str, *labels: str, at: float | None = None) -> Job:
    made = job(model, at=at)
    return made.replace(spec=made.spec.replace(labels=labels))


def place_labelled(
    queue: ReadyQueue, hosts: list[FreeHost], resident: dict[str, frozenset[str]], t: float = 100
):
    return place(queue, NOON + t, POLICY, hosts, LABELLED_CATALOGS, resident, LABELS)


def test_a_backend_runs_a_labelled_job_only_if_it_carries_every_label() -> None:
    fit = placement_fit("a", LABELLED_CATALOGS, {}, LABELS)
    assert fit.labels == LABELS["a"]
    assert fit.can_run("llama3.2", ("gpu:a100",)) and fit.can_run("llama3.2", ("fast", "gpu:a100"))
    assert not fit.can_run("llama3.2", ("gpu:a100", "gpu:h100"))
    assert not placement_fit("b", LABELLED_CATALOGS, {}, LABELS).can_run("llama3.2", ("fast",))
    # The labels add to the catalog, they do not replace it: b lists mistral-nemo, a not.
    assert not placement_fit("a", CATALOGS, {}, LABELS).can_run("mistral-nemo", ("fast",))
    assert placement_fit("b", LABELLED_CATALOGS, {}).can_run("llama3.2")


def test_a_labelled_job_goes_to_the_labelled_backend_even_where_another_has_its_model() -> None:
    needs_a100 = labelled("llama3.2", "gpu:a100")
    queue = queue_of(needs_a100)
    resident = {"a": frozenset({"qwen2.5:7b"}), "b": frozenset({"llama3.2"})}
    # b alone is free and has llama3.2 loaded: it may not take the job.
    assert place_labelled(queue, free("b"), resident) == []
    (placed,) = place_labelled(queue, free("a", "b"), resident)
    assert (placed.backend, placed.job.id, placed.swaps) == ("a", needs_a100.id, True)


def test_a_backend_without_the_labels_takes_the_unlabelled_work_behind_a_labelled_job() -> None:
    needs_fast = labelled("llama3.2", "fast", at=NOON)
    plain = job("llama3.2", at=NOON + 1)
    queue = queue_of(needs_fast, plain)
    assert queue.wants({"llama3.2"}), "wants answers by model key, labels or not"
    resident = {"b": frozenset({"llama3.2"})}
    (on_b,) = place_labelled(queue, free("b"), resident)
    assert on_b.job.id == plain.id and not on_b.swaps
    (on_a,) = place_labelled(queue, free("a"), resident)
    assert on_a.job.id == needs_fast.id
    assert len(queue) == 0 and not queue.wants({"llama3.2"})


def test_the_starvation_bound_holds_per_backend_for_a_labelled_job() -> None:
    """A labelled job passed over on the one backend that carries its labels runs there
    within the bound; the backend without them never counts it as waiting."""
    waiting = labelled("llama3.2", "gpu:a100", at=NOON)
    warm = [job("qwen2.5:7b", at=NOON + 1 + i) for i in range(10)]
    queue = queue_of(waiting, *warm)
    resident = {"a": frozenset({"qwen2.5:7b"}), "b": frozenset({"qwen2.5:7b"})}
    taken = []
    for t in (100, 110, 120, 129.9, 130):
        (on_b,) = place_labelled(queue, free("b"), resident, t)
        (on_a,) = place_labelled(queue, free("a"), resident, t)
        taken.append((on_a.job.id, on_b.job.id))
    assert all(b != waiting.id for _, b in taken)
    assert [a for a, _ in taken[:4]] == [j.id for j in warm[1:8:2]]
    assert taken[4][0] == waiting.id  # deferred 30 s on backend a: it goes now
