"""The simulated Ollama keeps models loaded and reports load_duration as Ollama does, on a
manual clock.

What was followed (ollama/ollama at fb30760):

- server/sched.go: a runner is loaded with the request's keep_alive, else
  OLLAMA_KEEP_ALIVE's default (``load``: ``sessionDuration := envconfig.KeepAlive()``); a
  later request changes it only if it carries one (``useLoadedRunner``: ``if
  pending.sessionDuration != nil``), so a request without keep_alive leaves the runner's
  duration as it is; an idle runner unloads after that duration, at once for 0
  (``sessionDuration <= 0``); a reload is a new load. (The same since v0.2; only Ollama
  0.1.x applied the default to every request that omitted it.)
- api/types.go Duration.UnmarshalJSON: a negative number or duration is forever; a string
  past int64 nanoseconds is time.ParseDuration's error, a number past it MinInt64 (amd64).
- server/routes.go: ``load_duration`` is ``checkpointLoaded - checkpointStart``, the time
  from the request's arrival until it has its runner, set on every answer: a few
  milliseconds on a loaded model (docs/api.md's examples: 1.0 to 6.7 ms), the load's time
  on a cold one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import ollama
import pytest
from simulated_kit import QUESTION, instant, load, post, ps

from actors.backends.simulated import SimulatedOllama
from actors.runtime import ManualClock

# Binary fractions, so that the clock's sums are exact.
WARM = 0.25
CATALOG = {
    "instant": instant(),
    "warm": instant(warm_load_seconds=WARM),
    "slow": instant(load_seconds=2.0, warm_load_seconds=WARM),
    "embedder": instant(embedding_only=True, warm_load_seconds=WARM),
}


@pytest.fixture
def server(manual_clock: ManualClock) -> Iterator[SimulatedOllama]:
    with SimulatedOllama(CATALOG, clock=manual_clock, max_loaded_models=2) as sim:
        yield sim


@pytest.fixture
def http(server: SimulatedOllama) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        yield client


def expires_in(http: httpx.Client, clock: ManualClock, model: str = "instant:latest") -> float:
    """Seconds until ``/api/ps`` says ``model`` unloads."""
    (found,) = [m for m in ps(http) if m["name"] == model]
    return datetime.fromisoformat(found["expires_at"]).timestamp() - clock.now()


def call(http: httpx.Client, model: str = "instant", **extra: Any) -> dict[str, Any]:
    return post(http, "/api/chat", {"model": model, "messages": QUESTION, "stream": False, **extra})


# --------------------------------------------------------------------- keep_alive


def test_a_request_without_keep_alive_leaves_the_runner_its_own_duration(
    http: httpx.Client, server: SimulatedOllama, manual_clock: ManualClock
) -> None:
    load(http, "instant", keep_alive="1m")
    manual_clock.advance(30)
    call(http)  # no keep_alive: the minute stays, counted again from this call's end
    assert expires_in(http, manual_clock) == 60
    manual_clock.advance(59)
    assert server.stats().loaded == ("instant:latest",)
    manual_clock.advance(1)
    assert server.stats().loaded == () and ps(http) == []


def test_a_request_with_keep_alive_changes_the_duration_for_the_requests_after_it(
    http: httpx.Client, manual_clock: ManualClock
) -> None:
    load(http, "instant", keep_alive="10m")
    call(http, keep_alive=30)
    assert expires_in(http, manual_clock) == 30
    call(http)
    assert expires_in(http, manual_clock) == 30  # sticky
    call(http, keep_alive="2h")
    assert expires_in(http, manual_clock) == 7200


def test_a_model_loaded_without_keep_alive_stays_the_servers_default(
    http: httpx.Client, manual_clock: ManualClock
) -> None:
    call(http)
    assert expires_in(http, manual_clock) == 300  # OLLAMA_KEEP_ALIVE's default: 5 minutes
    with (
        SimulatedOllama(CATALOG, clock=manual_clock, default_keep_alive=90) as other,
        httpx.Client(base_url=other.url) as http2,
    ):
        call(http2)
        assert expires_in(http2, manual_clock) == 90


def test_a_negative_keep_alive_keeps_the_model_until_a_request_says_otherwise(
    http: httpx.Client, server: SimulatedOllama, manual_clock: ManualClock
) -> None:
    load(http, "instant", keep_alive=-1)
    call(http)
    manual_clock.advance(10 * 365 * 24 * 3600)
    assert server.stats().loaded == ("instant:latest",)
    call(http, keep_alive="-5m")  # any negative duration is forever
    manual_clock.advance(3600)
    assert server.stats().loaded == ("instant:latest",)
    call(http, keep_alive=0)
    assert server.stats().loaded == () and server.stats().unloads == 1


def test_a_keep_alive_past_a_go_duration_is_refused_as_text_and_unloads_as_a_number(
    http: httpx.Client, server: SimulatedOllama
) -> None:
    """api/types.go Duration.UnmarshalJSON: a string goes through time.ParseDuration, which
    refuses what overflows int64 nanoseconds ("time: invalid duration"); a number becomes
    time.Duration(t * float64(time.Second)), which past int64 is math.MinInt64 on amd64,
    and a runner whose duration is <= 0 unloads once idle (server/sched.go). Found by the
    gateway's fuzz test: such a keep_alive once broke the simulator's /api/ps."""
    answer = http.post(
        "/api/chat",
        json={"model": "instant", "messages": QUESTION, "stream": False, "keep_alive": "3000000h"},
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": 'time: invalid duration "3000000h"'}
    call(http, keep_alive=1e300)
    assert server.stats().loaded == () and http.get("/api/ps").status_code == 200
    call(http, keep_alive=9.2e9)  # just under the largest duration: kept, and listed
    assert server.stats().loaded == ("instant:latest",) and ps(http)


def test_keep_alive_zero_on_an_empty_request_unloads_a_busy_model_once_its_call_ends(
    http: httpx.Client, server: SimulatedOllama, manual_clock: ManualClock
) -> None:
    replies: list[dict[str, Any]] = []
    body = {"model": "slow", "prompt": "x", "stream": False, "keep_alive": -1}
    caller = threading.Thread(target=lambda: replies.append(post(http, "/api/generate", body)))
    caller.start()  # its load takes 2 s of the clock
    server.wait_for(lambda s: s.loading == ("slow:latest",))
    with httpx.Client(base_url=server.url) as other:
        unloaded = post(other, "/api/chat", {"model": "slow", "messages": [], "keep_alive": 0})
    assert unloaded["done_reason"] == "unload" and server.stats().loading == ("slow:latest",)
    manual_clock.advance(2)
    caller.join()
    assert replies[0]["done"] and server.wait_for(lambda s: s.loaded == ()).unloads == 1


def test_a_reload_takes_the_requests_keep_alive_or_the_default_not_the_old_runners(
    http: httpx.Client, server: SimulatedOllama, manual_clock: ManualClock
) -> None:
    load(http, "instant", keep_alive=-1)
    call(http, options={"num_ctx": 4096})
    assert server.stats().reloads == 1
    assert expires_in(http, manual_clock) == 300


def test_embed_requests_keep_alive_the_same_way(
    http: httpx.Client, manual_clock: ManualClock
) -> None:
    post(http, "/api/embed", {"model": "embedder", "input": "a", "keep_alive": "45s"})
    post(http, "/api/embed", {"model": "embedder", "input": "b"})
    assert expires_in(http, manual_clock, "embedder:latest") == 45


# ------------------------------------------------------------------ load_duration


def test_a_call_on_a_loaded_model_reports_its_scheduling_time_as_load_duration(
    http: httpx.Client,
) -> None:
    call(http, "warm")
    warm = call(http, "warm")
    assert warm["load_duration"] == 250_000_000 == WARM * 1e9
    assert warm["total_duration"] == warm["load_duration"]  # all else took no clock time
    generated = post(http, "/api/generate", {"model": "warm", "prompt": "x", "stream": False})
    embedded = post(http, "/api/embed", {"model": "embedder", "input": "x"})
    assert generated["load_duration"] == 250_000_000
    assert post(http, "/api/embed", {"model": "embedder", "input": "y"})["load_duration"] == (
        embedded["load_duration"] + 250_000_000  # the first embed loaded it: 0 s of the clock
    )


def test_a_cold_call_reports_the_load_and_a_warm_one_only_its_scheduling(
    http: httpx.Client, server: SimulatedOllama, manual_clock: ManualClock
) -> None:
    replies: list[dict[str, Any]] = []
    caller = threading.Thread(target=lambda: replies.append(call(http, "slow")))
    caller.start()
    server.wait_for(lambda s: s.loading == ("slow:latest",))
    manual_clock.advance(2)
    caller.join()
    assert replies[0]["load_duration"] == 2_000_000_000
    assert call(http, "slow")["load_duration"] == 250_000_000


def test_the_server_speed_divides_the_scheduling_time_too(manual_clock: ManualClock) -> None:
    with (
        SimulatedOllama(CATALOG, clock=manual_clock, speed=4) as fast,
        httpx.Client(base_url=fast.url) as http,
    ):
        call(http, "warm")  # loads it (in no time: its load_seconds is 0)
        assert call(http, "warm")["load_duration"] == 62_500_000


def test_the_official_client_sees_a_small_nonzero_load_duration_on_warm_calls() -> None:
    with SimulatedOllama({"tiny": instant(warm_load_seconds=0.003)}) as real_time:
        client = ollama.Client(host=real_time.url)
        first = client.chat(model="tiny", messages=QUESTION)
        again = client.chat(model="tiny", messages=QUESTION)
    assert first.load_duration and again.load_duration
    assert 3_000_000 <= again.load_duration < 1_000_000_000
