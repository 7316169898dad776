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

from protocol import (
    ActiveHours,
    Limits,
    ResidencySettings,
    RetryPolicy,
    SchedulingPolicy,
    StoreSettings,
    ValidationError,
)

__all__ = ["BackendSettings", "Config"]

BACKEND_KINDS = ("ollama", "simulated")


@dataclasses.dataclass(frozen=True, slots=True)
class BackendSettings:
    """Which model server the GPU slots drive."""

    kind: str = "ollama"
    url: str = "http://127.0.0.1:11434"
    slots: int = 1
    request_timeout_s: float = 300.0

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


_SECTIONS: dict[str, type[Any]] = {
    "store": StoreSettings,
    "scheduling": SchedulingPolicy,
    "retry": RetryPolicy,
    "backend": BackendSettings,
    "limits": Limits,
    "residency": ResidencySettings,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """Everything a GpuLane needs to start; hot-reloadable parts go through ``reload_config``."""

    store: StoreSettings = StoreSettings()
    scheduling: SchedulingPolicy = SchedulingPolicy()
    retry: RetryPolicy = RetryPolicy()
    backend: BackendSettings = BackendSettings()
    limits: Limits = Limits()
    residency: ResidencySettings = ResidencySettings()

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
