"""The asynchronous job surface and the queue's administration.

``POST /jobs`` returns the job's id at once (the job is detached: it runs whether or
not anyone waits; a ``webhook`` hears when it ends); ``GET /jobs/{ref}`` (an id or a
sequence number), ``POST /jobs/{ref}/cancel``, ``POST /jobs/{ref}/retry`` and ``GET
/jobs/{ref}/events`` (server-sent events: queue position while waiting, then chunks,
then the end) follow it. A
caller sees and steers only its own jobs; an admin key sees all, and may pause,
resume, prune ended jobs and reload the configuration.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from actors.arbiter import CancelOutcome as Outcome
from actors.gateway.core import CallerDep, Gateway, gateway_of
from actors.gateway.ollama_api import OllamaMessage, checked_images, ollama_messages
from protocol import Job, JobCancelledError, JobFailedError, JobSpec, JobState, Lane, Priority

__all__ = ["router"]

router = APIRouter(tags=["jobs"])

StateName = Literal["queued", "loading", "running", "succeeded", "failed", "cancelled"]

POLL_SECONDS = 0.25
POSITION_EVERY_SECONDS = 1.0


class JobRequest(BaseModel):
    """``POST /jobs``: a chat (``messages``) or generate (``prompt``) job and how to schedule it.

    There is no ``caller`` field: the caller is the API key's identity.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["chat", "generate"] = "chat"
    model: str = Field(min_length=1, max_length=200)
    messages: list[OllamaMessage] = Field(default_factory=list)
    prompt: str = ""
    system: str | None = None
    options: dict[str, Any] | None = None
    format: Literal["json"] | dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    lane: Literal["internal", "external"] | None = None
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    task_type: str | None = Field(default=None, min_length=1, max_length=200)
    task_id: str | None = Field(default=None, min_length=1, max_length=200)
    chain_id: str | None = Field(default=None, min_length=1, max_length=200)
    max_attempts: int = Field(default=3, ge=1, le=100)
    keep_alive: str | float | None = None
    # May the job go to the cloud fallback: true asks (the key needs allow_cloud), false
    # keeps it local, none takes the key's allow_cloud.
    allow_cloud: bool | None = None
    # The rest of the request as Ollama takes it; the JobSpec checks each and names a bad one.
    tools: list[dict[str, Any]] | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    images: list[str] | None = None  # generate
    raw: bool | None = None  # generate
    suffix: str | None = None  # generate
    template: str | None = None  # generate
    context: list[int] | None = None  # generate
    # Posted, signed, when the job ends; its host must be one the key's webhook_hosts allow
    # (docs/operations.md, "Webhooks").
    webhook: str | None = None
    # The backend labels the job requires: it runs only on a backend carrying all of them.
    labels: list[str] | None = None


# JobRequest fields that go to the JobSpec as they are, when the caller gave them.
_PASSED_AS_GIVEN = (
    "tools", "think", "logprobs", "top_logprobs", "images", "raw", "suffix", "template", "context",
    "webhook", "labels",
)  # fmt: skip


class Submitted(BaseModel):
    """What ``POST /jobs`` and ``POST /jobs/{ref}/retry`` answer."""

    id: str
    seq: int
    state: str
    caller: str
    lane: str
    priority: str


class CancelOutcome(BaseModel):
    """What ``POST /jobs/{ref}/cancel`` answers: was the job queued or running."""

    id: str
    outcome: str


def _submitted(job: Job) -> Submitted:
    spec = job.spec
    return Submitted(
        id=job.id, seq=job.seq, state=job.state.value, caller=spec.caller,
        lane=spec.lane.value, priority=spec.priority.name.lower(),
    )  # fmt: skip


@router.post("/jobs", status_code=202, response_model=Submitted, summary="Submit a job")
async def submit(body: JobRequest, request: Request, caller: CallerDep) -> Submitted:
    """Queue a job durably and answer its id at once."""
    gateway = gateway_of(request)
    lane = caller.check_lane(Lane.parse(body.lane) if body.lane else caller.default_lane)
    max_image_bytes = gateway.settings.max_image_bytes
    if body.images is not None:
        checked_images("images", body.images, max_image_bytes)
    fields: dict[str, Any] = {
        "allow_cloud": caller.cloud_for(body.allow_cloud, "allow_cloud"),
        "model": body.model,
        "system": body.system,
        "options": body.options or {},
        "format": body.format,
        "max_tokens": body.max_tokens,
        "lane": lane,
        "priority": Priority.parse(body.priority),
        "caller": caller.name,
        "task_type": body.task_type,
        "task_id": body.task_id,
        "chain_id": body.chain_id,
        "max_attempts": body.max_attempts,
        "keep_alive": body.keep_alive,
        "stream": True,
        **{
            name: getattr(body, name)
            for name in _PASSED_AS_GIVEN
            if getattr(body, name) is not None
        },
    }
    if body.kind == "chat":
        spec = JobSpec.chat(messages=ollama_messages(body.messages, max_image_bytes), **fields)
    else:
        spec = JobSpec.generate(prompt=body.prompt, **fields)
    ticket = await gateway.submit(spec, detach=True, cloud_by_default=body.allow_cloud is None)
    return _submitted(ticket.submitted)


@router.get("/jobs", summary="List jobs (your own; admins: anyone's)")
async def list_jobs(
    request: Request,
    caller: CallerDep,
    state: Annotated[list[StateName] | None, Query()] = None,
    of: Annotated[str | None, Query(min_length=1, max_length=200, description="admins")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """Newest first."""
    gateway = gateway_of(request)
    who = of if caller.admin else caller.name
    states = frozenset(JobState(s) for s in state) if state else None
    jobs = await gateway.call(gateway.lane.list, states=states, caller=who, limit=limit)
    return {"jobs": [job.to_dict() for job in jobs]}


@router.get("/jobs/{ref}", summary="One job, by id or sequence number")
async def get_job(ref: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    """The job as the store keeps it."""
    job = await gateway_of(request).job_for(caller, ref)
    return job.to_dict()


@router.post("/jobs/{ref}/cancel", response_model=CancelOutcome, summary="Cancel a job")
async def cancel_job(ref: str, request: Request, caller: CallerDep) -> CancelOutcome:
    """Cancel a queued or running job of yours."""
    gateway = gateway_of(request)
    job = await gateway.job_for(caller, ref)
    outcome = await gateway.call(gateway.lane.cancel, job.id)
    return CancelOutcome(id=job.id, outcome=str(outcome))


@router.post("/jobs/{ref}/retry", status_code=202, response_model=Submitted, summary="Retry a job")
async def retry_job(ref: str, request: Request, caller: CallerDep) -> Submitted:
    """Run a failed or cancelled job of yours again, as a new job."""
    gateway = gateway_of(request)
    job = await gateway.job_for(caller, ref)
    ticket = await gateway.call(gateway.lane.retry, job.id, detach=True)
    gateway.track(ticket)
    return _submitted(ticket.submitted)


def _event(kind: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _events(gateway: Gateway, job: Job) -> AsyncIterator[bytes]:
    """Queued (with position) → started → chunks → end; polls the store when no live ticket."""
    ticket = gateway.ticket(job.id)  # taken now: it is dropped once the job ends
    last_position = -1.0
    loop = asyncio.get_running_loop()
    while job.state is JobState.QUEUED:
        if loop.time() - last_position >= POSITION_EVERY_SECONDS:
            last_position = loop.time()
            yield _event("queued", {"id": job.id, "position": await gateway.queue_position(job)})
        await asyncio.sleep(POLL_SECONDS)
        job = await gateway.call(gateway.lane.get, job.id)
    if not job.state.is_terminal:
        yield _event("started", {"id": job.id, "state": job.state.value})
    if ticket is not None:
        try:
            async for piece in ticket.stream():
                yield _event("chunk", {"text": piece})
        except (JobFailedError, JobCancelledError):
            pass
        job = ticket.job(timeout=0)
    while not job.state.is_terminal:
        await asyncio.sleep(POLL_SECONDS)
        job = await gateway.call(gateway.lane.get, job.id)
    yield _event("end", job.to_dict())


@router.get("/jobs/{ref}/events", summary="A job's events (server-sent events)")
async def job_events(ref: str, request: Request, caller: CallerDep) -> StreamingResponse:
    """``queued`` (position), ``started``, ``chunk`` (text) and ``end`` (the job) events."""
    gateway = gateway_of(request)
    job = await gateway.job_for(caller, ref)
    return StreamingResponse(_events(gateway, job), media_type="text/event-stream")


@router.get("/queue", summary="Queue status")
async def queue_status(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Depth per lane and priority, the GPU slots (each with its backend, ``cloud`` for a
    cloud slot), resident models, counters."""
    gateway = gateway_of(request)
    status = await gateway.call(gateway.lane.status)
    slots = {
        slot_id: {
            "backend": slot["backend"],
            "job_id": slot["job_id"] if caller.admin else None,
            "busy": slot["job_id"] is not None,
            "model": slot["model_key"],
            "since": slot["since"],
        }
        for slot_id, slot in status["slots"].items()
    }
    return {
        "paused": status["paused"],
        "queued": status["queued"],
        "depth": dict(status["depth"]),
        "slots": slots,
        "resident_models": list(status["resident_models"]),
        "jobs": dict(status["jobs"]),
        "counters": dict(status["counters"]),
    }


class Cleared(BaseModel):
    """What ``POST /queue/clear`` answers: how many queued jobs it cancelled, and whose."""

    cancelled: int
    started_meanwhile: int
    caller: str | None


CLEAR_BATCH = 500


@router.post("/queue/clear", response_model=Cleared, summary="Cancel every queued job you may see")
async def clear_queue(
    request: Request,
    caller: CallerDep,
    of: Annotated[str | None, Query(min_length=1, max_length=200, description="admins")] = None,
) -> Cleared:
    """Cancel your queued jobs; an admin cancels everyone's (or one caller's, with ``of``).

    Running jobs are left alone. A job that the arbiter starts in the instant between
    the listing and its cancel is cancelled as running; ``started_meanwhile`` counts those.
    """
    gateway = gateway_of(request)
    who = of if caller.admin else caller.name
    queued = frozenset({JobState.QUEUED})
    cancelled = started = 0
    seen: set[str] = set()
    while True:
        batch = await gateway.call(
            gateway.lane.list, states=queued, caller=who, limit=CLEAR_BATCH, oldest_first=True
        )
        fresh = [job for job in batch if job.id not in seen]
        for job in fresh:
            seen.add(job.id)
            outcome = await gateway.call(gateway.lane.cancel, job.id)
            cancelled += outcome == Outcome.QUEUED
            started += outcome == Outcome.RUNNING
        if len(batch) < CLEAR_BATCH or not fresh:
            return Cleared(cancelled=cancelled, started_meanwhile=started, caller=who)


@router.post("/admin/pause", summary="Stop starting jobs (admin)")
async def pause(request: Request, caller: CallerDep) -> dict[str, bool]:
    """Running calls finish; queued jobs wait."""
    caller.require_admin()
    gateway = gateway_of(request)
    await gateway.call(gateway.lane.pause)
    return {"paused": True}


@router.post("/admin/resume", summary="Start dispatching again (admin)")
async def resume(request: Request, caller: CallerDep) -> dict[str, bool]:
    """Dispatch resumes at once."""
    caller.require_admin()
    gateway = gateway_of(request)
    await gateway.call(gateway.lane.resume)
    return {"paused": False}


class Pruned(BaseModel):
    """What ``POST /admin/prune`` answers: how many ended jobs it deleted, and how old."""

    deleted: int
    older_than_s: float


@router.post("/admin/prune", response_model=Pruned, summary="Delete old ended jobs (admin)")
async def prune(
    request: Request,
    caller: CallerDep,
    older_than_s: Annotated[
        float | None, Query(ge=0, description="default: store.prune_after_s")
    ] = None,
) -> Pruned:
    """Delete now, as the store's timer does, the jobs that ended more than
    ``older_than_s`` seconds ago (queued and running jobs are never pruned)."""
    caller.require_admin()
    gateway = gateway_of(request)
    deleted = await gateway.call(gateway.lane.prune, older_than_s)
    older = gateway.lane.config.store.prune_after_s if older_than_s is None else older_than_s
    return Pruned(deleted=deleted, older_than_s=older)


@router.post("/admin/reload", summary="Re-read the config file (admin)")
async def reload(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Apply the file: each changed key applies, or the reload is a 409 naming each key
    that cannot change while running and nothing changes (docs/configuration.md)."""
    caller.require_admin()
    gateway = gateway_of(request)
    config, changed = await gateway.call(gateway.reload)
    return {"reloaded": True, "changed": list(changed), "api_keys": len(config.gateway.api_keys)}
