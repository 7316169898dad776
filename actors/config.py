"""gpulane's configuration: TOML file, environment overrides, validated into frozen values.

Every section maps onto a dataclass; an unknown key or a bad value is a ValidationError
that names ``section.key``. ``GPULANE_<SECTION>_<KEY>`` environment variables override
the file (e.g. ``GPULANE_STORE_PATH=/var/lib/gpulane.sqlite3``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from actors.backends.anthropic import ANTHROPIC_URL
from actors.backends.openai_compat import RESUME_MODES
from actors.cloud import CloudPolicy
from protocol import ActiveHours, RetryPolicy, SchedulingPolicy, StoreSettings, ValidationError

__all__ = ["BackendSettings", "CloudSettings", "Config"]

BACKEND_KINDS = ("ollama", "simulated", "openai")


@dataclasses.dataclass(frozen=True, slots=True)
class BackendSettings:
    """Which model server the GPU slots drive."""

    kind: str = "ollama"
    url: str = "http://127.0.0.1:11434"
    slots: int = 1
    request_timeout_s: float = 300.0
    # openai only: how a preempted chat resumes (actors.backends.openai_compat)
    resume: str = "prefill"
    embed_workers: int = 4  # concurrent embedding calls, which bypass the GPU queue

    def __post_init__(self) -> None:
        if self.kind not in BACKEND_KINDS:
            raise ValidationError(
                "backend.kind", f"unknown backend {self.kind!r}", allowed=BACKEND_KINDS
            )
        if not isinstance(self.slots, int) or self.slots < 1:
            raise ValidationError(
                "backend.slots", f"must be an integer of 1 or more, got {self.slots!r}"
            )
        if not self.url.startswith(("http://", "https://")):
            raise ValidationError("backend.url", f"not an http(s) URL: {self.url!r}")
        if self.resume not in RESUME_MODES:
            raise ValidationError("backend.resume", f"unknown mode {self.resume!r}", RESUME_MODES)
        if not isinstance(self.embed_workers, int) or self.embed_workers < 1:
            raise ValidationError("backend.embed_workers", "must be an integer of 1 or more")


@dataclasses.dataclass(frozen=True, slots=True)
class CloudSettings:
    """Cloud fallback (docs/backends.md): cloud slots on the Anthropic Messages API for jobs
    with ``allow_cloud``, when the local wait would exceed ``max_local_wait_s`` or the local
    backend is down. The key is read from the environment variable ``api_key_env``."""

    enabled: bool = False
    url: str = ANTHROPIC_URL
    model: str = "claude-3-5-haiku-latest"
    api_key_env: str = "ANTHROPIC_API_KEY"
    slots: int = 2
    max_local_wait_s: float = 60.0
    assumed_run_s: float = 20.0
    max_tokens: int = 1024
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not isinstance(self.slots, int) or self.slots < 1:
            raise ValidationError(
                "cloud.slots", f"must be an integer of 1 or more, got {self.slots!r}"
            )
        if not self.url.startswith(("http://", "https://")):
            raise ValidationError("cloud.url", f"not an http(s) URL: {self.url!r}")
        CloudPolicy(self.max_local_wait_s, self.assumed_run_s)  # raises on a bad bound

    @property
    def policy(self) -> CloudPolicy:
        """The routing bounds the arbiter applies."""
        return CloudPolicy(self.max_local_wait_s, self.assumed_run_s)


_SECTIONS: dict[str, type[Any]] = {
    "store": StoreSettings,
    "scheduling": SchedulingPolicy,
    "retry": RetryPolicy,
    "backend": BackendSettings,
    "cloud": CloudSettings,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """Everything a GpuLane needs to start; hot-reloadable parts go through ``reload_config``."""

    store: StoreSettings = StoreSettings()
    scheduling: SchedulingPolicy = SchedulingPolicy()
    retry: RetryPolicy = RetryPolicy()
    backend: BackendSettings = BackendSettings()
    cloud: CloudSettings = CloudSettings()

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
        """Read a TOML file, then apply ``GPULANE_*`` environment overrides."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValidationError(str(path), f"not valid TOML: {exc}") from None
        return cls.from_mapping(data, env=env)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
        """Build from nested mappings (``{"store": {"path": ...}}``) plus environment overrides."""
        merged = {name: dict(data.get(name, {})) for name in _SECTIONS}
        unknown = sorted(set(data) - set(_SECTIONS))
        if unknown:
            raise ValidationError(unknown[0], "unknown config section", allowed=sorted(_SECTIONS))
        _apply_env(merged, os.environ if env is None else env)
        return cls(**{name: _build(name, section) for name, section in merged.items()})

    def replace(self, **changes: Any) -> Config:
        """A copy with whole sections replaced."""
        return dataclasses.replace(self, **changes)


def _build(section: str, values: Mapping[str, Any]) -> Any:
    kind = _SECTIONS[section]
    fields = {f.name: f for f in dataclasses.fields(kind)}
    for key in values:
        if key not in fields:
            raise ValidationError(f"{section}.{key}", "unknown setting", allowed=sorted(fields))
    values = dict(values)
    if section == "scheduling" and isinstance(values.get("active_hours"), str):
        values["active_hours"] = ActiveHours.parse(values["active_hours"])
    try:
        return kind(**values)
    except TypeError as exc:
        raise ValidationError(section, str(exc)) from None


def _apply_env(merged: dict[str, dict[str, Any]], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if not name.startswith("GPULANE_"):
            continue
        rest = name[len("GPULANE_") :].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            continue
        field_types = {f.name: f.type for f in dataclasses.fields(_SECTIONS[section])}
        if key not in field_types:
            raise ValidationError(name, "unknown setting", allowed=sorted(field_types))
        merged[section][key] = _coerce(name, raw, str(field_types[key]))


def _coerce(name: str, raw: str, type_name: str) -> Any:
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if type_name.startswith("bool"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
    except ValueError:
        raise ValidationError(name, f"not a number: {raw!r}") from None
    return raw
