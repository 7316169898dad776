"""The simulated Ollama server speaks the Ollama API faithfully, over real HTTP.

Checked with raw httpx (exact fields, streaming, errors, residency, faults) and with
the official ``ollama`` Python client, whose typed models must parse every answer.
Time-driven behaviour (load time, token pacing, keep_alive expiry, slow faults) runs on
a manual clock, so those tests advance time instead of sleeping.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import ollama
import pytest
from profiles import EMBEDDER, ENDLESS, TINY
from simulated_kit import INSTANT, QUESTION, load, ps, stream_lines

from actors.backends.simulated import FaultKind, ModelProfile, SimulatedOllama
from actors.runtime import ManualClock

CATALOG = {"tiny": TINY, "other": TINY, "embedder": EMBEDDER, "endless": ENDLESS}
# Binary fractions, so that the clock's sums are exact.
PACED = ModelProfile(
    load_seconds=2.0, first_token_seconds=0.5, tokens_per_second=4.0,
    mean_answer_tokens=1_000_000,
)  # fmt: skip
MANUAL_CATALOG = {"instant": INSTANT, "paced": PACED}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
CHUNK_KEYS = {"model", "created_at", "message", "done"}
FINAL_KEYS = CHUNK_KEYS | {
    "done_reason",
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}


@pytest.fixture
def server() -> Iterator[SimulatedOllama]:
    with SimulatedOllama(CATALOG) as sim:
        yield sim


@pytest.fixture
def http(server: SimulatedOllama) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        yield client


@pytest.fixture
def manual(manual_clock: ManualClock) -> Iterator[SimulatedOllama]:
    """A server whose time moves only when the test advances ``manual_clock``."""
    with SimulatedOllama(MANUAL_CATALOG, clock=manual_clock) as sim:
        yield sim


@pytest.fixture
def manual_http(manual: SimulatedOllama) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=manual.url, timeout=5.0) as client:
        yield client


@pytest.fixture
def client(server: SimulatedOllama) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.url) as official:
        yield official


def chat_tokens(http: httpx.Client, messages: list[dict[str, str]], **extra: Any) -> list[str]:
    lines = stream_lines(http, "/api/chat", {"model": "tiny", "messages": messages, **extra})
    return [line["message"]["content"] for line in lines[:-1]]


def generate_tokens(http: httpx.Client, prompt: str, **extra: Any) -> list[str]:
    lines = stream_lines(http, "/api/generate", {"model": "tiny", "prompt": prompt, **extra})
    return [line["response"] for line in lines[:-1]]


# ------------------------------------------------------------------ plain routes


def test_root_answers_ollama_is_running_to_get_and_head(http: httpx.Client) -> None:
    assert http.get("/").text == "Ollama is running"
    head = http.head("/")
    assert head.status_code == 200 and head.content == b""


def test_tags_list_the_catalog_under_ollama_full_names(http: httpx.Client) -> None:
    models = http.get("/api/tags").json()["models"]
    assert [m["name"] for m in models] == [
        "tiny:latest",
        "other:latest",
        "embedder:latest",
        "endless:latest",
    ]
    assert models[0]["size"] == 1_000_000 and len(models[0]["digest"]) == 64
    assert models[2]["details"]["family"] == "nomic-bert"
    assert http.get("/api/version").json()["version"]


def test_an_unknown_path_is_a_404(http: httpx.Client) -> None:
    response = http.get("/api/nothing")
    assert response.status_code == 404 and response.text == "404 page not found"


# -------------------------------------------------------------------- generation


def test_a_streamed_chat_sends_one_token_per_line_with_ollama_fields(
    http: httpx.Client,
) -> None:
    lines = stream_lines(http, "/api/chat", {"model": "tiny", "messages": QUESTION})
    *chunks, final = lines
    assert len(chunks) >= 3
    for line in chunks:
        assert set(line) == CHUNK_KEYS and line["done"] is False
        assert line["model"] == "tiny" and line["message"]["role"] == "assistant"
        assert RFC3339.match(line["created_at"])
    words = [c["message"]["content"] for c in chunks]
    assert not words[0].startswith(" ") and all(re.fullmatch(r" \S+", w) for w in words[1:])
    assert set(final) == FINAL_KEYS and final["done"] is True
    assert final["done_reason"] == "stop" and final["message"]["content"] == ""
    assert final["eval_count"] == len(chunks)
    assert final["prompt_eval_count"] == len(
        ["<|user|>", "Why", "is", "the", "queue", "slow", "today?", "<|assistant|>"]
    )
    assert final["load_duration"] > 0  # the first call loaded the model
    for key in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0
    assert final["total_duration"] >= final["load_duration"] + final["eval_duration"]


def test_a_non_streamed_call_returns_one_object_with_the_streamed_text(
    http: httpx.Client,
) -> None:
    streamed = "".join(generate_tokens(http, "Tell me about GPUs"))
    reply = http.post(
        "/api/generate", json={"model": "tiny", "prompt": "Tell me about GPUs", "stream": False}
    )
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert body["response"] == streamed and body["done"] is True
    assert body["eval_count"] == len(streamed.split())
    # A warm call reports its scheduling time, TINY's warm_load_seconds (2 ms) at least.
    assert body["load_duration"] >= 2_000_000


def test_the_same_request_gives_the_same_text_even_on_another_server(
    http: httpx.Client,
) -> None:
    first = chat_tokens(http, QUESTION)
    assert chat_tokens(http, QUESTION) == first
    with SimulatedOllama(CATALOG) as other, httpx.Client(base_url=other.url) as http2:
        assert chat_tokens(http2, QUESTION) == first
    assert chat_tokens(http, [{"role": "user", "content": "Something else"}]) != first


def test_num_predict_stops_the_answer_with_done_reason_length(http: httpx.Client) -> None:
    lines = stream_lines(
        http, "/api/chat", {"model": "endless", "messages": QUESTION, "options": {"num_predict": 7}}
    )
    assert len(lines) == 8
    assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 7


def test_a_chat_prefill_continues_the_answer_token_for_token(http: httpx.Client) -> None:
    tokens = chat_tokens(http, QUESTION)
    for k in range(len(tokens) + 1):
        prefill = {"role": "assistant", "content": "".join(tokens[:k])}
        assert chat_tokens(http, [*QUESTION, prefill]) == tokens[k:], f"resumed after {k}"


def test_a_generate_prompt_suffix_continues_the_answer_token_for_token(
    http: httpx.Client,
) -> None:
    prompt = "The scheduler said"
    tokens = generate_tokens(http, prompt, system="Be brief.")
    assert len(tokens) >= 3
    for k in range(len(tokens) + 1):
        resumed = generate_tokens(http, prompt + "".join(tokens[:k]), system="Be brief.")
        assert resumed == tokens[k:], f"resumed after {k}"


# ------------------------------------------------------------------------ errors


def test_an_unknown_model_is_a_404_with_ollama_message(http: httpx.Client) -> None:
    for path in ("/api/chat", "/api/generate", "/api/embed", "/api/show"):
        reply = http.post(path, json={"model": "ghost", "messages": QUESTION, "input": "x"})
        assert reply.status_code == 404
        assert reply.json() == {"error": 'model "ghost" not found, try pulling it first'}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"", "missing request body"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": "tiny", "messages": "hi"}', "messages must be a list"),
        (b'{"model": "tiny", "messages": [], "keep_alive": "soon"}', "invalid duration"),
        (b'{"model": "embedder", "messages": [{"role": "user"}]}', "does not support chat"),
        (b'{"model": "tiny", "messages": [], "options": {"num_predict": "x"}}', "num_predict"),
    ],
)
def test_a_bad_request_is_a_400_that_says_what_is_wrong(
    http: httpx.Client, body: bytes, message: str
) -> None:
    reply = http.post("/api/chat", content=body)
    assert reply.status_code == 400
    assert message in reply.json()["error"]


# -------------------------------------------------------------------- embeddings


def test_embed_returns_deterministic_unit_vectors_and_loads_the_model(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    reply = http.post("/api/embed", json={"model": "embedder", "input": ["alpha", "beta"]})
    body = reply.json()
    assert set(body) == {"model", "embeddings", "total_duration", "load_duration",
                         "prompt_eval_count"}  # fmt: skip
    alpha, beta = body["embeddings"]
    assert len(alpha) == 8 and alpha != beta
    assert abs(sum(x * x for x in alpha) - 1.0) < 1e-9
    single = http.post("/api/embed", json={"model": "embedder", "input": "alpha"}).json()
    assert single["embeddings"] == [alpha]
    assert server.stats().loaded == ("embedder:latest",)


# --------------------------------------------------------------------- residency


def test_keep_alive_zero_unloads_the_model_after_the_call(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    chat_tokens(http, QUESTION)
    assert [m["name"] for m in ps(http)] == ["tiny:latest"]
    chat_tokens(http, QUESTION, keep_alive=0)
    assert ps(http) == [] and server.stats().unloads == 1


def test_empty_requests_load_and_unload_like_ollama(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    loaded = load(http, "tiny")
    assert loaded["done"] is True and loaded["done_reason"] == "load"
    assert loaded["response"] == "" and server.stats().loads == 1
    assert [m["name"] for m in ps(http)] == ["tiny:latest"]
    unloaded = http.post(
        "/api/chat", json={"model": "tiny", "messages": [], "keep_alive": "0s"}
    ).json()
    assert unloaded["done_reason"] == "unload" and unloaded["message"]["content"] == ""
    assert ps(http) == [] and server.stats().unloads == 1


def test_a_second_model_evicts_the_first_when_one_model_fits(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    load(http, "tiny")
    load(http, "other")
    assert [m["name"] for m in ps(http)] == ["other:latest"]
    assert server.stats().evictions == 1 and server.stats().loads == 2


def test_more_models_stay_loaded_when_max_loaded_models_allows_and_lru_goes_first() -> None:
    with (
        SimulatedOllama(CATALOG, max_loaded_models=2) as sim,
        httpx.Client(base_url=sim.url) as http,
    ):
        load(http, "tiny")
        load(http, "other")
        load(http, "tiny")  # "other" is now the least recently used
        assert sim.loaded_models == ("other:latest", "tiny:latest")
        load(http, "endless")
        assert sim.loaded_models == ("endless:latest", "tiny:latest")
        assert sim.stats().evictions == 1


def test_a_changed_reload_option_reloads_the_model(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    chat_tokens(http, QUESTION)
    assert ps(http)[0]["context_length"] == 2048
    chat_tokens(http, QUESTION, options={"num_ctx": 2048, "temperature": 0.1})
    assert server.stats().reloads == 0  # the default num_ctx and a sampling option
    chat_tokens(http, QUESTION, options={"num_ctx": 8192})
    assert server.stats().reloads == 1 and server.stats().loads == 2
    assert ps(http)[0]["context_length"] == 8192


def test_ps_reports_the_expiry_that_keep_alive_asked_for(
    manual_http: httpx.Client, manual_clock: ManualClock
) -> None:
    load(manual_http, "instant", keep_alive="10m")
    (model,) = ps(manual_http)
    assert set(model) == {"name", "model", "size", "digest", "details", "expires_at",
                          "size_vram", "context_length"}  # fmt: skip
    expires = datetime.fromisoformat(model["expires_at"]).timestamp()
    assert expires == manual_clock.now() + 600
    assert model["size"] == model["size_vram"] == 1_000_000
    load(manual_http, "instant", keep_alive=-1)
    forever = datetime.fromisoformat(ps(manual_http)[0]["expires_at"])
    assert forever.year > datetime.fromtimestamp(manual_clock.now()).year + 200


def test_a_keep_alive_of_five_minutes_lasts_until_the_clock_passes_five_minutes(
    manual_http: httpx.Client, manual: SimulatedOllama, manual_clock: ManualClock
) -> None:
    load(manual_http, "instant", keep_alive="5m")
    manual_clock.advance(299)
    assert [m["name"] for m in ps(manual_http)] == ["instant:latest"]
    assert manual.stats().loaded == ("instant:latest",)
    manual_clock.advance(1)
    assert ps(manual_http) == []
    assert manual.stats().unloads == 1


def test_a_waiter_sees_the_keep_alive_run_out_when_the_clock_passes_it(
    manual_http: httpx.Client, manual: SimulatedOllama, manual_clock: ManualClock
) -> None:
    load(manual_http, "instant", keep_alive=60)
    unloaded: list[int] = []
    waiter = threading.Thread(
        target=lambda: unloaded.append(manual.wait_for(lambda s: s.loaded == ()).unloads)
    )
    waiter.start()
    manual_clock.advance(60)  # wakes the waiter, which would otherwise wait a minute
    waiter.join()
    assert unloaded == [1]


def test_a_short_keep_alive_expires_by_itself_on_the_system_clock(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    # Real time is the point: with the system clock nothing but time passing unloads it.
    load(http, "tiny", keep_alive="30ms")
    assert server.wait_for(lambda s: s.loaded == (), timeout=2.0).unloads == 1
    assert ps(http) == []


def test_a_load_ends_when_the_clock_reaches_its_load_time(
    manual_http: httpx.Client, manual: SimulatedOllama, manual_clock: ManualClock
) -> None:
    replies: list[dict[str, Any]] = []
    loader = threading.Thread(target=lambda: replies.append(load(manual_http, "paced")))
    loader.start()
    manual.wait_for(lambda s: s.loading == ("paced:latest",))
    manual_clock.advance(1.5)
    assert manual.stats().loads == 0 and replies == []
    manual_clock.advance(0.5)
    assert manual.wait_for(lambda s: s.loaded == ("paced:latest",)).loads == 1
    loader.join()
    assert replies[0]["done_reason"] == "load"


def test_tokens_come_when_the_clock_reaches_them_and_durations_are_clock_time(
    manual_http: httpx.Client, manual: SimulatedOllama, manual_clock: ManualClock
) -> None:
    body = {"model": "paced", "prompt": "Count", "stream": False, "options": {"num_predict": 5}}
    replies: list[dict[str, Any]] = []
    caller = threading.Thread(
        target=lambda: replies.append(manual_http.post("/api/generate", json=body).json())
    )
    caller.start()
    manual.wait_for(lambda s: s.loading == ("paced:latest",))
    manual_clock.advance(2.75)  # the load (2 s), the first token (0.5 s), one more (0.25 s)
    stats = manual.wait_for(lambda s: s.tokens_generated == 2)
    assert stats.active_calls == 1 and replies == []
    manual_clock.advance(0.75)  # the last three tokens
    caller.join()
    (reply,) = replies
    assert reply["eval_count"] == 5 and reply["done_reason"] == "length"
    assert reply["load_duration"] == 2_000_000_000
    assert reply["prompt_eval_duration"] == 500_000_000
    assert reply["eval_duration"] == 1_000_000_000
    assert reply["total_duration"] == 3_500_000_000


# ------------------------------------------------------------------- concurrency


def test_one_model_generates_for_one_request_at_a_time(server: SimulatedOllama) -> None:
    def ask(results: list[int]) -> None:
        with httpx.Client(base_url=server.url) as own:
            body = {"model": "endless", "messages": QUESTION, "options": {"num_predict": 20}}
            results.append(len(stream_lines(own, "/api/chat", body)))

    results: list[int] = []
    threads = [threading.Thread(target=ask, args=(results,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [21, 21, 21]
    stats = server.stats()
    assert stats.calls_finished == 3 and stats.peak_active_calls == 1


def test_two_loaded_models_generate_in_parallel() -> None:
    with (
        SimulatedOllama(CATALOG, max_loaded_models=2) as sim,
        httpx.Client(base_url=sim.url) as http,
        httpx.Client(base_url=sim.url) as http2,
    ):
        long_call = {"model": "endless", "messages": QUESTION}
        with http.stream("POST", "/api/chat", json=long_call) as first:
            lines = first.iter_lines()  # dropping the iterator would close the stream
            next(lines)  # "endless" is generating now
            assert stream_lines(http2, "/api/chat", {"model": "tiny", "messages": QUESTION})
        assert sim.stats().peak_active_calls == 2


def test_a_client_that_goes_away_stops_the_generation(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    with http.stream("POST", "/api/chat", json={"model": "endless", "messages": QUESTION}) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    # Once no call is active the generation has ended, so its token count is final.
    stats = server.wait_for(lambda s: s.calls_disconnected == 1 and s.active_calls == 0)
    assert server.stats().tokens_generated == stats.tokens_generated < 50
    assert stats.calls_finished == 0


# ------------------------------------------------------------------------ faults


@pytest.mark.parametrize(
    ("kind", "status", "message"),
    [
        (FaultKind.NOT_FOUND, 404, 'model "tiny" not found, try pulling it first'),
        (FaultKind.SERVER_ERROR, 500, "llama runner process has terminated: signal: killed"),
        (FaultKind.BUSY, 503, "server busy, please try again.  maximum pending requests exceeded"),
    ],
)
def test_a_status_fault_answers_like_ollama_for_the_next_n_requests_only(
    http: httpx.Client, server: SimulatedOllama, kind: FaultKind, status: int, message: str
) -> None:
    server.inject(kind, times=2)
    body = {"model": "tiny", "messages": QUESTION, "stream": False}
    for _ in range(2):
        reply = http.post("/api/chat", json=body)
        assert (reply.status_code, reply.json()) == (status, {"error": message})
    assert server.faults == ()
    assert http.post("/api/chat", json=body).status_code == 200
    assert server.stats().calls_faulted == 2


def test_a_fault_on_a_path_leaves_other_paths_alone(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    server.inject(FaultKind.SERVER_ERROR, path="/api/generate", times=None, message="boom")
    assert http.get("/api/tags").status_code == 200
    assert chat_tokens(http, QUESTION)
    for _ in range(3):
        reply = http.post("/api/generate", json={"model": "tiny", "prompt": "hi"})
        assert (reply.status_code, reply.json()) == (500, {"error": "boom"})
    assert server.faults[0].times is None
    server.clear_faults()
    assert http.post("/api/generate", json={"model": "tiny", "prompt": "hi"}).status_code == 200


def test_a_cut_stream_closes_the_connection_after_n_chunks(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    server.inject(FaultKind.CUT_STREAM, after_chunks=4)
    received = []
    body = {"model": "endless", "messages": QUESTION}
    with pytest.raises(httpx.RemoteProtocolError), http.stream("POST", "/api/chat", json=body) as r:
        for line in r.iter_lines():
            received.append(json.loads(line))
    assert len(received) == 4 and not any(line["done"] for line in received)
    assert server.stats().calls_faulted == 1


def test_an_error_line_can_follow_the_first_chunks(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    server.inject(FaultKind.ERROR_LINE, after_chunks=2, message="CUDA error: out of memory")
    lines = stream_lines(http, "/api/chat", {"model": "endless", "messages": QUESTION})
    assert [set(line) for line in lines[:2]] == [CHUNK_KEYS, CHUNK_KEYS]
    assert lines[2:] == [{"error": "CUDA error: out of memory"}]


def test_a_slow_response_fault_answers_once_the_clock_has_passed_its_delay(
    manual_http: httpx.Client, manual: SimulatedOllama, manual_clock: ManualClock
) -> None:
    manual.inject(FaultKind.SLOW_RESPONSE, path="/api/tags", delay=2.0)
    statuses: list[int] = []
    caller = threading.Thread(
        target=lambda: statuses.append(manual_http.get("/api/tags").status_code)
    )
    caller.start()
    manual.wait_for(lambda s: s.requests == 1)
    manual_clock.advance(1.5)
    assert statuses == []
    manual_clock.advance(0.5)
    caller.join()
    assert statuses == [200]


def test_a_stall_fault_holds_the_stream_until_the_clock_has_passed_its_delay(
    manual_http: httpx.Client, manual: SimulatedOllama, manual_clock: ManualClock
) -> None:
    manual.inject(FaultKind.STALL_STREAM, after_chunks=2, delay=5.0)
    body = {"model": "instant", "messages": QUESTION}
    with manual_http.stream("POST", "/api/chat", json=body) as response:
        lines = response.iter_lines()
        assert [next(lines), next(lines)]
        stats = manual.wait_for(lambda s: s.tokens_generated == 2)
        assert stats.active_calls == 1 and stats.calls_finished == 0
        manual_clock.advance(5.0)
        rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["done"] is True and len(rest) >= 2


def test_refusing_connections_keeps_state_until_connections_are_accepted_again(
    server: SimulatedOllama,
) -> None:
    url = server.url
    with httpx.Client(base_url=url) as http:
        load(http, "tiny")
    server.refuse_connections()
    assert not server.running
    with httpx.Client(base_url=url) as http:
        with pytest.raises(httpx.ConnectError):
            http.get("/api/ps")
        server.accept_connections()
        assert server.url == url
        assert [m["name"] for m in ps(http)] == ["tiny:latest"]
    assert server.stats().loads == 1


# ----------------------------------------------------------- the official client


def test_the_official_client_chats_streaming_and_not(
    client: ollama.Client, http: httpx.Client
) -> None:
    expected = "".join(chat_tokens(http, QUESTION))
    reply = client.chat(model="tiny", messages=QUESTION)
    assert reply.message.role == "assistant" and reply.message.content == expected
    assert reply.done and reply.done_reason == "stop"
    assert reply.eval_count == len(expected.split()) and reply.total_duration
    parts = list(client.chat(model="tiny", messages=QUESTION, stream=True))
    assert "".join(p.message.content or "" for p in parts) == expected
    assert parts[-1].done and not parts[0].done and parts[0].created_at


def test_the_official_client_generates_streaming_and_not(client: ollama.Client) -> None:
    reply = client.generate(model="endless", prompt="Once upon a time", options={"num_predict": 5})
    assert reply.done_reason == "length" and reply.eval_count == 5
    parts = list(
        client.generate(
            model="endless", prompt="Once upon a time", options={"num_predict": 5}, stream=True
        )
    )
    assert len(parts) == 6 and "".join(p.response for p in parts) == reply.response
    assert parts[-1].prompt_eval_count == 4 and parts[-1].eval_duration


def test_the_official_client_embeds_lists_shows_and_sees_residency(
    client: ollama.Client,
) -> None:
    embedded = client.embed(model="embedder", input=["one", "two"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 8
    listed = client.list()
    assert [m.model for m in listed.models][:2] == ["tiny:latest", "other:latest"]
    assert listed.models[0].size == 1_000_000 and listed.models[0].modified_at is not None
    running = client.ps()
    assert [m.model for m in running.models] == ["embedder:latest"]
    assert running.models[0].expires_at is not None and running.models[0].size_vram == 500_000
    shown = client.show("embedder")
    assert shown.capabilities == ["embedding"] and shown.details is not None
    assert shown.modelinfo is not None and shown.modelinfo["nomic-bert.embedding_length"] == 8


def test_the_official_client_sees_errors_with_their_status(
    client: ollama.Client, server: SimulatedOllama
) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="ghost", messages=QUESTION)
    assert missing.value.status_code == 404 and "try pulling it first" in missing.value.error
    server.inject(FaultKind.ERROR_LINE, after_chunks=1)
    with pytest.raises(ollama.ResponseError, match="error was encountered"):
        list(client.chat(model="endless", messages=QUESTION, stream=True))
