"""What the tests of the API fields (test_ollama_api_fields.py, test_openai_api_fields.py,
test_gateway_fuzz.py) share: a gateway whose simulated Ollama also has a thinking, a
seeing and a fill-in-the-middle model (and one that does all of it), the tools they are
offered, two pictures, and a JSON schema.

Importable by bare name from the modules beside it (pytest puts their folder on
``sys.path``).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from gateway_kit import Stack, running_stack
from profiles import TINY

from protocol import Job

__all__ = [
    "CITY",
    "CLOCK",
    "CODER",
    "OMNI",
    "PICTURES",
    "SEER",
    "THINKER",
    "WEATHER",
    "b64",
    "fields_stack",
    "newest_job",
    "satisfies",
]

# Each as fast as gateway_kit's ``tiny`` (which takes tools), with one capability more
# (docs/backends.md, "The simulated Ollama server").
THINKER = "thinker"  # thinks, and by default, as qwen3 does on Ollama
SEER = "seer"  # sees images and takes no tools, as gemma3 does
CODER = "coder"  # takes generate's suffix
OMNI = "omni"  # all of it: tools, thinking, images and suffix
_MODELS = {
    THINKER: dataclasses.replace(TINY, thinking=True),
    SEER: dataclasses.replace(TINY, vision=True, tools=False),
    CODER: dataclasses.replace(TINY, insert=True),
    OMNI: dataclasses.replace(TINY, thinking=True, vision=True, insert=True),
}

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Today's weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
        },
    },
}
CLOCK: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "clock",
        "description": "The time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
CITY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "population": {"type": "integer", "minimum": 0},
        "rivers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "capital": {"type": "boolean"},
    },
    "required": ["name", "population", "rivers", "capital"],
    "additionalProperties": False,
}
PICTURES = (b"\x89PNG\r\n\x1a\n a green field", b"\x89PNG\r\n\x1a\n a grey sky")


def b64(data: bytes) -> str:
    """``data`` in base64, as Ollama's ``images`` take it."""
    return base64.b64encode(data).decode()


def satisfies(value: Any, schema: dict[str, Any]) -> bool:
    """Whether ``value`` satisfies the JSON ``schema`` (jsonschema raises if not)."""
    jsonschema.validate(value, schema)
    return True


@contextmanager
def fields_stack(tmp_path: Path) -> Iterator[Stack]:
    """gateway_kit's stack with the thinking, seeing, fill-in-the-middle and omni models published
    to the simulated Ollama's registry and pulled, as ``ollama pull`` would."""
    with running_stack(tmp_path) as stack:
        for name, profile in _MODELS.items():
            stack.sim.publish(f"{name}:latest", profile)
        for name in _MODELS:
            pulled = httpx.post(f"{stack.sim.url}/api/pull", json={"model": name, "stream": False})
            assert pulled.json() == {"status": "success"}
        yield stack


def newest_job(stack: Stack) -> Job:
    """The newest job the gateway ran (its stored request and answer)."""
    return stack.wait_for_job(lambda job: job.state.is_terminal)
