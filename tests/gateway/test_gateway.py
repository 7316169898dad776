"""The gateway end to end: official ollama and openai clients → uvicorn → GpuLane → simulated
Ollama over real HTTP. Wire formats, errors, auth isolation, limits, disconnects, rejections."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from gateway_kit import (
    ADMIN,
    ALICE,
    BOB,
    BOT,
    HELLO,
    KEYS,
    TINY,
    Stack,
    bearer,
    running_stack,
)

from actors.backends.simulated import FaultKind
from actors.config import GatewaySettings
from actors.testing import wait_until
from protocol import JobState, QueueFullError, RateLimitedError

FINAL_METRICS = (
    "total_duration", "load_duration", "prompt_eval_count",
    "prompt_eval_duration", "eval_count", "eval_duration",
)  # fmt: skip


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path) as running:
        yield running


def ollama_client(stack: Stack, key: str = ALICE) -> ollama.Client:
    return ollama.Client(host=stack.url, headers=bearer(key))


def ndjson_lines(response: httpx.Response) -> list[dict[str, Any]]:
    raw = response.read().decode()
    assert raw.endswith("\n")
    lines = raw.split("\n")[:-1]
    assert all(line.strip() for line in lines), "no blank keep-alive lines"
    return [json.loads(line) for line in lines]


# --- the Ollama API -----------------------------------------------------------------------


def test_ollama_client_chat_gets_the_whole_answer_with_ollamas_final_metrics(stack: Stack) -> None:
    reply = ollama_client(stack).chat(model="tiny", messages=HELLO)
    assert reply.done is True and reply.done_reason == "stop"
    assert reply.message.role == "assistant" and len(reply.message.content.split()) >= 2
    assert reply.eval_count and reply.eval_count > 0 and reply.total_duration
    job = stack.wait_for_job(lambda j: j.state is JobState.SUCCEEDED)
    assert job.result == reply.message.content and job.spec.caller == "alice"


def test_ollama_client_streams_generate_piece_by_piece_and_ends_with_a_done_line(
    stack: Stack,
) -> None:
    parts = list(ollama_client(stack).generate(model="tiny", prompt="tell me", stream=True))
    assert len(parts) >= 3
    assert all(p.done is False for p in parts[:-1]) and parts[-1].done is True
    assert parts[-1].response == "" and parts[-1].done_reason == "stop"
    text = "".join(p.response for p in parts)
    job = stack.wait_for_job(lambda j: j.state is JobState.SUCCEEDED)
    assert job.result == text


def test_streamed_chat_is_ndjson_exactly_as_ollama_writes_it(stack: Stack) -> None:
    with stack.client() as http:
        response = http.post("/api/chat", json={"model": "tiny", "messages": HELLO})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = ndjson_lines(response)
    *pieces, last = lines
    assert pieces and all(set(p) == {"model", "created_at", "message", "done"} for p in pieces)
    assert all(p["message"]["role"] == "assistant" and not p["done"] for p in pieces)
    assert last["done"] is True and last["done_reason"] == "stop"
    assert last["message"] == {"role": "assistant", "content": ""}
    assert all(isinstance(last[k], int) for k in FINAL_METRICS)
    assert last["created_at"].endswith("Z")


def test_a_token_limit_ends_the_answer_with_done_reason_length(stack: Stack) -> None:
    reply = ollama_client(stack).generate(
        model="endless", prompt="go on", options={"num_predict": 5}
    )
    assert reply.done_reason == "length" and reply.eval_count == 5


def test_an_unknown_model_is_a_404_the_ollama_client_raises(stack: Stack) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client(stack).chat(model="no-such-model", messages=HELLO)
    assert caught.value.status_code == 404
    assert "not found" in caught.value.error


def test_an_error_after_output_began_is_a_final_error_line(stack: Stack) -> None:
    stack.sim.inject(FaultKind.ERROR_LINE, path="/api/chat", times=None, after_chunks=2)
    with stack.client() as http:
        lines = ndjson_lines(http.post("/api/chat", json={"model": "tiny", "messages": HELLO}))
    *pieces, last = lines
    assert pieces and all("message" in p for p in pieces)
    assert set(last) == {"error"} and "failed after 3 attempt(s)" in last["error"]
    with pytest.raises(ollama.ResponseError, match="unexpected EOF"):
        list(ollama_client(stack).chat(model="tiny", messages=HELLO, stream=True))


def test_tags_ps_and_version_come_from_the_model_server(stack: Stack) -> None:
    client = ollama_client(stack)
    client.chat(model="tiny", messages=HELLO)
    assert [m.model for m in client.list().models] == ["tiny:latest", "endless:latest"]
    assert [m.model for m in client.ps().models] == ["tiny:latest"]
    with stack.client() as http:
        assert http.get("/api/version").json()["version"] == "0.9.0"


def test_ollama_client_embeds_one_text_and_a_batch_past_the_gpu_queue(stack: Stack) -> None:
    client = ollama_client(stack)
    one = client.embed(model="tiny", input="hello there")
    batch = client.embed(model="tiny", input=["hello there", "general kenobi"])
    assert len(one.embeddings) == 1 and len(batch.embeddings) == 2
    assert batch.embeddings[0] == one.embeddings[0], "the same text embeds the same"
    assert batch.embeddings[0] != batch.embeddings[1]
    assert len(one.embeddings[0]) == TINY.embedding_dimensions
    assert stack.sim.stats().embed_requests == 2
    assert stack.lane.list() == (), "embeddings are not jobs"
    with stack.client(ADMIN) as http:
        metrics = http.get("/metrics").text
    assert 'gpulane_embed_seconds_count{model="tiny"} 2.0' in metrics


def test_the_older_ollama_embeddings_route_gives_the_same_vector(stack: Stack) -> None:
    client = ollama_client(stack)
    legacy = client.embeddings(model="tiny", prompt="hello there")
    assert list(legacy.embedding) == client.embed(model="tiny", input="hello there").embeddings[0]


def test_embedding_an_unknown_model_is_ollamas_404(stack: Stack) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client(stack).embed(model="no-such-model", input="hi")
    assert caught.value.status_code == 404


def test_a_busy_model_server_is_a_503_with_retry_after_for_embeddings(stack: Stack) -> None:
    stack.sim.inject(FaultKind.BUSY, path="/api/embed")
    with stack.client() as http:
        busy = http.post("/api/embed", json={"model": "tiny", "input": "hi"})
        again = http.post("/api/embed", json={"model": "tiny", "input": "hi"})
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "server busy" in busy.json()["error"]
    assert again.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b'{"model": "tiny", "input": []}', 400, "input"),
        (b'{"model": "tiny", "input": ""}', 400, "input"),
        (b'{"model": "tiny", "input": ["ok", "bad \\ud800"]}', 400, "input[1]"),
        (json.dumps({"model": "tiny", "input": ["x"] * 201}).encode(), 413, "input"),
        (b'{"model": "tiny", "input": "hi", "options": {"seed": NaN}}', 400, "options.seed"),
        (b'{"model": "tiny", "input": "hi", "dimensions": 64}', 400, "dimensions"),
    ],
)
def test_a_bad_embed_request_is_refused_naming_the_field(
    stack: Stack, body: bytes, status: int, field: str
) -> None:
    with stack.client() as http:
        response = http.post(
            "/api/embed", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert stack.sim.stats().embed_requests == 0


# --- auth and isolation -------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, bearer("not-a-known-key"), {"Authorization": "Basic x"}])
def test_a_missing_or_unknown_key_is_a_401_naming_authorization(
    stack: Stack, headers: dict[str, str]
) -> None:
    for method, path in (("POST", "/api/chat"), ("GET", "/jobs"), ("GET", "/metrics")):
        response = httpx.request(method, stack.url + path, headers=headers, json={})
        assert response.status_code == 401
        assert response.json()["field"] == "authorization"
        assert response.headers["www-authenticate"].startswith("Bearer")


def submit_job(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = http.post("/jobs", json={"model": "tiny", "messages": HELLO, **fields})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_caller_cannot_see_or_cancel_another_callers_job(stack: Stack) -> None:
    stack.lane.pause()
    with stack.client(ALICE) as alice, stack.client(BOB) as bob, stack.client(ADMIN) as admin:
        job = submit_job(alice)
        for ref in (job["id"], str(job["seq"])):
            assert bob.get(f"/jobs/{ref}").status_code == 404
            assert bob.post(f"/jobs/{ref}/cancel").status_code == 404
            assert bob.post(f"/jobs/{ref}/retry").status_code == 404
        assert bob.get("/jobs").json()["jobs"] == []
        assert stack.lane.get(job["id"]).state is JobState.QUEUED
        assert alice.get(f"/jobs/{job['seq']}").json()["id"] == job["id"]
        assert [j["id"] for j in alice.get("/jobs").json()["jobs"]] == [job["id"]]
        assert admin.get(f"/jobs/{job['id']}").status_code == 200
        assert alice.post(f"/jobs/{job['id']}/cancel").json()["outcome"] == "queued"
    assert stack.lane.get(job["id"]).state is JobState.CANCELLED


def test_the_caller_always_comes_from_the_key_never_from_the_body(stack: Stack) -> None:
    with stack.client(ALICE) as alice:
        refused = alice.post("/jobs", json={"model": "tiny", "messages": HELLO, "caller": "bot"})
        assert refused.status_code == 400 and refused.json()["field"] == "caller"
        ollama_body = {"model": "tiny", "messages": HELLO, "stream": False, "caller": "bot"}
        assert alice.post("/api/chat", json=ollama_body).status_code == 200
    assert {job.spec.caller for job in stack.lane.list()} == {"alice"}


def test_a_key_without_internal_rights_cannot_submit_internal_work(stack: Stack) -> None:
    with stack.client(ALICE) as alice, stack.client(BOT) as bot:
        refused = alice.post("/jobs", json={"model": "tiny", "messages": HELLO, "lane": "internal"})
        assert refused.status_code == 403 and refused.json()["field"] == "lane"
        header = {"X-Gpulane-Lane": "internal"}
        refused = alice.post("/api/chat", json={"model": "tiny", "messages": HELLO}, headers=header)
        assert refused.status_code == 403 and refused.json()["field"] == "lane"
        assert submit_job(bot, priority="urgent")["lane"] == "internal"
        assert submit_job(alice)["lane"] == "external"
    internal = stack.lane.list(caller="bot")
    assert [(j.spec.lane.value, j.spec.priority.name) for j in internal] == [("internal", "URGENT")]


def test_only_admin_keys_pause_resume_and_reload(stack: Stack) -> None:
    with stack.client(ALICE) as alice, stack.client(ADMIN) as admin:
        for path in ("/admin/pause", "/admin/resume", "/admin/reload"):
            assert alice.post(path).status_code == 403
        assert admin.post("/admin/pause").json() == {"paused": True}
        assert alice.get("/queue").json()["paused"] is True
        assert admin.post("/admin/resume").json() == {"paused": False}
        no_file = admin.post("/admin/reload")
        assert no_file.status_code == 409 and no_file.json()["field"] == "config"


def test_reload_rereads_the_api_keys_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "gpulane.toml"
    table = (
        f'[store]\npath = "{tmp_path / "jobs.sqlite3"}"\nsynchronous = "NORMAL"\n'
        "[retry]\nbase_delay_s = 0.0\nmax_delay_s = 0.0\njitter = 0.0\n"
        '[[gateway.api_keys]]\nkey = "{key}"\ncaller = "{caller}"\nadmin = true\n'
    )
    path.write_text(table.format(key=ADMIN, caller="ops"))
    with running_stack(tmp_path, config_path=path) as stack, stack.client(ADMIN) as admin:
        path.write_text(table.format(key="carol-key-005", caller="carol"))
        reloaded = {"reloaded": True, "changed": ["gateway.api_keys"], "api_keys": 1}
        assert admin.post("/admin/reload").json() == reloaded
        assert admin.get("/queue").status_code == 401
        with stack.client("carol-key-005") as carol:
            assert carol.get("/queue").status_code == 200


# --- size limits and bad fields -----------------------------------------------------------


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[Stack]:
    settings = GatewaySettings(
        api_keys=KEYS, max_body_bytes=4000, max_messages=3, max_prompt_chars=100
    )
    with running_stack(tmp_path, settings) as running:
        yield running


def test_a_body_over_the_byte_limit_is_a_413_naming_the_limit(tight: Stack) -> None:
    big = {"model": "tiny", "prompt": "x" * 5000}
    with tight.client() as http:
        declared = http.post("/api/generate", json=big)

        def chunks() -> Iterator[bytes]:
            yield json.dumps(big).encode()

        streamed = http.post("/api/generate", content=chunks())
    for response in (declared, streamed):
        assert response.status_code == 413
        body = response.json()
        assert body["field"] == "body" and "4000" in body["error"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/chat", {"model": "tiny", "messages": HELLO * 4}, "messages"),
        (
            "/api/chat",
            {"model": "tiny", "messages": [{"role": "user", "content": "y" * 101}]},
            "messages",
        ),
        ("/api/generate", {"model": "tiny", "prompt": "y" * 101}, "prompt"),
        ("/jobs", {"model": "tiny", "kind": "generate", "prompt": "y" * 101}, "prompt"),
        ("/v1/chat/completions", {"model": "tiny", "messages": HELLO * 4}, "messages"),
    ],
)
def test_text_over_the_message_or_character_limit_is_a_413_naming_it(
    tight: Stack, path: str, body: dict[str, Any], field: str
) -> None:
    with tight.client() as http:
        response = http.post(path, json=body)
    assert response.status_code == 413
    error = response.json()["error"]
    named = error["param"] if path.startswith("/v1/") else response.json()["field"]
    assert named == field
    text = error["message"] if path.startswith("/v1/") else error
    assert "the limit is" in text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/chat", {"messages": HELLO}, "model"),
        ("/api/chat", {"model": "", "messages": HELLO}, "model"),
        (
            "/api/chat",
            {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
        ),
        ("/api/chat", {"model": "tiny", "messages": []}, "messages"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "stream": "yes"}, "stream"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "options": [1]}, "options"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "format": "xml"}, "format"),
        (
            "/api/chat",
            {"model": "tiny", "messages": HELLO, "tools": [{"type": "function"}]},
            "tools[0].function",
        ),
        ("/api/generate", {"model": "tiny", "prompt": 5}, "prompt"),
        ("/jobs", {"model": "tiny", "messages": HELLO, "priority": "asap"}, "priority"),
        ("/jobs", {"model": "tiny", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ("/jobs", {"model": "tiny", "messages": HELLO, "max_attempts": 101}, "max_attempts"),
        ("/jobs", {"model": "tiny", "kind": "embed"}, "kind"),
        ("/v1/chat/completions", {"model": "tiny", "messages": []}, "messages"),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": HELLO, "temperature": 3},
            "temperature",
        ),
    ],
)
def test_a_bad_field_is_a_400_naming_the_field(
    stack: Stack, path: str, body: dict[str, Any], field: str
) -> None:
    with stack.client() as http:
        response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    named = error["param"] if path.startswith("/v1/") else response.json()["field"]
    assert named == field


HI = rb'"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (rb'"messages": [{"role": "user", "content": "hi \ud800"}]', "messages[0].content"),
        (HI + rb', "options": {"temperature": NaN}', "options.temperature"),
        (HI + rb', "options": {"seed": 1e999}', "options.seed"),
        (HI + rb', "options": {"seed": 99999999999999999999}', "options.seed"),
    ],
)  # fmt: skip
def test_json_that_python_parses_but_has_no_strict_json_form_is_a_400_naming_the_field(
    stack: Stack, raw: bytes, field: str
) -> None:
    body = b'{"model": "tiny", "stream": false, ' + raw + b"}"
    with stack.client() as http:
        response = http.post(
            "/api/chat", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field
        after = http.post("/api/chat", json={"model": "tiny", "messages": HELLO, "stream": False})
    assert after.status_code == 200, "the gateway and its store still take work"


def test_a_body_that_is_not_json_is_a_400_naming_the_body(stack: Stack) -> None:
    with stack.client() as http:
        response = http.post(
            "/api/chat", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert response.status_code == 400 and response.json()["field"] == "body"


def test_a_bad_scheduling_header_is_a_400_naming_the_header(stack: Stack) -> None:
    with stack.client() as http:
        response = http.post(
            "/api/chat",
            json={"model": "tiny", "messages": HELLO},
            headers={"X-Gpulane-Priority": "asap"},
        )
    assert response.status_code == 400
    assert response.json()["field"] == "x-gpulane-priority"
    assert response.json()["allowed"] == ["low", "normal", "high", "urgent"]


# --- disconnects --------------------------------------------------------------------------


def test_a_streaming_client_that_disconnects_cancels_its_running_job(stack: Stack) -> None:
    with (
        stack.client() as http,
        http.stream("POST", "/api/chat", json={"model": "endless", "messages": HELLO}) as response,
    ):
        lines = response.iter_lines()
        assert json.loads(next(lines))["done"] is False
        assert json.loads(next(lines))["done"] is False
    job = stack.wait_for_job(lambda j: j.state is JobState.CANCELLED)
    assert job.spec.model == "endless" and job.error == "caller_gone"
    assert stack.sim.wait_for(lambda s: s.calls_disconnected == 1 and s.active_calls == 0)


def test_a_waiting_client_that_disconnects_cancels_its_queued_job(stack: Stack) -> None:
    stack.lane.pause()
    with stack.client() as http, pytest.raises(httpx.ReadTimeout):
        http.post(
            "/api/chat", json={"model": "tiny", "messages": HELLO, "stream": False}, timeout=0.3
        )
    job = stack.wait_for_job(lambda j: j.state is JobState.CANCELLED)
    assert job.error == "caller_gone"


def test_a_detached_job_survives_its_submitter_going_away(stack: Stack) -> None:
    with stack.client() as http:
        job = submit_job(http)
    done = stack.wait_for_job(lambda j: j.id == job["id"] and j.state.is_terminal)
    assert done.state is JobState.SUCCEEDED


# --- rejections ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (RateLimitedError("caller alice: 60 requests per minute", 61, 60, 2.2), 429, "3"),
        (QueueFullError("external lane", 500, 500, 10.0), 503, "10"),
    ],
)
def test_rejections_carry_retry_after_and_count_in_the_metrics(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int, retry_after: str
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(stack.lane, "submit", refuse)
    with stack.client() as http:
        for path, body in (
            ("/api/chat", {"model": "tiny", "messages": HELLO}),
            ("/jobs", {"model": "tiny", "messages": HELLO}),
        ):
            response = http.post(path, json=body)
            assert response.status_code == status
            assert response.headers["retry-after"] == retry_after
            assert str(error) in response.json()["error"]
        client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=ALICE, max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="tiny", messages=HELLO)  # type: ignore[arg-type]
        assert caught.value.status_code == status
        assert caught.value.response.headers["retry-after"] == retry_after
        metrics = http.get("/metrics", headers=bearer(ADMIN)).text
    reason = "rate_limited" if status == 429 else "queue_full"
    assert f'gpulane_rejections_total{{reason="{reason}"}} 3.0' in metrics


# --- the job surface ----------------------------------------------------------------------


def read_sse_events(response: httpx.Response, into: list[tuple[str, dict[str, Any]]]) -> None:
    """Append each server-sent event to ``into`` as it arrives, until the stream ends."""
    kind = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            into.append((kind, json.loads(line.removeprefix("data: "))))


def test_job_events_give_queue_position_then_chunks_then_the_end(stack: Stack) -> None:
    stack.lane.pause()
    with stack.client() as http:
        first = submit_job(http)
        second = submit_job(http)
        events: list[tuple[str, dict[str, Any]]] = []

        def listen() -> None:
            with (
                stack.client() as listener,
                listener.stream("GET", f"/jobs/{second['id']}/events") as r,
            ):
                read_sse_events(r, events)

        thread = threading.Thread(target=listen)
        thread.start()
        wait_until(lambda: len(events) > 0, what="the subscriber heard where its job waits")
        stack.lane.resume()
        thread.join(10)
    assert not thread.is_alive(), "the event stream ended with the job"
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "queued" and events[0][1]["position"] == 1
    assert "chunk" in kinds and kinds[-1] == "end"
    text = "".join(data["text"] for kind, data in events if kind == "chunk")
    assert events[-1][1]["state"] == "succeeded" and events[-1][1]["result"] == text
    assert stack.lane.get(first["id"]).state is JobState.SUCCEEDED


def test_retry_runs_a_cancelled_job_again_and_refuses_a_succeeded_one(stack: Stack) -> None:
    stack.lane.pause()
    with stack.client() as http:
        job = submit_job(http)
        assert http.post(f"/jobs/{job['id']}/cancel").json()["outcome"] == "queued"
        again = http.post(f"/jobs/{job['seq']}/retry")
        assert again.status_code == 202 and again.json()["id"] != job["id"]
        stack.lane.resume()
        done = stack.wait_for_job(lambda j: j.id == again.json()["id"] and j.state.is_terminal)
        assert done.state is JobState.SUCCEEDED
        refused = http.post(f"/jobs/{done.id}/retry")
        assert refused.status_code == 400 and refused.json()["field"] == "job_id"


def test_metrics_show_queue_depth_and_wait_and_run_histograms(stack: Stack) -> None:
    ollama_client(stack).chat(model="tiny", messages=HELLO)
    stack.lane.pause()
    with stack.client() as http:
        submit_job(http, priority="high")
        text = http.get("/metrics").text
    assert 'gpulane_queue_depth{lane="external",priority="high"} 1.0' in text
    assert 'gpulane_job_wait_seconds_count{lane="external",model="tiny"} 1.0' in text
    assert 'gpulane_job_run_seconds_count{lane="external",model="tiny"} 1.0' in text
    assert 'gpulane_jobs_finished_total{lane="external",state="succeeded"} 1.0' in text
    assert "gpulane_paused 1.0" in text and "gpulane_submitted_total 2.0" in text
    assert "gpulane_swaps_total 1.0" in text and "gpulane_recalls_total 0.0" in text


@pytest.mark.parametrize("ref", ["99999999999999999999999", "²", "no-such-job"])
def test_an_unknown_or_impossible_job_reference_is_a_404(stack: Stack, ref: str) -> None:
    with stack.client() as http:
        response = http.get(f"/jobs/{ref}")
    assert response.status_code == 404 and response.json()["field"] == "job"


def test_a_json_body_sent_with_curls_form_content_type_is_read_as_json(stack: Stack) -> None:
    body = json.dumps({"model": "tiny", "messages": HELLO, "stream": False})
    form = {"content-type": "application/x-www-form-urlencoded"}
    with stack.client() as http:
        response = http.post("/api/chat", content=body, headers=form)
    assert response.status_code == 200 and response.json()["done"] is True


WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


def test_the_job_surface_carries_tools_thinking_and_generates_fields_into_the_job(
    stack: Stack,
) -> None:
    stack.lane.pause()
    with stack.client() as http:
        chat = submit_job(http, tools=[WEATHER_TOOL], think=True, logprobs=True)
        generate = http.post(
            "/jobs",
            json={"kind": "generate", "model": "tiny", "prompt": "def add(", "suffix": "\n",
                  "context": [1, 2, 3]},
        )  # fmt: skip
        assert generate.status_code == 202, generate.text
        refused = http.post("/jobs", json={"model": "tiny", "messages": HELLO, "suffix": "x"})
    chat_spec = stack.lane.get(chat["id"]).spec
    assert [tool.name for tool in chat_spec.tools] == ["get_weather"]
    assert chat_spec.think is True and chat_spec.logprobs is True
    generate_spec = stack.lane.get(generate.json()["id"]).spec
    assert (generate_spec.suffix, generate_spec.context) == ("\n", (1, 2, 3))
    assert refused.status_code == 400 and refused.json()["field"] == "suffix"
