"""Cloud fallback through the gateway: an API key's ``allow_cloud``, the request's say
(``X-Gpulane-Cloud: allow|never`` on the Ollama and OpenAI routes, ``allow_cloud`` on
``POST /jobs``), and a reload of ``[cloud]`` that applies (the model, the routing bound)
or is refused naming the key (the slots).

The cloud is the fake Anthropic server (tests/kits/fake_anthropic.py), built from the
config file as ``gpulane serve`` builds it; the local GPU is a FakeGpu whose one slot a
held call keeps busy, so a job that may go to the cloud goes there at once
(``max_local_wait_s = 0``) and any other waits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fake_anthropic import FakeAnthropic
from gateway_kit import bearer

from actors import Config, GpuLane
from actors.gateway import GatewayServer, create_app
from actors.runtime import SystemClock
from actors.testing import FakeCall, FakeGpu, quiesce, wait_until
from protocol import Job, JobSpec, JobState

CLOUDY = "cloudy-key-0001"  # allow_cloud, admin
GROUNDED = "grounded-key-02"  # no allow_cloud
KEY_ENV = "GPULANE_TEST_ANTHROPIC_KEY"
HI = [{"role": "user", "content": "hello"}]

CONFIG = """\
[store]
path = "{store}"
synchronous = "NORMAL"
[cloud]
enabled = true
url = "{url}"
model = "{model}"
api_key_env = "{key_env}"
slots = {slots}
max_local_wait_s = {max_local_wait_s}
assumed_run_s = 30
[[gateway.api_keys]]
key = "{cloudy}"
caller = "cloudy"
allow_cloud = true
admin = true
[[gateway.api_keys]]
key = "{grounded}"
caller = "grounded"
"""


@dataclasses.dataclass
class CloudStack:
    """A lane with one busy local slot and a cloud on the fake, behind a gateway."""

    lane: GpuLane
    gpu: FakeGpu
    fake: FakeAnthropic
    server: GatewayServer
    path: Path
    blocker: FakeCall

    def write(self, **changes: object) -> None:
        """Rewrite the config file with ``changes`` to the cloud's settings."""
        values = {"model": "claude-a", "slots": 1, "max_local_wait_s": 0, **changes}
        self.path.write_text(config_text(self.path.parent, self.fake.url, **values))

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers=bearer(key), timeout=10.0)

    def cloud_models(self) -> list[str]:
        """The model of each call the fake cloud got, in order."""
        return [body["model"] for path, body, _ in self.fake.requests if path == "/v1/messages"]

    def job(self, job_id: str) -> Job:
        return self.lane.get(job_id)


def config_text(directory: Path, url: str, **values: object) -> str:
    return CONFIG.format(
        store=directory / "jobs.sqlite3", url=url, key_env=KEY_ENV, cloudy=CLOUDY,
        grounded=GROUNDED, **values,
    )  # fmt: skip


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CloudStack]:
    monkeypatch.setenv(KEY_ENV, "sk-ant-test")
    path = tmp_path / "gpulane.toml"
    with FakeAnthropic(models=("claude-a", "claude-b")) as fake:
        path.write_text(
            config_text(tmp_path, fake.url, model="claude-a", slots=1, max_local_wait_s=0)
        )
        gpu = FakeGpu(SystemClock())
        lane = GpuLane.start(Config.load(path), gpu=gpu, clock=gpu.clock)
        try:
            lane.submit(JobSpec.chat(model="m", messages=HI), detach=True)
            blocker = gpu.next_call()  # the local slot is busy from here on
            with GatewayServer(create_app(lane, config_path=path)) as server:
                yield CloudStack(lane, gpu, fake, server, path, blocker)
        finally:
            lane.stop()


def test_a_key_with_allow_cloud_sends_its_jobs_to_the_cloud_unless_the_request_says_never(
    stack: CloudStack,
) -> None:
    with stack.client(CLOUDY) as cloudy:
        chat = cloudy.post("/api/chat", json={"model": "m", "messages": HI, "stream": False})
        assert chat.status_code == 200 and chat.json()["message"]["content"]
        openai = cloudy.post("/v1/chat/completions", json={"model": "m", "messages": HI})
        assert openai.status_code == 200
        assert stack.cloud_models() == ["claude-a", "claude-a"]
        kept = cloudy.post("/jobs", json={"model": "m", "messages": HI, "allow_cloud": False})
        assert kept.status_code == 202
        with ThreadPoolExecutor(1) as pool:
            never = pool.submit(
                cloudy.post, "/api/chat", json={"model": "m", "messages": HI, "stream": False},
                headers={"X-Gpulane-Cloud": "never"},
            )  # fmt: skip
            wait_until(lambda: len(stack.lane.list(caller="cloudy")) == 4)
            quiesce()
            waiting = [job for job in stack.lane.list(caller="cloudy") if not job.spec.allow_cloud]
            assert [job.state for job in waiting] == [JobState.QUEUED] * 2
            assert len(stack.cloud_models()) == 2, "the jobs that said never stay local"
            stack.blocker.finish("local")
            for _ in waiting:
                stack.gpu.next_call().finish("local answer")
            assert never.result(timeout=10).json()["message"]["content"] == "local answer"
    assert stack.job(kept.json()["id"]).state is JobState.SUCCEEDED


def test_a_key_without_allow_cloud_keeps_its_jobs_local_and_may_not_ask_for_the_cloud(
    stack: CloudStack,
) -> None:
    with stack.client(GROUNDED) as grounded:
        ask = {"X-Gpulane-Cloud": "allow"}
        refused = grounded.post("/api/chat", json={"model": "m", "messages": HI}, headers=ask)
        assert refused.status_code == 403 and refused.json()["field"] == "x-gpulane-cloud"
        refused = grounded.post("/v1/chat/completions", json={"model": "m", "messages": HI},
                                headers=ask)  # fmt: skip
        assert refused.status_code == 403
        assert refused.json()["error"]["param"] == "x-gpulane-cloud"
        body = {"model": "m", "messages": HI, "allow_cloud": True}
        refused = grounded.post("/jobs", json=body)
        assert refused.status_code == 403 and refused.json()["field"] == "allow_cloud"
        bad = grounded.post("/api/chat", json={"model": "m", "messages": HI},
                            headers={"X-Gpulane-Cloud": "maybe"})  # fmt: skip
        assert bad.status_code == 400 and bad.json()["field"] == "x-gpulane-cloud"
        assert bad.json()["allowed"] == ["allow", "never"]
        queued = grounded.post("/jobs", json={"model": "m", "messages": HI})
        assert queued.status_code == 202
    assert stack.job(queued.json()["id"]).spec.allow_cloud is False
    quiesce()
    assert stack.cloud_models() == []


def test_a_keys_default_keeps_local_what_the_cloud_cannot_carry_but_an_ask_is_refused(
    stack: CloudStack,
) -> None:
    # The Anthropic API constrains an answer to a JSON schema, not to any JSON.
    body = {"model": "m", "messages": HI, "format": "json"}
    with stack.client(CLOUDY) as cloudy:
        local = cloudy.post("/jobs", json=body)
        assert local.status_code == 202
        assert stack.job(local.json()["id"]).spec.allow_cloud is False
        refused = cloudy.post("/jobs", json={**body, "allow_cloud": True})
        assert refused.status_code == 400 and refused.json()["field"] == "format"
    quiesce()
    assert stack.cloud_models() == []


def test_a_reload_applies_the_cloud_model_and_bound_and_refuses_the_slots_by_name(
    stack: CloudStack,
) -> None:
    job = {"model": "m", "messages": HI}
    with stack.client(CLOUDY) as cloudy:
        stack.write(model="claude-b")
        reloaded = cloudy.post("/admin/reload")
        assert reloaded.json()["changed"] == ["cloud.model"]
        first = cloudy.post("/jobs", json=job).json()["id"]
        wait_until(lambda: stack.job(first).state is JobState.SUCCEEDED)
        assert stack.cloud_models() == ["claude-b"]
        stack.write(model="claude-b", max_local_wait_s=3600)
        assert cloudy.post("/admin/reload").json()["changed"] == ["cloud.max_local_wait_s"]
        second = cloudy.post("/jobs", json=job).json()["id"]
        quiesce()
        assert stack.job(second).state is JobState.QUEUED, "an hour's bound: it waits locally"
        stack.write(model="claude-a", slots=2)
        refused = cloudy.post("/admin/reload")
        assert refused.status_code == 409 and refused.json()["field"] == "cloud"
        assert refused.json()["problem"] == "cloud.slots cannot change while running"
    assert stack.lane.config.cloud.model == "claude-b", "a refused reload changes nothing"
