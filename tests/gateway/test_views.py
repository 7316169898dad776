"""The live views against a real gateway on loopback: ``GET /status``, ``gpulane top``, the
status page in headless Chromium, ``gpulane queue clear`` and the demo behind ``make run``;
the swap figures and the backend's health on them, and on ``/metrics``."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_kit import ADMIN, ALICE, BOB, BOT, HELLO, KEYS, Running, Stack, running_stack
from rich.console import Console

from actors import Config, GpuLane
from actors.backends.ollama import OllamaBackend
from actors.backends.simulated import FaultKind
from actors.config import GatewaySettings
from actors.demo import run_demo
from actors.gateway import GatewayServer, create_app
from actors.testing import wait_until
from actors.top import describe_event, fetch_status, render
from protocol import JobState, StoreSettings

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path) as running:
        yield running


def submit(stack: Stack, key: str, **fields: Any) -> dict[str, Any]:
    """POST /jobs as ``key``; the answer."""
    with stack.client(key) as http:
        response = http.post("/jobs", json={"model": "tiny", "messages": HELLO, **fields})
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def status_until(
    http: httpx.Client, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    """Poll ``/status`` until ``predicate`` holds for the picture (the gateway's own view,
    sampled on its own schedule, so quiescence of the actors alone would not do)."""
    pictures: list[dict[str, Any]] = [{}]

    def matches() -> bool:
        pictures.append(http.get("/status").json())
        return predicate(pictures[-1])

    try:
        wait_until(matches, timeout)
    except AssertionError:
        raise AssertionError(f"/status never matched: {pictures[-1]}") from None
    return pictures[-1]


@contextmanager
def stack_without_a_model_server(tmp_path: Path) -> Iterator[Running]:
    """A gateway whose model server is not there (a loopback port nobody listens on): the
    tracker's first poll is refused, so the backend is down from the start."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
    settings = GatewaySettings(api_keys=KEYS)
    store = StoreSettings(path=str(tmp_path / "jobs.sqlite3"), synchronous="NORMAL")
    backend = OllamaBackend(url, timeout=5.0)
    lane = GpuLane.start(Config(store=store, gateway=settings), backend=backend)
    try:
        with GatewayServer(create_app(lane, settings, upstream=url)) as server:
            yield Running(lane, server)
    finally:
        lane.stop()
        backend.close()


def one_line(frame: str) -> str:
    """A rendered frame with its line breaks and runs of spaces as single spaces."""
    return " ".join(frame.split())


def paused_queue(stack: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    """Dispatch paused; alice queues two normal jobs and one low, the bot one high internal."""
    stack.lane.pause()
    first = submit(stack, ALICE)
    submit(stack, ALICE)
    submit(stack, ALICE, priority="low")
    bot = submit(stack, BOT, priority="high")
    return first, bot


# --- GET /status ----------------------------------------------------------------------------


def test_status_without_a_key_shows_aggregates_but_no_callers_or_job_ids(stack: Stack) -> None:
    first, _ = paused_queue(stack)
    response = httpx.get(stack.url + "/status")
    picture = response.json()
    assert picture["queued"] == 4 and picture["paused"] is True
    assert picture["depth"]["external"] == {"urgent": 0, "high": 0, "normal": 2, "low": 1}
    assert picture["depth"]["internal"]["high"] == 1
    assert picture["callers"] == [] and picture["viewer"] == {"caller": None, "admin": False}
    assert "alice" not in response.text and first["id"] not in response.text


def test_status_shows_a_caller_its_own_count_and_an_admin_every_callers(stack: Stack) -> None:
    paused_queue(stack)
    submit(stack, BOB)
    with stack.client(ALICE) as alice, stack.client(ADMIN) as admin:
        mine = alice.get("/status").json()
        everyone = admin.get("/status").json()
    assert mine["callers"] == [{"caller": "alice", "unfinished": 3, "running": 0}]
    assert [(c["caller"], c["unfinished"]) for c in everyone["callers"]] == [
        ("alice", 3),
        ("bob", 1),
        ("bot", 1),
    ]
    assert everyone["viewer"] == {"caller": "ops", "admin": True}


def test_status_with_a_wrong_key_is_a_401_not_the_anonymous_view(stack: Stack) -> None:
    response = httpx.get(stack.url + "/status", headers={"Authorization": "Bearer nope-nope"})
    assert response.status_code == 401 and response.json()["field"] == "authorization"


def test_status_names_the_preempted_job_the_urgent_job_that_took_the_gpu_and_the_swap(
    stack: Stack,
) -> None:
    victim = submit(stack, ALICE, model="endless")
    with stack.client(ADMIN) as admin:
        status_until(admin, lambda p: p["slots"][0]["job"] is not None)
        # the urgent call stays on the GPU long enough for the samples to see it
        stack.sim.inject(FaultKind.STALL_STREAM, path="/api/chat", after_chunks=1, delay=1.0)
        urgent = submit(stack, BOT, priority="urgent")
        picture = status_until(
            admin, lambda p: {e["kind"] for e in p["events"]} >= {"preemption", "swap"}
        )
        with stack.client(ALICE) as alice:
            mine = alice.get("/status").json()
        # The tracker counts a swap when its call ends (the load time is in the call's last
        # answer): endless's when it was preempted, tiny's once the urgent call is done.
        counted = status_until(admin, lambda p: p["counters"]["swaps"] >= 2)
        stack.lane.cancel(victim["id"])
    preemption = next(e for e in picture["events"] if e["kind"] == "preemption")
    assert preemption["job"]["seq"] == victim["seq"] and preemption["job"]["preemptions"] == 1
    assert preemption["by"]["seq"] == urgent["seq"] and preemption["by"]["lane"] == "internal"
    swap = next(e for e in picture["events"] if e["kind"] == "swap" and e["to"] == "tiny")
    assert swap["from"] == "endless" and swap["job"]["caller"] == "bot"
    assert picture["counters"]["preemptions"] == 1 and counted["counters"]["preemptions"] == 1
    assert counted["loading_s"] > 0 and counted["overhead_ratio"] is not None
    seen_by_alice = next(e for e in mine["events"] if e["kind"] == "preemption")
    assert seen_by_alice["job"]["seq"] == victim["seq"] and seen_by_alice["by"] is None
    assert describe_event(preemption) == (
        f"preemption gpu0: #{victim['seq']} alice (external) made way for "
        f"#{urgent['seq']} bot (internal/urgent)"
    )


def test_status_and_top_show_the_job_handed_to_the_busy_slot_to_those_who_may_see_it(
    stack: Stack,
) -> None:
    running = submit(stack, ALICE, model="endless")
    waiting = submit(stack, BOB)
    with stack.client(ADMIN) as admin, stack.client(ALICE) as alice:
        everything = status_until(
            admin, lambda p: (p["slots"][0]["next"] or {}).get("seq") == waiting["seq"]
        )
        console = Console(record=True, width=160)
        console.print(render(everything, source=stack.url))
        seen_by_alice = alice.get("/status").json()
        stack.lane.cancel(running["id"])
        stack.lane.cancel(waiting["id"])
    slot = everything["slots"][0]
    assert slot["job"]["seq"] == running["seq"] and slot["next"]["caller"] == "bob"
    assert re.search(rf"#{running['seq']} alice.*#{waiting['seq']} bob", console.export_text())
    theirs = seen_by_alice["slots"][0]
    assert theirs["job"]["seq"] == running["seq"]
    assert theirs["next"] is None and theirs["has_next"] is True
    console = Console(record=True, width=160)
    console.print(render(seen_by_alice, source=stack.url))
    assert "(not yours)" in console.export_text()


# --- gpulane top ----------------------------------------------------------------------------


def test_top_renders_the_queue_the_slot_and_each_caller_from_a_live_gateway(stack: Stack) -> None:
    paused_queue(stack)
    console = Console(record=True, width=160)
    with stack.client(ADMIN) as admin:
        console.print(render(fetch_status(admin), source=stack.url))
    frame = console.export_text()
    assert "PAUSED" in frame and "queued 4" in frame and "as ops (admin)" in frame
    assert re.search(r"internal\s+│\s+0\s+│\s+1\s+│\s+0\s+│\s+0\s+│\s+1\s", frame)
    assert re.search(r"external\s+│\s+0\s+│\s+0\s+│\s+2\s+│\s+1\s+│\s+3\s", frame)
    assert re.search(r"alice\s+│\s+3\s", frame) and re.search(r"bot\s+│\s+1\s", frame)
    assert re.search(r"gpu0\s+│\s+idle", frame)
    assert re.search(r"local\s+│\s+up\s+│\s+-\s+│\s+0/1\s+│\s+0 \(0\.0/h\)", frame)


def test_top_in_a_narrow_terminal_stacks_the_tables_and_keeps_the_figures(stack: Stack) -> None:
    paused_queue(stack)
    with stack.client(ADMIN) as admin:
        admin.get("/status")  # the first look: events are changes between looks
        stack.lane.resume()
        status_until(admin, lambda p: p["jobs"]["succeeded"] == 4)
        console = Console(record=True, width=80)
        console.print(render(fetch_status(admin), source=stack.url))
    frame = console.export_text()
    assert max(len(line) for line in frame.splitlines()) <= 80
    assert re.search(r"succeeded\s+4", frame) and "swap gpu0: nothing → tiny" in frame
    assert "resident models: tiny" in frame
    assert "backend local up" in frame
    assert re.search(r"swaps 1 \(1\.0/h, \d+\.\d% loading\)", one_line(frame))


# --- swaps and backend health ---------------------------------------------------------------


def test_status_and_metrics_count_one_swap_though_every_call_reported_a_load_duration(
    stack: Stack,
) -> None:
    jobs = [submit(stack, ALICE) for _ in range(3)]
    done = [stack.lane.wait(job["id"], timeout=10) for job in jobs]
    # warm calls report a load_duration too, as Ollama does (its scheduling time)
    assert all(job.metrics is not None and job.metrics.load_duration_ns > 0 for job in done)
    assert stack.sim.stats().loads == 1
    with stack.client(ADMIN) as admin:
        picture = status_until(admin, lambda p: p["counters"]["swaps"] == 1)
        text = admin.get("/metrics").text
    assert picture["swaps_per_hour"] == 1.0 and picture["counters"]["dispatched_cold"] == 1
    assert 0 < picture["loading_s"] <= picture["busy_s"]
    assert picture["overhead_ratio"] == pytest.approx(picture["loading_s"] / picture["busy_s"])
    assert "gpulane_swaps_total 1.0" in text and "gpulane_swaps_per_hour 1.0" in text
    assert 'gpulane_backend_swaps_total{backend="local"} 1.0' in text
    assert 'gpulane_backend_model_load_seconds_count{backend="local",model="tiny"} 1.0' in text
    assert 'gpulane_backend_slots{backend="local"} 1.0' in text
    assert re.search(
        r'gpulane_backend_info\{backend="local",kind="ollama",labels="",url="http', text
    )
    assert picture["backends"][0]["swaps"] == 1
    assert 'gpulane_model_load_seconds_count{model="tiny"} 1.0' in text
    assert 'gpulane_model_load_seconds_bucket{le="+Inf",model="tiny"} 1.0' in text
    assert re.search(r"\ngpulane_swap_overhead_ratio 0\.\d+", text)
    assert 'gpulane_backend_up{backend="local"} 1.0' in text
    assert 'gpulane_backend_down_seconds_total{backend="local"} 0.0' in text


def test_status_top_and_metrics_show_a_model_server_that_cannot_be_reached_as_down(
    tmp_path: Path,
) -> None:
    with stack_without_a_model_server(tmp_path) as down, down.client(ADMIN) as admin:
        picture = status_until(admin, lambda p: p["health"]["local"]["state"] == "down")
        anonymous = httpx.get(down.url + "/status").json()
        text = admin.get("/metrics").text
    local = picture["health"]["local"]
    assert local["since"] is not None and local["since"] <= picture["at"]
    assert local["last_error"] and local["changes"] == 1
    assert anonymous["health"]["local"]["state"] == "down"
    assert anonymous["health"]["local"]["last_error"] is None
    console = Console(record=True, width=200)
    console.print(render(picture))
    frame = one_line(console.export_text())
    assert "backend local DOWN since" in frame and "last error:" in frame
    assert 'gpulane_backend_up{backend="local"} 0.0' in text
    assert re.search(r'gpulane_backend_probes_total\{backend="local"\} \d+\.0', text)


# --- the status page in a real browser ------------------------------------------------------


def render_in_chromium(url: str, tmp_path: Path, *extra: str) -> str:
    """Load ``url`` in headless Chromium, let its script run, and return the rendered DOM."""
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
            *extra, "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def cell(dom: str, element_id: str) -> str:
    """The text of the element with ``element_id`` in the dumped DOM."""
    found = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', dom)
    assert found, f"no element #{element_id} in the page"
    return found.group(1)


needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs /usr/bin/chromium (Debian's chromium package; .ci/run installs it)",
)


@needs_chromium
def test_the_status_page_shows_the_queue_after_its_script_ran_in_chromium(
    stack: Stack, tmp_path: Path
) -> None:
    first, _ = paused_queue(stack)
    dom = render_in_chromium(stack.url + "/", tmp_path)
    assert cell(dom, "queued") == "4" and cell(dom, "state") == "paused"
    assert cell(dom, "q-external-normal") == "2" and cell(dom, "q-external-low") == "1"
    assert cell(dom, "q-internal-high") == "1" and cell(dom, "q-external") == "3"
    assert cell(dom, "busy") == "0 / 1" and "aggregates only" in dom
    assert "alice" not in dom and first["id"] not in dom
    assert cell(dom, "health-local") == "local up" and cell(dom, "down") == ""
    assert cell(dom, "swaps") == "0" and cell(dom, "swaps-per-hour") == "0.0"
    assert cell(dom, "overhead") == "\u2013"  # no call has run yet
    assert cell(dom, "b-local-state") == "up" and cell(dom, "b-local-busy") == "0 / 1"
    assert cell(dom, "b-local-swaps") == "0 (0.0/h)" and cell(dom, "s-gpu0-backend") == "local"


@needs_chromium
def test_the_status_page_opened_with_an_admin_key_shows_each_caller_in_chromium(
    stack: Stack, tmp_path: Path
) -> None:
    paused_queue(stack)
    dom = render_in_chromium(f"{stack.url}/#key={ADMIN}", tmp_path)
    assert cell(dom, "c-alice") == "3" and cell(dom, "c-bot") == "1"
    assert "as ops (admin)" in dom and ADMIN not in dom.split("<body")[1]


@needs_chromium
def test_the_status_page_shows_a_model_server_that_cannot_be_reached_as_down_in_chromium(
    tmp_path: Path,
) -> None:
    with stack_without_a_model_server(tmp_path) as down, down.client(ADMIN) as admin:
        status_until(admin, lambda p: p["health"]["local"]["state"] == "down")
        dom = render_in_chromium(f"{down.url}/#key={ADMIN}", tmp_path)
    assert cell(dom, "health-local") == "local down" and cell(dom, "b-local-state") == "down"
    line = cell(dom, "down-local")
    assert line.startswith("backend local down since ") and "last error: " in line


# --- gpulane queue clear --------------------------------------------------------------------


def test_queue_clear_cancels_only_the_callers_queued_jobs_and_an_admin_clears_the_rest(
    stack: Stack,
) -> None:
    paused_queue(stack)
    bobs = submit(stack, BOB)
    with stack.client(ALICE) as alice:
        assert alice.post("/queue/clear").json() == {
            "cancelled": 3, "started_meanwhile": 0, "caller": "alice",
        }  # fmt: skip
        assert alice.post("/queue/clear?of=bob").json()["cancelled"] == 0  # of= is for admins
    assert stack.lane.get(bobs["id"]).state is JobState.QUEUED
    with stack.client(ADMIN) as admin:
        assert admin.post("/queue/clear").json() == {
            "cancelled": 2, "started_meanwhile": 0, "caller": None,
        }  # fmt: skip
    assert stack.lane.status()["queued"] == 0
    states = {job.state for job in stack.lane.list(limit=100)}
    assert states == {JobState.CANCELLED}


# --- make run -------------------------------------------------------------------------------


def test_the_demo_drives_the_gateway_with_ollama_clients_and_summarises_the_stored_jobs() -> None:
    console = Console(record=True, width=160)
    summary = run_demo(seconds=7.0, speed=20.0, callers=2, seed=3, console=console)
    internal, external = summary["internal"], summary["external"]
    assert internal["jobs"] >= 1 and external["jobs"] >= 2
    for row in (internal, external):
        assert row["succeeded"] + row["failed"] + row["cancelled"] == row["jobs"]
        assert 0.0 <= row["wait_p50_s"] <= row["wait_p99_s"]
    assert summary["swaps"] >= 1 and summary["model_loads"] >= 1
    text = console.export_text()
    assert "gpulane demo: summary (from the jobs as stored)" in text
    assert f"preemptions: {summary['preemptions']}" in text and "as ops (admin)" in text
