"""Turning caller-supplied data into deeply immutable values, and checking that a value is one.

Messages may hold only immutable values (docs/architecture.md section 8): dicts become
read-only mappings over a private copy, lists become tuples.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

__all__ = ["EMPTY_MAPPING", "FrozenJSON", "freeze", "is_deeply_immutable", "thaw"]

FrozenJSON: TypeAlias = (
    "str | int | float | bool | tuple[FrozenJSON, ...] | Mapping[str, FrozenJSON] | None"
)

EMPTY_MAPPING: Mapping[str, Any] = MappingProxyType({})

_SCALARS = (str, int, float, bool, bytes, type(None), enum.Enum)


def freeze(value: Any) -> Any:
    """Return a deeply immutable copy of JSON-like data (dict, list, tuple, scalars)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if dataclasses.is_dataclass(value) and is_deeply_immutable(value):
        return value
    raise TypeError(f"cannot freeze a value of type {type(value).__name__}")


def thaw(value: Any) -> Any:
    """Return plain dicts and lists for a frozen value, e.g. to serialise it as JSON."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def is_deeply_immutable(value: Any) -> bool:
    """True when nothing reachable from ``value`` can be changed in place."""
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, MappingProxyType):
        return all(is_deeply_immutable(v) for v in value.values())
    if isinstance(value, (tuple, frozenset)):
        return all(is_deeply_immutable(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        params = getattr(type(value), "__dataclass_params__", None)
        if params is None or not params.frozen:
            return False
        return all(is_deeply_immutable(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False
