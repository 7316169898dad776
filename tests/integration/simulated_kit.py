"""What the simulated Ollama's tests share: profiles that take no time on a manual clock,
and the few calls they make over raw HTTP (a stream's lines, ``/api/ps``, a load).

Importable by bare name from the test modules beside it (pytest puts their folder on
``sys.path``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx

from actors.backends.simulated import ModelProfile

__all__ = [
    "INSTANT",
    "QUESTION",
    "instant",
    "load",
    "post",
    "ps",
    "stream_lines",
]

QUESTION = [{"role": "user", "content": "Why is the queue slow today?"}]


def instant(**changes: Any) -> ModelProfile:
    """A profile that takes no time at all on a manual clock (an infinite rate makes every
    token due at once), with ``changes`` (capabilities, say)."""
    base: dict[str, Any] = dict(
        load_seconds=0.0, first_token_seconds=0.0, tokens_per_second=math.inf,
        mean_answer_tokens=20, size_bytes=1_000_000, context_length=2048,
        warm_load_seconds=0.0,
    )  # fmt: skip
    return ModelProfile(**{**base, **changes})


INSTANT = instant()


def stream_lines(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every NDJSON line of a streamed answer (which must be a 200)."""
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines() if line]


def post(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A request answered with one JSON object (which must be a 200)."""
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def ps(http: httpx.Client) -> list[dict[str, Any]]:
    """What ``/api/ps`` lists."""
    models: list[dict[str, Any]] = http.get("/api/ps").json()["models"]
    return models


def load(http: httpx.Client, model: str, **extra: Any) -> dict[str, Any]:
    """Load ``model`` with an empty generate request (Ollama's idiom)."""
    reply: dict[str, Any] = http.post("/api/generate", json={"model": model, **extra}).json()
    return reply
