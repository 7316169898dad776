"""Each backend on every surface (issue #17): ``/metrics``, the live views' picture,
``gpulane top``, the status page in headless Chromium, ``gpulane queue ls`` and ``/queue``.

The lane is a stub whose ``status()`` is built by hand in the shape ``docs/issue17`` and
``actors.status_view`` give it (``status["backends"][name]`` with kind, url, labels, slots,
state, health, resident, catalog, swaps; each slot naming its backend), with real swap
tallies, so each test says exactly what every backend shows: east (Ollama, two slots, up,
two models resident, two swaps) and west (OpenAI-compatible, one slot, down, catalog not
read yet). The last test runs a real gateway on two simulated Ollama servers; those with
one backend are in ``test_views.py``."""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import httpx
import pytest
from gateway_kit import ADMIN as ADMIN_KEY
from gateway_kit import ALICE, CATALOG, HELLO, KEYS
from rich.console import Console
from test_views import cell, needs_chromium, render_in_chromium

from actors import Config
from actors.backends.simulated import SimulatedOllama
from actors.cli import _JOB_HEADER, _job_line, main
from actors.config import GatewaySettings
from actors.gateway import GatewayServer, create_app
from actors.gateway.auth import Caller
from actors.gateway.metrics import GatewayMetrics
from actors.gateway.status_page import PAGE
from actors.gateway.watch import LaneWatch, view_for
from actors.runtime import ManualClock
from actors.swap_tally import SwapTally
from actors.system import GpuLane
from actors.testing import wait_until
from actors.top import render
from protocol import Job, JobSpec, JobState

ADMIN = Caller("ops", admin=True)
EAST_URL, WEST_URL = "http://10.0.0.7:11434", "http://10.0.0.9:8000"


def health(state: str, since: float | None = None) -> Mapping[str, Any]:
    """A tracker's health mapping for a backend ``state`` ("up" or "down")."""
    return MappingProxyType(
        {
            "state": state, "since": since, "down_s_total": 0.0, "next_probe_at": None,
            "probes": 0, "last_error": None if state == "up" else f"cannot reach {WEST_URL}",
            "changes": int(state == "down"),
        }
    )  # fmt: skip


class StubLane:
    """What ``LaneWatch`` and ``GatewayMetrics`` ask of a ``GpuLane``, with two backends:
    east runs a job on ``east.gpu0``, ``east.gpu1`` and ``west.gpu0`` are idle."""

    def __init__(self) -> None:
        self.clock = ManualClock(1_000.0)
        now = self.clock.now()
        self.tallies = {"east": SwapTally(), "west": SwapTally()}
        self.total = SwapTally()  # what the lane sums over the backends
        for key, load_s in (("llama3.2|num_ctx=8192", 4.0), ("qwen2.5:7b", 20.0)):
            for tally in (self.tallies["east"], self.total):
                tally.swapped(key, load_s, now)
        for tally in (self.tallies["east"], self.total):
            tally.busy(48.0)
        spec = JobSpec.chat(
            model="qwen2.5:7b", messages=[{"role": "user", "content": "hi"}], caller="alice"
        )
        self.job = Job(
            id="01JEASTJOBXXXXXXXXXXXXXXXX", seq=1, spec=spec, state=JobState.RUNNING,
            created_at=now, updated_at=now, started_at=now, backend="east", slot="east.gpu0",
        )  # fmt: skip

    def get(self, job_id: str) -> Job:
        assert job_id == self.job.id
        return self.job

    def status(self) -> Mapping[str, Any]:
        now = self.clock.now()

        def slot(slot_id: str, backend: str, job: Job | None, key: str | None) -> Any:
            return MappingProxyType(
                {
                    "slot_id": slot_id, "backend": backend,
                    "job_id": None if job is None else job.id, "next_job_id": None,
                    "model_key": key, "since": None if job is None else now,
                    "cancelling": None, "state": "running",
                }
            )  # fmt: skip

        slots = {
            "east.gpu0": slot("east.gpu0", "east", self.job, "qwen2.5:7b"),
            "east.gpu1": slot("east.gpu1", "east", None, "llama3.2|num_ctx=8192"),
            "west.gpu0": slot("west.gpu0", "west", None, None),
        }
        east, west = health("up"), health("down", since=now - 30)
        backends = {
            "east": {
                "kind": "ollama", "url": EAST_URL, "labels": ("a100", "fast"),
                "slots": ("east.gpu0", "east.gpu1"), "state": "up", "health": east,
                "resident": ("llama3.2|num_ctx=8192", "qwen2.5:7b"),
                "catalog": ("llama3.2", "mistral", "qwen2.5:7b"),
                "swaps": self.tallies["east"].snapshot(now),
            },
            "west": {
                "kind": "openai", "url": WEST_URL, "labels": (), "slots": ("west.gpu0",),
                "state": "down", "health": west, "resident": (), "catalog": None,
                "swaps": self.tallies["west"].snapshot(now),
            },
        }  # fmt: skip
        swaps = self.total.snapshot(now)
        return MappingProxyType(
            {
                "paused": False, "queued": 0, "depth": {}, "slots": slots,
                "backends": backends, "resident_models": ("llama3.2|num_ctx=8192", "qwen2.5:7b"),
                "swaps": swaps, "health": {"east": east, "west": west},
                "admission": {"queued_by_caller": {}, "rejections": {}},
                "jobs": {"queued": 0, "loading": 0, "running": 1, "succeeded": 0, "failed": 0},
                "counters": {"submitted": 1, "swaps": swaps["swaps"], "preemptions": 0},
                "alerts": (),
            }
        )  # fmt: skip


async def _run_here(sample: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return sample()


@pytest.fixture
def lane() -> StubLane:
    return StubLane()


@pytest.fixture
def picture(lane: StubLane) -> dict[str, Any]:
    """The live views' picture of the stub lane, as an admin sees it."""
    watch = LaneWatch(cast(GpuLane, lane), max_age=0.0)
    return view_for(asyncio.run(watch.picture(_run_here)), ADMIN)


# --- /metrics -------------------------------------------------------------------------------


def test_metrics_describe_each_backend_with_its_kind_url_and_labels(lane: StubLane) -> None:
    text = GatewayMetrics(lane.status).render().decode()
    east = f'backend="east",kind="ollama",labels="a100,fast",url="{EAST_URL}"'
    west = f'backend="west",kind="openai",labels="",url="{WEST_URL}"'
    assert f"gpulane_backend_info{{{east}}} 1.0" in text
    assert f"gpulane_backend_info{{{west}}} 1.0" in text
    assert 'gpulane_backend_up{backend="east"} 1.0' in text
    assert 'gpulane_backend_up{backend="west"} 0.0' in text


def test_metrics_give_each_backend_its_swaps_load_times_resident_models_and_busy_slots(
    lane: StubLane,
) -> None:
    text = GatewayMetrics(lane.status).render().decode()
    for line in (
        'gpulane_backend_swaps_total{backend="east"} 2.0',
        'gpulane_backend_swaps_total{backend="west"} 0.0',
        'gpulane_backend_loading_seconds_total{backend="east"} 24.0',
        'gpulane_backend_busy_seconds_total{backend="east"} 48.0',
        'gpulane_backend_swaps_per_hour{backend="east"} 2.0',
        'gpulane_backend_model_load_seconds_count{backend="east",model="llama3.2"} 1.0',
        'gpulane_backend_model_load_seconds_sum{backend="east",model="qwen2.5:7b"} 20.0',
        'gpulane_backend_model_load_seconds_bucket{backend="east",le="+Inf",model="qwen2.5:7b"} '
        "1.0",
        'gpulane_model_resident{backend="east",model="llama3.2"} 1.0',
        'gpulane_model_resident{backend="east",model="qwen2.5:7b"} 1.0',
        'gpulane_backend_slots{backend="east"} 2.0',
        'gpulane_backend_slots{backend="west"} 1.0',
        'gpulane_backend_slots_busy{backend="east"} 1.0',
        'gpulane_backend_slots_busy{backend="west"} 0.0',
        'gpulane_backend_catalog_models{backend="east"} 3.0',
    ):
        assert line in text, line
    assert 'gpulane_model_resident{backend="west"' not in text
    assert 'gpulane_backend_catalog_models{backend="west"}' not in text, "its catalog is unknown"


def test_metrics_keep_the_totals_over_the_backends_under_their_old_names(lane: StubLane) -> None:
    text = GatewayMetrics(lane.status).render().decode()
    assert "gpulane_swaps_total 2.0" in text and "gpulane_busy_seconds_total 48.0" in text
    assert 'gpulane_model_load_seconds_count{model="qwen2.5:7b"} 1.0' in text
    assert 'gpulane_slot_busy{model="qwen2.5:7b",slot="east.gpu0"} 1.0' in text


# --- the picture and gpulane top -------------------------------------------------------------


def test_the_picture_has_a_row_per_backend_and_each_slot_names_its_backend(
    picture: dict[str, Any],
) -> None:
    east, west = picture["backends"]
    assert east == {
        "name": "east", "kind": "ollama", "url": EAST_URL, "labels": ["a100", "fast"],
        "state": "up", "resident": ["llama3.2", "qwen2.5:7b"], "slots": 2, "busy": 1,
        "swaps": 2, "swaps_per_hour": 2.0, "loading_s": 24.0, "models": 3,
    }  # fmt: skip
    assert (west["state"], west["busy"], west["slots"], west["models"]) == ("down", 0, 1, None)
    assert {slot["id"]: slot["backend"] for slot in picture["slots"]} == {
        "east.gpu0": "east", "east.gpu1": "east", "west.gpu0": "west",
    }  # fmt: skip


def test_a_viewer_without_a_key_sees_each_backend_but_not_its_address(lane: StubLane) -> None:
    watch = LaneWatch(cast(GpuLane, lane), max_age=0.0)
    anonymous = view_for(asyncio.run(watch.picture(_run_here)), None)
    assert [(b["name"], b["state"], b["url"]) for b in anonymous["backends"]] == [
        ("east", "up", None), ("west", "down", None),
    ]  # fmt: skip
    assert "10.0.0." not in json.dumps(anonymous)


def test_top_draws_a_row_per_backend_with_its_state_models_busy_slots_and_swaps(
    picture: dict[str, Any],
) -> None:
    console = Console(record=True, width=200)
    console.print(render(picture))
    frame = console.export_text()
    row = r"east \[a100, fast\]\s+│\s+up\s+│\s+llama3\.2, qwen2\.5:7b\s+│\s+1/2\s+│\s+2 \(2\.0/h\)"
    assert re.search(row, frame), frame
    assert re.search(r"west\s+│\s+down\s+│\s+-\s+│\s+0/1\s+│\s+0 \(0\.0/h\)", frame), frame


# --- the status page in a real browser ------------------------------------------------------


@contextmanager
def page_server(picture: Mapping[str, Any]) -> Iterator[str]:
    """A loopback HTTP server that serves the status page at ``/`` and ``picture`` at
    ``/status``, as the gateway does; yields its URL."""
    body = json.dumps(picture).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = self.path.split("?")[0] == "/"
            payload = PAGE.encode() if page else body
            self.send_response(200)
            self.send_header("Content-Type", "text/html" if page else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads the page, not the server's log."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@needs_chromium
def test_the_status_page_shows_a_row_per_backend_in_chromium(
    picture: dict[str, Any], tmp_path: Path
) -> None:
    with page_server(view_for(picture, ADMIN)) as url:
        dom = render_in_chromium(url, tmp_path)
    assert cell(dom, "b-east-state") == "up" and cell(dom, "b-west-state") == "down"
    assert cell(dom, "b-east-resident") == "llama3.2, qwen2.5:7b"
    assert cell(dom, "b-west-resident") == "\u2013"
    assert cell(dom, "b-east-busy") == "1 / 2" and cell(dom, "b-west-busy") == "0 / 1"
    assert cell(dom, "b-east-swaps") == "2 (2.0/h)" and cell(dom, "b-west-swaps") == "0 (0.0/h)"
    assert '<span class="tag">a100</span><span class="tag">fast</span>' in dom
    assert cell(dom, "s-east.gpu0-backend") == "east" and cell(dom, "s-west.gpu0-backend") == "west"


# --- gpulane queue ls -----------------------------------------------------------------------


def test_queue_ls_says_on_which_backend_and_slot_a_job_last_ran_and_a_dash_before_it_ran(
    lane: StubLane,
) -> None:
    ran = _job_line(lane.job.to_dict())
    waiting = _job_line(lane.job.replace(state=JobState.QUEUED, backend=None, slot=None).to_dict())
    assert re.search(r"alice\s+east\s+east\.gpu0\s+qwen2\.5:7b$", ran), ran
    assert re.search(r"alice\s+-\s+-\s+qwen2\.5:7b$", waiting), waiting
    columns = _JOB_HEADER.split()
    assert columns[-3:] == ["backend", "slot", "model"]
    assert _JOB_HEADER.index("backend") == ran.index("east"), "the column lines up"


# --- end to end: two model servers behind one gateway ----------------------------------------


def test_a_gateway_on_two_model_servers_shows_each_and_where_each_job_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = GatewaySettings(api_keys=KEYS)
    with SimulatedOllama(CATALOG) as east, SimulatedOllama(CATALOG) as west:
        config = Config.from_mapping(
            {
                "store": {"path": str(tmp_path / "jobs.sqlite3"), "synchronous": "NORMAL"},
                "backends": [
                    {"name": "east", "url": east.url, "labels": ["a100"]},
                    {"name": "west", "url": west.url},
                ],
            }
        )
        lane = GpuLane.start(config)
        try:
            with GatewayServer(create_app(lane, settings)) as server:
                with httpx.Client(base_url=server.url, timeout=10.0) as http:
                    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
                    alice = {"Authorization": f"Bearer {ALICE}"}
                    job = http.post(
                        "/jobs", json={"model": "tiny", "messages": HELLO}, headers=alice
                    ).json()
                    done = lane.wait(job["id"], timeout=10)
                    detail = http.get(f"/jobs/{job['id']}", headers=auth).json()
                    swapped = f'gpulane_backend_swaps_total{{backend="{done.backend}"}} 1.0'
                    # the tracker counts the swap when the call's end reaches it
                    wait_until(lambda: swapped in http.get("/metrics", headers=auth).text)
                    picture = http.get("/status", headers=auth).json()
                    text = http.get("/metrics", headers=auth).text
                capsys.readouterr()
                assert main(["queue", "ls", "--url", server.url, "--key", ALICE]) == 0
                listing = capsys.readouterr().out
        finally:
            lane.stop()
    assert done.state is JobState.SUCCEEDED and done.backend in ("east", "west")
    assert done.slot == f"{done.backend}.gpu0"
    assert (detail["backend"], detail["slot"]) == (done.backend, done.slot)
    assert [(b["name"], b["labels"], b["slots"]) for b in picture["backends"]] == [
        ("east", ["a100"], 1), ("west", [], 1),
    ]  # fmt: skip
    assert {s["id"]: s["backend"] for s in picture["slots"]} == {
        "east.gpu0": "east", "west.gpu0": "west",
    }  # fmt: skip
    info = f'backend="east",kind="ollama",labels="a100",url="{east.url}"'
    assert f"gpulane_backend_info{{{info}}} 1.0" in text
    assert 'gpulane_backend_slots{backend="west"} 1.0' in text
    line = next(line for line in listing.splitlines() if job["id"] in line)
    assert re.search(rf"alice\s+{done.backend}\s+{re.escape(done.slot)}\s+tiny$", line), line
