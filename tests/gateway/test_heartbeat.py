"""Waiting clients are not cut off: a job silent for ``gateway.heartbeat_s`` commits its
response, and a heartbeat every silent interval tells the client it waits and where it
stands, in a form its official client ignores (issue 14, part 6).

What each client tolerates was read in its source: ollama-python's ``_client.py`` parses
every NDJSON line with ``json.loads`` (a blank line would raise) into pydantic models that
ignore unknown keys, and reads a whole answer with httpx's ``Response.json()``, which is
``json.loads`` (leading whitespace is valid JSON); openai-python's ``SSEDecoder.decode``
drops lines starting with ``:`` and its non-streaming parse is ``response.json()`` too.
Each test holds the job in the queue with a paused lane and lets it go once a heartbeat
was sent (seen by the client, or counted in ``/metrics``), so nothing waits on a clock.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
from gateway_kit import ADMIN, ALICE, BOT, HELLO, KEYS, Stack, bearer, running_stack

from actors.config import Config, GatewaySettings
from actors.testing import wait_until
from protocol import JobState, ValidationError

HEARTBEAT_S = 0.05


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path, GatewaySettings(api_keys=KEYS, heartbeat_s=HEARTBEAT_S)) as s:
        yield s


def heartbeats_sent(stack: Stack) -> int:
    """``gpulane_heartbeats_total`` from the gateway's metrics."""
    with stack.client(ADMIN) as http:
        found = re.search(r"^gpulane_heartbeats_total (\S+)$", http.get("/metrics").text, re.M)
    assert found is not None
    return int(float(found.group(1)))


def after_heartbeats(stack: Stack, call: Callable[[], Any], count: int = 2) -> Any:
    """Run ``call`` (which blocks until its answer) while the lane is paused; resume once
    ``count`` heartbeats went out; return what ``call`` returned."""
    stack.lane.pause()
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(call()))
    thread.start()
    wait_until(lambda: heartbeats_sent(stack) >= count, what="heartbeats to the waiting client")
    stack.lane.resume()
    thread.join(10)
    assert not thread.is_alive() and len(results) == 1
    return results[0]


def the_job(stack: Stack) -> Any:
    return stack.wait_for_job(lambda j: j.state.is_terminal)


def submit_job_ahead(stack: Stack) -> None:
    """A detached job from another caller, queued ahead of the next request."""
    with stack.client(ADMIN) as http:
        assert (
            http.post(
                "/jobs", json={"kind": "generate", "model": "tiny", "prompt": "first"}
            ).status_code
            == 202
        )


# --- the official clients -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chat", "generate"])
def test_an_ollama_client_streaming_while_queued_gets_empty_pieces_then_the_whole_answer(
    stack: Stack, kind: str
) -> None:
    client = ollama.Client(host=stack.url, headers=bearer(ALICE))
    stack.lane.pause()
    if kind == "chat":
        stream: Iterator[Any] = client.chat(model="tiny", messages=HELLO, stream=True)
    else:
        stream = client.generate(model="tiny", prompt="hello there", stream=True)
    parts = [next(stream)]  # it came while the lane was paused: a heartbeat
    stack.lane.resume()
    parts.extend(stream)
    texts = [p.message.content if kind == "chat" else p.response for p in parts]
    assert texts[0] == "" and parts[0].done is False and parts[0].done_reason is None
    assert not hasattr(parts[0], "gpulane"), "the client drops the key it does not know"
    assert all(p.done is False for p in parts[:-1]) and parts[-1].done is True
    job = the_job(stack)
    assert job.state is JobState.SUCCEEDED and "".join(texts) == job.result


def test_an_ollama_client_waiting_for_a_whole_answer_reads_it_after_the_whitespace(
    stack: Stack,
) -> None:
    client = ollama.Client(host=stack.url, headers=bearer(ALICE))
    reply = after_heartbeats(stack, lambda: client.chat(model="tiny", messages=HELLO))
    assert reply.done is True and reply.done_reason == "stop"
    assert reply.message.content == the_job(stack).result


def test_an_openai_client_streaming_while_queued_skips_the_comments(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=ALICE)
    stack.lane.pause()
    stream = client.chat.completions.create(model="tiny", messages=HELLO, stream=True)  # type: ignore[arg-type]
    opening = next(stream)  # the role delta, sent when the response was committed
    wait_until(lambda: heartbeats_sent(stack) >= 2, what="comments to the waiting client")
    stack.lane.resume()
    chunks = [opening, *stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert opening.choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert text == the_job(stack).result


def test_an_openai_client_waiting_for_a_whole_answer_reads_it_after_the_whitespace(
    stack: Stack,
) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=ALICE)
    reply = after_heartbeats(
        stack,
        lambda: client.chat.completions.create(model="tiny", messages=HELLO),  # type: ignore[arg-type]
    )
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == the_job(stack).result
    assert reply.usage is not None and reply.usage.completion_tokens > 0


# --- the wire ------------------------------------------------------------------------------


def test_an_ndjson_heartbeat_is_an_empty_piece_that_says_where_the_job_waits(
    stack: Stack,
) -> None:
    stack.lane.pause()
    submit_job_ahead(stack)
    with (
        stack.client() as http,
        http.stream("POST", "/api/chat", json={"model": "tiny", "messages": HELLO}) as response,
    ):
        lines = response.iter_lines()
        beat = json.loads(next(lines))
        stack.lane.resume()
        rest = [json.loads(line) for line in lines]
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert set(beat) == {"model", "created_at", "message", "done", "gpulane"}
    assert beat["message"] == {"role": "assistant", "content": ""} and beat["done"] is False
    assert beat["gpulane"] == {"state": "queued", "position": 1}
    job = stack.wait_for_job(lambda j: j.spec.caller == "alice" and j.state.is_terminal)
    assert response.headers["x-gpulane-job"] == job.id
    pieces = [line for line in rest if "gpulane" not in line]
    assert pieces[-1]["done"] is True
    assert "".join(p["message"]["content"] for p in pieces) == job.result


def test_an_sse_heartbeat_is_a_comment_line_with_the_queue_position(stack: Stack) -> None:
    stack.lane.pause()
    submit_job_ahead(stack)
    body = {"model": "tiny", "messages": HELLO, "stream": True}
    with (
        stack.client() as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ") and next(lines) == ""  # the role delta
        assert next(lines) == ": queued, position 1" and next(lines) == ""
        stack.lane.resume()
        rest = list(lines)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in rest if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith((": ", "data: ")) or line == "" for line in rest)


def test_a_whole_answer_after_heartbeats_is_whitespace_then_the_json_body(stack: Stack) -> None:
    stack.lane.pause()
    body = {"model": "tiny", "messages": HELLO, "stream": False}
    with stack.client() as http, http.stream("POST", "/api/chat", json=body) as response:
        raw = response.iter_raw()
        first = next(raw)
        assert first and first.strip() == b"", "whitespace, one space per silent interval"
        stack.lane.resume()
        content = first + b"".join(raw)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    spaces = len(content) - len(content.lstrip(b" "))
    assert spaces >= 1 and content[spaces:].startswith(b"{")
    answer = json.loads(content)
    assert answer["done"] is True and answer["message"]["content"] == the_job(stack).result


def test_a_job_that_fails_after_heartbeats_answers_its_error_under_a_200(stack: Stack) -> None:
    """The trade-off: once a heartbeat is sent the status is 200, so the error is in-band."""
    stack.lane.pause()
    whole = {"model": "no-such-model", "messages": HELLO, "stream": False}
    with stack.client() as http, http.stream("POST", "/api/chat", json=whole) as response:
        raw = response.iter_raw()
        first = next(raw)
        assert first and first.strip() == b""
        stack.lane.resume()
        answer = json.loads(first + b"".join(raw))
    assert response.status_code == 200 and "not found" in answer["error"]
    client = ollama.Client(host=stack.url, headers=bearer(ALICE))
    stack.lane.pause()
    stream = client.chat(model="no-such-model", messages=HELLO, stream=True)
    assert next(stream).message.content == ""
    stack.lane.resume()
    with pytest.raises(ollama.ResponseError, match="not found"):
        list(stream)


def test_a_stream_preempted_back_into_the_queue_is_told_it_waits_and_repeats_nothing(
    stack: Stack,
) -> None:
    body = {"model": "endless", "messages": HELLO, "options": {"num_predict": 400}}
    pieces: list[dict[str, Any]] = []
    beats: list[dict[str, Any]] = []
    with (
        stack.client() as http,
        http.stream("POST", "/api/chat", json=body) as response,
        stack.client(BOT) as bot,
    ):
        lines = response.iter_lines()
        pieces.append(json.loads(next(lines)))
        urgent = {"model": "endless", "messages": HELLO, "priority": "urgent"}
        internal = bot.post("/jobs", json=urgent).json()  # takes the GPU until cancelled
        for line in lines:
            item = json.loads(line)
            if "gpulane" not in item:
                pieces.append(item)
                continue
            beats.append(item)
            if len(beats) == 1:  # the stream was told it waits: let it run again
                bot.post(f"/jobs/{internal['id']}/cancel")
    job = stack.wait_for_job(lambda j: j.spec.caller == "alice" and j.state.is_terminal)
    assert job.state is JobState.SUCCEEDED and job.preemptions == 1
    assert beats[0]["gpulane"]["state"] == "queued" and beats[0]["message"]["content"] == ""
    assert pieces[-1]["done"] is True
    assert "".join(p["message"]["content"] for p in pieces) == job.result


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_while_told_it_waits_cancels_its_job(
    stack: Stack, stream: bool
) -> None:
    stack.lane.pause()
    body = {"model": "tiny", "messages": HELLO, "stream": stream}
    with stack.client() as http, http.stream("POST", "/api/chat", json=body) as response:
        assert next(response.iter_raw())
    job = stack.wait_for_job(lambda j: j.state is JobState.CANCELLED)
    assert job.error == "caller_gone"


def test_heartbeat_s_is_a_gateway_setting_that_zero_turns_off(tmp_path: Path) -> None:
    config_file = tmp_path / "gpulane.toml"
    config_file.write_text("[gateway]\nheartbeat_s = 0\n")
    assert Config.load(config_file).gateway.heartbeat_s == 0
    assert GatewaySettings().heartbeat_s == 15.0
    for bad in (-1, float("nan"), "soon", True):
        with pytest.raises(ValidationError) as caught:
            GatewaySettings(heartbeat_s=bad)  # type: ignore[arg-type]
        assert caught.value.field == "gateway.heartbeat_s"
