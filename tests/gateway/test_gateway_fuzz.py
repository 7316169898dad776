"""Schemathesis fuzzes every operation of the gateway's OpenAPI schema: no input gives a 5xx.

It runs against a real gateway (uvicorn on loopback) on the simulated Ollama server,
as a caller without admin rights (so it cannot pause the queue under its own feet).
Each operation gets its own hypothesis run over schemathesis's generated cases.
"""

from __future__ import annotations

from pathlib import Path

import schemathesis
from gateway_kit import ALICE, bearer, running_stack
from hypothesis import HealthCheck, given, settings

EXAMPLES_PER_OPERATION = 25


def test_no_generated_request_makes_the_gateway_fail_with_a_5xx(tmp_path: Path) -> None:
    with running_stack(tmp_path) as gateway:
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
                response = case.call(base_url=gateway.url, headers=bearer(ALICE), timeout=10)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]}"
                )

            no_server_error()
            checked.append(f"{operation.method.upper()} {operation.path}")
        assert "POST /api/chat" in checked and "POST /jobs" in checked
