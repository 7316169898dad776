"""Liveness and readiness: ``GET /healthz`` and ``GET /readyz`` (docs/operations.md,
"Running it as a service").

``/healthz`` answers 200 while the process serves HTTP, whatever the lane's state: a
supervisor (systemd, a container runtime) restarts the process when it stops answering
or exits. ``/readyz`` answers 200 only when gpulane can take and run work: the
supervision tree is up (every child running, the root has not given up), the job store
answers an ask within ``READY_TIMEOUT_S`` (the same mailbox its writes go through, so a
store stuck in a write or restarting is not ready), and a backend is up (any of them,
by its residency tracker's health, or cloud slots for jobs that allow the cloud).
Otherwise a 503 whose body names each check that failed. Neither needs a key (probes
send none); the body says what is not ready, never a path or an error's text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from actors.gateway.core import gateway_of
from actors.hosts import tracker_id_for
from actors.runtime import ChildSnapshot, ChildState, SupervisorSnapshot
from actors.status_view import all_started
from actors.system import GpuLane
from protocol.messages import ResidencySnapshot, StoreSnapshot

__all__ = ["READY_TIMEOUT_S", "readiness", "router"]

router = APIRouter(tags=["ops"])

READY_TIMEOUT_S = 2.0  # how long the store and the residency tracker may take to answer

Check = tuple[bool, str]


@router.get("/healthz", summary="Liveness: the process serves")
async def healthz() -> JSONResponse:
    """200 while the process answers HTTP."""
    return JSONResponse({"ok": True})


@router.get("/readyz", summary="Readiness: the tree is up, the store answers, a backend is up")
async def readyz(request: Request) -> JSONResponse:
    """200 when ready; 503 naming what is not."""
    gateway = gateway_of(request)
    body = await gateway.call(readiness, gateway.lane)
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


def readiness(lane: GpuLane) -> Mapping[str, Any]:
    """Each check's outcome (``ok`` and a short ``detail``), which failed, and whether all
    passed. Blocking (run it off the event loop): the store's and the tracker's answers
    are bounded by ``READY_TIMEOUT_S`` each; the root supervisor's snapshot is its own
    state, answered at once."""
    snapshot = None if lane.failure is not None else lane.supervision()
    checks = {
        "tree": _tree(lane, snapshot),
        "store": _store(lane),
        "backend": _backend(lane, snapshot),
    }
    failed = [name for name, (ok, _) in checks.items() if not ok]
    return {
        "ready": not failed,
        "not_ready": failed,
        "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
    }


def _tree(lane: GpuLane, snapshot: SupervisorSnapshot | None) -> Check:
    if lane.failure is not None:
        return False, "the supervision tree gave up; gpulane serve exits"
    if snapshot is None:
        return False, "stopped"
    if not all_started(snapshot):
        down = [c.child_id for c in _children(snapshot) if c.state is not ChildState.RUNNING]
        return False, "restarting: " + ", ".join(down)
    return True, "up"


def _store(lane: GpuLane) -> Check:
    try:
        lane.ref_for("store").ask(StoreSnapshot(), timeout=READY_TIMEOUT_S)
    except Exception as exc:  # a probe answers whatever went wrong; the log has the rest
        return False, f"no answer within {READY_TIMEOUT_S:g} s ({type(exc).__name__})"
    return True, "answers"


def _backend(lane: GpuLane, snapshot: SupervisorSnapshot | None) -> Check:
    cloud = snapshot is not None and any(
        child.child_id.startswith("cloud") for child in _children(snapshot)
    )
    states = {host.name: _health(lane, host.name) for host in lane.config.hosts}
    detail = ", ".join(f"{name} {state}" for name, state in states.items())
    if "up" in states.values():
        return True, detail
    if cloud:
        return True, f"{detail}; cloud slots take the jobs that allow the cloud"
    return False, detail


def _health(lane: GpuLane, backend: str) -> str:
    """``up`` or ``down`` as ``backend``'s tracker says, or why it could not say."""
    try:
        tracked = lane.ref_for(tracker_id_for(backend)).ask(
            ResidencySnapshot(), timeout=READY_TIMEOUT_S
        )
        return str(tracked["health"][backend]["state"])
    except Exception as exc:  # as in _store
        return f"unknown ({type(exc).__name__})"


def _children(snapshot: SupervisorSnapshot) -> list[ChildSnapshot]:
    """Every child in the tree, nested supervisors' children included."""
    out: list[ChildSnapshot] = []
    for child in snapshot.children:
        out.append(child)
        if child.supervisor is not None:
            out.extend(_children(child.supervisor))
    return out
