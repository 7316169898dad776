"""Schemathesis fuzzes every operation of the gateway's OpenAPI schema: no input gives a 5xx.

It runs against a real gateway (uvicorn on loopback) on the simulated Ollama server,
as a caller without admin rights (so it cannot pause the queue under its own feet).
Each operation gets its own hypothesis run over schemathesis's generated cases. A
generated model name is almost never one the model server has, so each chat and
completion case is sent a second time naming ``omni``, a model that takes tools,
thinking, images and suffixes (and, for a chat, with a message if it had none): the
request's fields (tools, think, format, images, context, logprobs, tool_choice,
response_format, ...) then reach the job, the model server and the answer's translation
back. Rate limits are lifted, so that cases are not turned away before they are read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import schemathesis
from fields_kit import OMNI, fields_stack
from gateway_kit import ALICE, HELLO, bearer
from hypothesis import HealthCheck, given, settings

from protocol import Limits

EXAMPLES_PER_OPERATION = 25
JOB_ROUTES = frozenset({"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"})


def on_omni(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` naming ``omni``, and holding a message if it is a chat without one."""
    chat = path in ("/api/chat", "/v1/chat/completions")
    asks = chat and not (isinstance(body.get("messages"), list) and body["messages"])
    return {**body, "model": OMNI, **({"messages": HELLO} if asks else {})}


def test_no_generated_request_makes_the_gateway_fail_with_a_5xx(tmp_path: Path) -> None:
    with fields_stack(tmp_path) as gateway:
        unlimited = Limits(requests_per_minute=0, burst=0, max_queued_per_caller=0)
        gateway.lane.reload_config(dataclasses.replace(gateway.lane.config, limits=unlimited))
        schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 18
        checked: list[str] = []
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                suppress_health_check=list(HealthCheck),
            )  # fmt: skip
            def no_server_error(case: schemathesis.Case) -> None:
                if case.path == "/jobs/{ref}/events":
                    case.path_parameters = {"ref": "no-such-job"}  # a real stream lasts a job
                bodies = [case.body]
                if case.path in JOB_ROUTES and isinstance(case.body, dict):
                    bodies.append(on_omni(case.path, case.body))
                for body in bodies:
                    case.body = body
                    response = case.call(base_url=gateway.url, headers=bearer(ALICE), timeout=10)
                    assert response.status_code < 500, (
                        f"{case.method} {case.formatted_path} -> {response.status_code}: "
                        f"{response.text[:300]}\nbody: {str(case.body)[:600]}"
                    )

            no_server_error()
            checked.append(f"{operation.method.upper()} {operation.path}")
        assert "POST /api/chat" in checked and "POST /jobs" in checked
        assert "POST /v1/chat/completions" in checked
