"""The simulated models: how each behaves (ModelProfile), the default catalog, and how
Ollama names and describes a model (full names, digests, ``details``).

One place for what a model *is*, so the routes that list models (``/api/tags``,
``/api/ps``, ``/api/show``) describe it the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_MODELS",
    "MODIFIED_AT_NS",
    "ModelProfile",
    "canonical",
    "details",
    "digest",
    "parameter_count",
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

    def __post_init__(self) -> None:
        for name in ("load_seconds", "first_token_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be positive")
        if self.mean_answer_tokens < 2:
            raise ValueError("mean_answer_tokens must be at least 2")
        if self.max_answer_tokens < 1 or self.embedding_dimensions < 1:
            raise ValueError("max_answer_tokens and embedding_dimensions must be positive")


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
