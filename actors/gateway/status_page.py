"""The live status page at ``/``: the queue and the GPU slots, readable at a glance.

It is rendered on the server and refreshes itself every two seconds (no script). A
browser cannot send a bearer key, so the page shows aggregates only: queue depth per
lane and priority, each slot's model and whether it is busy, job counts per state.
No job ids, callers or prompts appear on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from actors.gateway.core import gateway_of
from protocol import Lane, Priority

__all__ = ["render_status", "router"]

router = APIRouter(tags=["ops"])

_STYLE = """
body{font:15px system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}
h1{font-size:1.3rem}h2{font-size:1rem;margin-top:1.5rem}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:.3rem .7rem}
th{background:#f0f0f0;text-align:left}.busy{color:#b35900;font-weight:bold}.idle{color:#2a7a2a}
.paused{background:#fde2e2;padding:.4rem .8rem;display:inline-block}
"""


def render_status(status: Mapping[str, Any]) -> str:
    """The page's HTML for one ``GpuLane.status()`` snapshot."""
    depth = dict(status["depth"])
    rows = []
    for lane in Lane:
        cells = "".join(
            f"<td>{int(depth.get(f'{lane.value}.{p.name.lower()}', 0))}</td>"
            for p in sorted(Priority, reverse=True)
        )
        rows.append(f"<tr><th>{lane.value}</th>{cells}</tr>")
    header = "".join(f"<th>{p.name.lower()}</th>" for p in sorted(Priority, reverse=True))
    slots = []
    for slot_id, slot in sorted(status["slots"].items()):
        busy = slot["job_id"] is not None
        state = '<span class="busy">busy</span>' if busy else '<span class="idle">idle</span>'
        slots.append(
            f"<tr><td>{escape(slot_id)}</td><td>{state}</td>"
            f"<td>{escape(slot['model_key'] or '-')}</td></tr>"
        )
    jobs = "".join(
        f"<tr><td>{escape(str(state))}</td><td>{int(count)}</td></tr>"
        for state, count in dict(status["jobs"]).items()
    )
    paused = '<p class="paused">dispatch is paused</p>' if status["paused"] else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='refresh' content='2'><title>gpulane</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>gpulane: {int(status['queued'])} queued</h1>{paused}"
        f"<h2>Queue by lane and priority</h2><table id='queue'><tr><th></th>{header}</tr>"
        f"{''.join(rows)}</table>"
        "<h2>GPU slots</h2><table id='slots'><tr><th>slot</th><th>state</th><th>model</th></tr>"
        f"{''.join(slots)}</table>"
        f"<h2>Jobs by state</h2><table id='jobs'><tr><th>state</th><th>jobs</th></tr>{jobs}</table>"
        "</body></html>"
    )


@router.get("/", response_class=HTMLResponse, summary="Live status page")
async def status_page(request: Request) -> HTMLResponse:
    """The queue at a glance, refreshing itself."""
    gateway = gateway_of(request)
    status = await gateway.call(gateway.lane.status)
    return HTMLResponse(render_status(status))
