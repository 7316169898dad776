"""The simulated models: how each behaves (ModelProfile), the default catalog, the models
a server has (InstalledModel, in a Catalog that pull, create, copy and delete change), and
how Ollama names and describes a model (full names, digests, ``details``, template).

One place for what a model *is*, so the routes that list models (``/api/tags``,
``/api/ps``, ``/api/show``) describe it the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_MODELS",
    "MODIFIED_AT_NS",
    "Catalog",
    "InstalledModel",
    "ModelProfile",
    "canonical",
    "details",
    "digest",
    "parameter_count",
    "template",
]

MODIFIED_AT_NS = 1_736_935_200 * 10**9  # a fixed "pulled at" time, for stable listings


@dataclasses.dataclass(frozen=True, slots=True)
class ModelProfile:
    """How a simulated model behaves: timings (seconds, before ``speed``), sizes and text."""

    load_seconds: float = 0.8
    first_token_seconds: float = 0.15
    tokens_per_second: float = 40.0
    mean_answer_tokens: int = 60
    max_answer_tokens: int = 600
    size_bytes: int = 2_000_000_000
    embedding_dimensions: int = 3072
    context_length: int = 4096
    embedding_only: bool = False
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    tools: bool = True  # takes ``tools`` and answers with tool calls
    thinking: bool = False  # thinks before answering (and by default, as Ollama does)
    vision: bool = False  # takes images
    insert: bool = False  # takes a generate ``suffix`` (fill-in-the-middle)
    # The load_duration of a call whose model is loaded already: Ollama's time from the
    # request's arrival to its runner (parsing, the model lookup, the scheduler), reported
    # on top of any wait for the runner but not waited for.
    warm_load_seconds: float = 0.002

    def __post_init__(self) -> None:
        for name in ("load_seconds", "first_token_seconds", "warm_load_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be positive")
        if self.mean_answer_tokens < 2:
            raise ValueError("mean_answer_tokens must be at least 2")
        if self.max_answer_tokens < 1 or self.embedding_dimensions < 1:
            raise ValueError("max_answer_tokens and embedding_dimensions must be positive")

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What ``/api/show`` lists, in Ollama's order (server/images.go Capabilities)."""
        if self.embedding_only:
            return ("embedding",)
        flags = (("vision", self.vision), ("tools", self.tools), ("insert", self.insert),
                 ("thinking", self.thinking))  # fmt: skip
        return ("completion", *(name for name, on in flags if on))


DEFAULT_MODELS: Mapping[str, ModelProfile] = MappingProxyType(
    {
        "llama3.2": ModelProfile(
            load_seconds=1.2, first_token_seconds=0.12, tokens_per_second=60.0,
            mean_answer_tokens=80, size_bytes=2_019_393_189,
        ),
        "qwen2.5:7b": ModelProfile(
            load_seconds=2.5, first_token_seconds=0.25, tokens_per_second=30.0,
            mean_answer_tokens=120, size_bytes=4_683_087_332, embedding_dimensions=3584,
            context_length=8192, family="qwen2", parameter_size="7.6B",
        ),
        "mistral": ModelProfile(
            load_seconds=2.2, first_token_seconds=0.2, tokens_per_second=32.0,
            mean_answer_tokens=100, size_bytes=4_113_301_824, embedding_dimensions=4096,
            parameter_size="7.2B", quantization_level="Q4_0",
        ),
        "nomic-embed-text": ModelProfile(
            load_seconds=0.3, first_token_seconds=0.01, size_bytes=274_302_450,
            embedding_dimensions=768, context_length=2048, embedding_only=True,
            family="nomic-bert", parameter_size="137M", quantization_level="F16",
        ),
        "qwen3:4b": ModelProfile(
            load_seconds=1.8, first_token_seconds=0.15, tokens_per_second=45.0,
            mean_answer_tokens=90, size_bytes=2_497_293_918, embedding_dimensions=2560,
            context_length=8192, family="qwen3", parameter_size="4.0B", thinking=True,
        ),
        "gemma3:4b": ModelProfile(
            load_seconds=2.0, first_token_seconds=0.3, tokens_per_second=40.0,
            mean_answer_tokens=90, size_bytes=3_338_801_804, embedding_dimensions=2560,
            context_length=8192, family="gemma3", parameter_size="4.3B", tools=False,
            vision=True,
        ),
    }
)  # fmt: skip


def canonical(name: str) -> str:
    """Ollama's full name: ``llama3.2`` is ``llama3.2:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def digest(name: str) -> str:
    """A stable sha256 hex digest standing in for the model blob's."""
    return hashlib.sha256(name.encode()).hexdigest()


def details(profile: ModelProfile) -> dict[str, Any]:
    """Ollama's ``details`` object of a model."""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": profile.family,
        "families": [profile.family],
        "parameter_size": profile.parameter_size,
        "quantization_level": profile.quantization_level,
    }


def parameter_count(parameter_size: str) -> int:
    """``3.2B`` → 3200000000, ``137M`` → 137000000."""
    scale = {"B": 10**9, "M": 10**6, "K": 10**3}.get(parameter_size[-1:].upper(), 1)
    try:
        return int(float(parameter_size.rstrip("BMKbmk")) * scale)
    except ValueError:
        return 0


def template(profile: ModelProfile) -> str:
    """The model's prompt template as ``/api/show`` gives it: a Go template whose tool and
    thinking parts are there when the model has those capabilities (Ollama infers the
    capabilities from them)."""
    if profile.embedding_only:
        return "{{ .Prompt }}"
    parts = ["{{- if .System }}<|system|>\n{{ .System }}\n{{ end }}"]
    if profile.tools:
        parts.append("{{- if .Tools }}<|tools|>\n{{ range .Tools }}{{ . }}\n{{ end }}{{ end }}")
    calls = "{{- range .ToolCalls }}<|tool_call|>{{ .Function }}\n{{ end }}"
    parts.append(
        "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}\n"
        + (calls if profile.tools else "")
        + "{{ end }}"
    )
    if profile.thinking:
        parts.append("{{- if .Think }}<|think|>\n{{ end }}")
    parts.append("<|assistant|>\n")
    return "".join(parts)


@dataclasses.dataclass(frozen=True, slots=True)
class InstalledModel:
    """A model the server has (``/api/tags``): its profile, and what ``/api/create`` set."""

    name: str  # canonical: name:tag
    profile: ModelProfile
    digest: str
    modified_at_ns: int = MODIFIED_AT_NS
    parent_model: str = ""
    system: str = ""
    template: str = ""  # empty: the profile's (see :func:`template`)
    license: tuple[str, ...] = ()
    parameters: tuple[tuple[str, Any], ...] = ()
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) said before every chat

    @property
    def prompt_template(self) -> str:
        """The template the model renders with."""
        return self.template or template(self.profile)


class Catalog:
    """The models a server has, by canonical name, in the order they came; thread-safe."""

    def __init__(self, models: Iterable[InstalledModel]) -> None:
        self._lock = threading.Lock()
        self._models = {model.name: model for model in models}

    def get(self, name: str) -> InstalledModel | None:
        """The model called ``name`` (canonical), if the server has it."""
        with self._lock:
            return self._models.get(name)

    def all(self) -> tuple[InstalledModel, ...]:
        """Every model, in the order they came."""
        with self._lock:
            return tuple(self._models.values())

    def put(self, model: InstalledModel) -> None:
        """Add ``model``, or replace the one of its name (in place)."""
        with self._lock:
            self._models[model.name] = model

    def remove(self, name: str) -> InstalledModel | None:
        """Forget the model called ``name``; returns it (None if there was none)."""
        with self._lock:
            return self._models.pop(name, None)
