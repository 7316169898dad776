"""Placement in a running lane (#17, docs/scheduling.md "Placement across backends"), on the
fake GPU with configured catalogs: a backend that goes down stops only its own slots, the
cloud takes only the work no up backend may run, a preemption takes the slot whose
backend has the internal job's model loaded, a cold backend loads what nobody else has,
and a job requiring backend labels runs only on a backend carrying them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartLane
from fake_anthropic import FakeAnthropic

from actors import Config, GpuLane
from actors.backends.anthropic import AnthropicBackend
from actors.config import BackendSettings, CloudSettings
from actors.testing import FakeCall, FakeGpu, ManualClock, quiesce
from protocol import JobSpec, Lane, Priority, SchedulingPolicy, StoreSettings, ValidationError

HI = [{"role": "user", "content": "hi"}]
ONE_EACH = (
    BackendSettings(name="a", models=("llama3.2",)),
    BackendSettings(name="b", models=("qwen2.5",)),
)
LABELLED_B = (
    BackendSettings(name="a", models=("llama3.2",)),
    BackendSettings(name="b", models=("llama3.2",), labels=("gpu:a100", "region=eu")),
)
BOTH_EACH = (
    BackendSettings(name="a", models=("llama3.2", "qwen2.5")),
    BackendSettings(name="b", models=("llama3.2", "qwen2.5")),
)


def chat(model: str, **given: object) -> JobSpec:
    return JobSpec.chat(model=model, messages=HI, **given)


def slot_of(lane: GpuLane, job_id: str) -> str | None:
    quiesce()
    slots = lane.status()["slots"]
    return next((slot for slot, s in slots.items() if s["job_id"] == job_id), None)


def start_call(lane: GpuLane, gpu: FakeGpu, spec: JobSpec) -> tuple[str, FakeCall]:
    """Submit ``spec`` (detached: nobody waits on it), and return its job id and its call
    once output made its model resident."""
    ticket = lane.submit(spec, detach=True)
    call = gpu.next_call().emit("x")
    quiesce()
    return ticket.job_id, call


@pytest.fixture
def anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(models=("claude-test",)) as fake:
        yield fake


def test_a_job_whose_only_backend_is_down_goes_to_the_cloud_and_the_others_run_at_home(
    tmp_path: Path, anthropic: FakeAnthropic
) -> None:
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        backends=ONE_EACH,
        cloud=CloudSettings(slots=1, max_local_wait_s=600.0, assumed_run_s=1.0),
    )
    gpu = FakeGpu(ManualClock())
    cloud = AnthropicBackend("sk-ant-test", model="claude-test", base_url=anthropic.url)
    lane = GpuLane.start(config, gpu=gpu, cloud=cloud, clock=gpu.clock)
    try:
        lane.submit(chat("qwen2.5"), detach=True)
        gpu.next_call().fail("connection refused", outage=True)
        quiesce()
        health = lane.status()["health"]
        assert (health["a"]["state"], health["b"]["state"]) == ("up", "down")
        # qwen2.5 is only on b, which is down: this one flies at once.
        flies = lane.submit(chat("qwen2.5", allow_cloud=True))
        assert flies.result(timeout=5) and lane.get(flies.job_id).backend == "cloud"
        # llama3.2 has an up backend with a free slot: it stays home.
        home = lane.submit(chat("llama3.2", allow_cloud=True))
        gpu.next_call().finish("from a")
        assert home.result(timeout=5) == "from a" and lane.get(home.job_id).backend == "a"
        assert lane.status()["counters"]["dispatched_cloud"] == 1
    finally:
        lane.stop()
        cloud.close()


def test_a_backend_that_goes_down_stops_only_its_own_slots(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(backends=BOTH_EACH)
    lane.submit(chat("qwen2.5"), detach=True)
    fake_gpu.next_call().fail("connection refused", outage=True)  # on a: names come first
    quiesce()
    assert lane.status()["health"]["a"]["state"] == "down"
    # The job that met the outage and a new one both run on b, one after the other.
    first = fake_gpu.next_call()
    assert slot_of(lane, lane.list(limit=1)[0].id) == "b.gpu0"
    first.finish("one")
    ticket = lane.submit(chat("llama3.2"))
    fake_gpu.next_call().finish("two")
    assert ticket.result(timeout=5) == "two" and lane.get(ticket.job_id).backend == "b"
    assert fake_gpu.no_new_call()


def test_the_preemption_victim_is_the_slot_whose_backend_has_the_internal_jobs_model(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(backends=BOTH_EACH, scheduling=SchedulingPolicy())
    clock = fake_gpu.clock
    assert isinstance(clock, ManualClock)
    llama_job, llama_call = start_call(lane, fake_gpu, chat("llama3.2"))
    clock.advance(1.0)
    qwen_job, qwen_call = start_call(lane, fake_gpu, chat("qwen2.5"))
    assert (slot_of(lane, llama_job), slot_of(lane, qwen_job)) == ("a.gpu0", "b.gpu0")
    # Without placement the call that started last (qwen2.5 on b) would be the victim;
    # a has llama3.2 loaded, so a's call makes way.
    urgent = lane.submit(chat("llama3.2", lane=Lane.INTERNAL, priority=Priority.URGENT))
    assert llama_call.wait_cancelled()
    assert not qwen_call.token.cancelled
    fake_gpu.next_call().finish("urgent")
    assert urgent.result(timeout=5) == "urgent" and lane.get(urgent.job_id).backend == "a"
    qwen_call.finish("q")


def test_a_cold_backend_loads_a_model_no_other_backend_has_loaded(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(backends=BOTH_EACH)
    _, warm_up = start_call(lane, fake_gpu, chat("llama3.2"))
    warm_up.finish("warm")
    quiesce()
    lane.pause()
    older = lane.submit(chat("llama3.2"))
    old = lane.submit(chat("llama3.2"))
    newer = lane.submit(chat("qwen2.5"))
    lane.resume()
    first, second = fake_gpu.next_call(), fake_gpu.next_call()
    # a keeps llama3.2 (the oldest job); b, with nothing loaded, takes qwen2.5, the newest,
    # rather than load llama3.2 a second time for the next oldest.
    placed = (slot_of(lane, older.job_id), slot_of(lane, newer.job_id), slot_of(lane, old.job_id))
    assert placed == ("a.gpu0", "b.gpu0", None)
    calls = {call.request.model: call for call in (first, second)}
    calls["llama3.2"].finish("1")  # a is free again: it takes the llama3.2 job left
    fake_gpu.next_call().finish("2")
    calls["qwen2.5"].finish("3")
    assert all(t.result(timeout=5) for t in (older, old, newer))
    assert lane.get(old.job_id).backend == "a", "the second llama3.2 job waited for a"


def test_a_labelled_job_runs_on_the_labelled_backend_though_another_has_its_model_loaded(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(backends=LABELLED_B)
    warm_job, warm_up = start_call(lane, fake_gpu, chat("llama3.2"))
    assert slot_of(lane, warm_job) == "a.gpu0"  # names come first: a loads llama3.2
    warm_up.finish("warm")
    quiesce()
    ticket = lane.submit(chat("llama3.2", labels=["gpu:a100"]))
    fake_gpu.next_call().finish("on b")
    assert ticket.result(timeout=5) == "on b"
    done = lane.get(ticket.job_id)
    assert (done.backend, done.slot, done.spec.labels) == ("b", "b.gpu0", ("gpu:a100",))


def test_a_job_requiring_a_label_no_backend_carries_is_refused_at_submit(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    lane = start_lane(backends=LABELLED_B)
    with pytest.raises(ValidationError) as refused:
        lane.submit(chat("llama3.2", labels=["gpu:a100", "gpu:h100"]))
    assert refused.value.field == "labels"
    assert "gpu:h100" in refused.value.problem
    assert refused.value.allowed == ("a: []", "b: [gpu:a100, region=eu]")
    assert not lane.list(limit=10) and fake_gpu.no_new_call()


def test_one_backend_without_labels_refuses_any_job_labels(start_lane: StartLane) -> None:
    lane = start_lane()
    with pytest.raises(ValidationError) as refused:
        lane.submit(chat("llama3.2", labels=["fast"]))
    assert refused.value.field == "labels" and refused.value.allowed == ("local: []",)
