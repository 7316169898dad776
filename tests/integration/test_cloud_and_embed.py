"""Cloud fallback (the routing decision, and cloud slots on the Anthropic fake through a
full GpuLane), the embeddings bypass, and preemption over real HTTP through GpuLane."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic
from profiles import EMBEDDER, ENDLESS

from actors import Config, GpuLane, ManualClock, SystemClock
from actors.backend_factory import cloud_backend
from actors.backends.anthropic import AnthropicBackend
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import ModelProfile, SimulatedOllama
from actors.cloud import CloudPolicy, LocalOutlook, cloud_deadline, send_to_cloud
from actors.config import CloudSettings
from actors.testing import FakeGpu, quiesce
from protocol import (
    ActiveHours,
    Job,
    JobSpec,
    JobState,
    Lane,
    SchedulingPolicy,
    StoreSettings,
    ValidationError,
)

QUESTION = [{"role": "user", "content": "Which job runs next?"}]


def job(allow_cloud: bool = True, created_at: float = 100.0) -> Job:
    spec = JobSpec.chat(model="llama3.2", messages=QUESTION, allow_cloud=allow_cloud)
    return Job("j1", 1, spec, JobState.QUEUED, created_at, created_at)


# ---------------------------------------------------------------- the decision

POLICY = CloudPolicy(max_local_wait_s=60.0, assumed_run_s=20.0)


def test_a_job_that_does_not_allow_the_cloud_never_goes_there() -> None:
    down = LocalOutlook(jobs_ahead=50, local_slots=1, mean_run_s=30.0, down=True)
    assert not send_to_cloud(job(allow_cloud=False), 1000.0, down, POLICY)
    assert cloud_deadline(job(allow_cloud=False), down, POLICY) is None


def test_a_job_goes_to_the_cloud_at_once_when_the_local_backend_is_down() -> None:
    down = LocalOutlook(jobs_ahead=0, local_slots=1, mean_run_s=1.0, down=True)
    assert send_to_cloud(job(), 100.0, down, POLICY)


def test_the_expected_local_wait_counts_jobs_ahead_shared_among_local_slots() -> None:
    outlook = LocalOutlook(jobs_ahead=4, local_slots=2, mean_run_s=20.0)
    assert outlook.expected_wait_s == 40.0
    assert not send_to_cloud(job(), 100.0, outlook, POLICY)  # 0 waited + 40 ahead <= 60
    assert not send_to_cloud(job(), 120.0, outlook, POLICY)  # 20 + 40 = 60: not over
    assert send_to_cloud(job(), 121.0, outlook, POLICY)
    assert cloud_deadline(job(), outlook, POLICY) == 120.0


def test_a_long_queue_sends_a_new_job_to_the_cloud_at_once() -> None:
    busy = LocalOutlook(jobs_ahead=5, local_slots=1, mean_run_s=20.0)
    assert send_to_cloud(job(), 100.0, busy, POLICY)
    assert cloud_deadline(job(), busy, POLICY) < 100.0


def test_cloud_settings_are_validated_and_give_the_policy() -> None:
    settings = CloudSettings(max_local_wait_s=5.0, assumed_run_s=2.0)
    assert settings.policy == CloudPolicy(5.0, 2.0)
    with pytest.raises(ValidationError, match=r"cloud\.max_local_wait_s"):
        CloudSettings(max_local_wait_s=-1.0)
    with pytest.raises(ValidationError, match=r"cloud\.slots"):
        Config.from_mapping({"cloud": {"slots": 0}})
    with pytest.raises(ValidationError, match=r"cloud\.api_key_env"):
        GpuLane.start(
            Config(cloud=CloudSettings(enabled=True, api_key_env="GPULANE_TEST_NO_SUCH_KEY")),
            gpu=FakeGpu(SystemClock()),
        )


# ------------------------------------------------------- cloud slots, for real


@pytest.fixture
def anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(models=("claude-test",)) as fake:
        yield fake


def cloud_lane(
    tmp_path: Path, fake: FakeAnthropic, max_local_wait_s: float, assumed_run_s: float
) -> tuple[GpuLane, FakeGpu, AnthropicBackend]:
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        cloud=CloudSettings(
            slots=1, max_local_wait_s=max_local_wait_s, assumed_run_s=assumed_run_s
        ),
    )
    gpu = FakeGpu(ManualClock())  # the lane's clock: time moves only when a test advances it
    cloud = AnthropicBackend("sk-ant-test", model="claude-test", base_url=fake.url)
    return GpuLane.start(config, gpu=gpu, cloud=cloud, clock=gpu.clock), gpu, cloud


def test_with_the_local_gpu_busy_a_cloud_job_runs_on_the_cloud_and_others_wait(
    tmp_path: Path, anthropic: FakeAnthropic
) -> None:
    lane, gpu, cloud = cloud_lane(tmp_path, anthropic, max_local_wait_s=1.0, assumed_run_s=30.0)
    try:
        busy = lane.submit(JobSpec.chat(model="llama3.2", messages=QUESTION))
        local_call = gpu.next_call()
        stays = lane.submit(JobSpec.chat(model="llama3.2", messages=QUESTION))
        flies = lane.submit(JobSpec.chat(model="llama3.2", messages=QUESTION, allow_cloud=True))
        answer = flies.result(timeout=5)
        assert answer and anthropic.requests[-1][1]["model"] == "claude-test"
        assert lane.status()["counters"]["dispatched_cloud"] == 1
        assert not stays.done() and gpu.no_new_call()
        local_call.finish("local answer")
        assert busy.result(timeout=5) == "local answer"
        gpu.next_call().finish("second")
        assert stays.result(timeout=5) == "second"
    finally:
        lane.stop()
        cloud.close()


def test_a_cloud_job_leaves_the_local_queue_once_its_wait_would_pass_the_bound(
    tmp_path: Path, anthropic: FakeAnthropic
) -> None:
    lane, gpu, cloud = cloud_lane(tmp_path, anthropic, max_local_wait_s=0.3, assumed_run_s=0.01)
    try:
        lane.submit(JobSpec.chat(model="llama3.2", messages=QUESTION), detach=True)
        local_call = gpu.next_call()
        flies = lane.submit(JobSpec.chat(model="llama3.2", messages=QUESTION, allow_cloud=True))
        clock = gpu.clock
        assert isinstance(clock, ManualClock)
        clock.advance(0.25)
        quiesce()
        assert not flies.done(), "its wait has not reached the bound yet"
        clock.advance(0.05)
        assert flies.result(timeout=5)
        assert lane.status()["counters"]["dispatched_cloud"] == 1
        local_call.finish("done")
    finally:
        lane.stop()
        cloud.close()


def test_when_the_local_backend_fails_cloud_jobs_go_to_the_cloud_at_once(
    tmp_path: Path, anthropic: FakeAnthropic
) -> None:
    lane, gpu, cloud = cloud_lane(tmp_path, anthropic, max_local_wait_s=600.0, assumed_run_s=1.0)
    try:
        lane.submit(JobSpec.chat(model="llama3.2", messages=QUESTION), detach=True)
        gpu.next_call().fail("connection refused", outage=True)
        quiesce()  # the failed call is back in the queue, no attempt charged, the slot idle
        assert lane.status()["slots"]["gpu0"]["job_id"] is None
        assert lane.status()["health"]["local"]["state"] == "down"
        flies = lane.submit(JobSpec.chat(model="llama3.2", messages=QUESTION, allow_cloud=True))
        assert flies.result(timeout=5) and lane.get(flies.job_id).state is JobState.SUCCEEDED
        assert lane.status()["counters"]["dispatched_cloud"] == 1
    finally:
        lane.stop()
        cloud.close()


# ------------------------------------------------- simulated server, real HTTP

MEDIUM = ModelProfile(
    load_seconds=0.0, first_token_seconds=0.0, tokens_per_second=300.0,
    mean_answer_tokens=150, max_answer_tokens=3000,
)  # fmt: skip
QUICK = ModelProfile(
    load_seconds=0.0, first_token_seconds=0.0, tokens_per_second=2000.0, mean_answer_tokens=10
)


@pytest.fixture
def simulated() -> Iterator[SimulatedOllama]:
    models = {"endless": ENDLESS, "embedder": EMBEDDER, "quick": QUICK, "medium": MEDIUM}
    with SimulatedOllama(models, max_loaded_models=3) as sim:
        yield sim


@pytest.fixture
def http_lane(tmp_path: Path, simulated: SimulatedOllama) -> Iterator[GpuLane]:
    config = Config(
        store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")),
        scheduling=SchedulingPolicy(active_hours=ActiveHours.parse("00:00-23:59")),
    )
    backend = OllamaBackend(simulated.url, timeout=10.0)
    lane = GpuLane.start(config, backend=backend, clock=SystemClock())
    try:
        yield lane
    finally:
        lane.stop()
        backend.close()


def test_embeddings_complete_while_the_gpu_slot_is_busy_with_a_long_call(
    http_lane: GpuLane, simulated: SimulatedOllama
) -> None:
    long = http_lane.submit(JobSpec.chat(model="endless", messages=QUESTION), detach=True)
    simulated.wait_for(lambda s: s.active_calls == 1 and s.tokens_generated > 0)
    results: list[int] = []

    def embed(i: int) -> None:
        result = http_lane.embed("embedder", [f"text {i}", "more"], caller="bot", timeout=5)
        results.append(len(result.embeddings))

    threads = [threading.Thread(target=embed, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each embed gives up after 5 s, and the long call runs for minutes: all six answered
    # means none waited behind it.
    assert results == [2] * 6
    stats = simulated.stats()
    assert stats.embed_requests == 6 and stats.active_calls == 1 and stats.calls_finished == 0
    assert http_lane.get(long.job_id).state is JobState.RUNNING
    assert (
        http_lane.embed("embedder", "one").embeddings[0]
        == http_lane.embed("embedder", ["one"]).embeddings[0]
    )
    http_lane.cancel(long.job_id)


def test_embed_needs_a_backend_and_strings(tmp_path: Path) -> None:
    config = Config(store=StoreSettings(path=str(tmp_path / "jobs.sqlite3")))
    with GpuLane.start(config, gpu=FakeGpu(SystemClock()), clock=SystemClock()) as lane:
        with pytest.raises(ValidationError, match="no backend to embed with"):
            lane.embed("embedder", "text")
        with pytest.raises(ValidationError, match="inputs"):
            lane.embed("embedder", [])
        for bad, field in (
            ({"inputs": ["ok", "a\ud800"]}, "inputs[1]"),
            ({"options": {"seed": float("inf")}}, "options.seed"),
            ({"options": {"raw": b"bytes"}}, "options.raw"),
            ({"model": " "}, "model"),
        ):
            call: dict[str, Any] = {"model": "embedder", "inputs": "text"} | bad
            with pytest.raises(ValidationError) as caught:
                lane.embed(call.pop("model"), call.pop("inputs"), **call)
            assert caught.value.field == field


def test_preemption_over_http_closes_the_stream_and_the_job_resumes_without_repeats(
    http_lane: GpuLane, simulated: SimulatedOllama
) -> None:
    spec = JobSpec.chat(model="medium", messages=QUESTION)
    uninterrupted = http_lane.submit(spec.replace(lane=Lane.INTERNAL)).result(timeout=10)
    assert len(uninterrupted.split()) > 30
    before = simulated.stats()
    external = http_lane.submit(spec)
    simulated.wait_for(lambda s: s.tokens_generated >= before.tokens_generated + 12)
    urgent = JobSpec.generate(model="quick", prompt="now", lane=Lane.INTERNAL)
    assert http_lane.submit(urgent).result(timeout=10)
    assert simulated.stats().calls_disconnected == 1  # the stream closed before it ran
    answer = external.result(timeout=10)
    assert http_lane.get(external.job_id).preemptions == 1
    assert answer == uninterrupted  # resumed from its prefix: nothing repeated or lost
    after = simulated.stats()
    quick_tokens = len(http_lane.list(lane=Lane.INTERNAL)[0].result.split())
    # Resuming decodes each token of the answer once (plus at most one in flight at the cut).
    resumed_cost = after.tokens_generated - before.tokens_generated - quick_tokens
    assert len(uninterrupted.split()) <= resumed_cost <= len(uninterrupted.split()) + 1


def test_the_cloud_thinking_mode_is_checked_and_reaches_the_anthropic_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValidationError, match=r"cloud\.thinking_mode.*allowed: budget, adaptive"):
        CloudSettings(thinking_mode="always")
    monkeypatch.setenv("GPULANE_TEST_CLOUD_KEY", "sk-ant-test")
    built = cloud_backend(
        CloudSettings(api_key_env="GPULANE_TEST_CLOUD_KEY", thinking_mode="adaptive")
    )
    try:
        assert isinstance(built.backend, AnthropicBackend)
        assert built.backend.thinking_mode == "adaptive"
    finally:
        built.close()
