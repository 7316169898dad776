"""What the conformance modules share: a gateway on the simulated Ollama (gateway_kit's
``running_stack``) that also has a thinking, a vision and a fill-in-the-middle model, the
tools and schemas the clients are driven with, and the checks every module makes.

Each client library gets a module of its own (``test_<client>.py``), each feature a test
of its own, so a failure names the client and the feature. Importable by bare name from
the modules beside it (pytest puts their folder on ``sys.path``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import ollama
import pydantic
from gateway_kit import Stack, running_stack
from profiles import TINY

from protocol import Job

__all__ = [
    "ADD",
    "CODER",
    "EYE",
    "IMAGES",
    "THINKER",
    "WEATHER",
    "City",
    "conformance_stack",
    "data_url",
    "last_job",
    "validate",
]

# The models a conformance gateway has besides gateway_kit's ``tiny`` (which takes tools)
# and ``endless``: each as fast as ``tiny``, with one capability more (docs/backends.md).
THINKER = "thinker"  # thinks, and by default, as qwen3 does on Ollama
EYE = "eye"  # sees images and takes no tools, as gemma3 on Ollama
CODER = "coder"  # takes generate's suffix (fill-in-the-middle), as qwen2.5-coder
_EXTRA = {
    THINKER: dataclasses.replace(TINY, thinking=True),
    EYE: dataclasses.replace(TINY, vision=True, tools=False),
    CODER: dataclasses.replace(TINY, insert=True),
}

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "the city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
ADD: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
# Two different pictures (the simulated vision model's answer depends on the image bytes).
IMAGES = (b"\x89PNG\r\n\x1a\n a red square", b"\x89PNG\r\n\x1a\n a blue circle")


class City(pydantic.BaseModel):
    """The structured answer the clients ask for: nested, with a list and a bounded number."""

    name: str
    population: int = pydantic.Field(ge=0)
    landmarks: list[str]
    coastal: bool


@contextmanager
def conformance_stack(tmp_path: Path) -> Iterator[Stack]:
    """gateway_kit's stack, with the thinking, vision and fill-in-the-middle models pulled
    into the simulated Ollama (from its registry, as ``ollama pull`` would)."""
    with running_stack(tmp_path) as stack:
        puller = ollama.Client(host=stack.sim.url)
        for name, profile in _EXTRA.items():
            stack.sim.publish(f"{name}:latest", profile)
            assert puller.pull(name).status == "success"
        yield stack


def validate(text: str, schema: dict[str, Any]) -> Any:
    """The JSON ``text`` parsed, after checking it satisfies ``schema`` (jsonschema)."""
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


def data_url(image: bytes) -> str:
    """An image as the ``data:`` URL OpenAI's image content parts carry."""
    return f"data:image/png;base64,{base64.b64encode(image).decode()}"


def last_job(stack: Stack) -> Job:
    """The newest job the gateway ran for ALICE (the stored request and answer)."""
    return stack.wait_for_job(lambda job: job.spec.caller == "alice")
