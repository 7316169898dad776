"""Deterministic JSON that satisfies a JSON schema: what the simulated Ollama answers to
``format`` (a schema, or ``"json"`` for any object) and the arguments of its tool calls.

Real Ollama constrains decoding with a grammar built from the schema; the simulator writes
an instance of the schema instead, chosen by a seeded random generator, so the same
request always gets the same JSON. Covered: ``type`` (one or a list; ``object``,
``string``, ``number``, ``integer``, ``boolean``, ``array``, ``null``), ``properties``
(every one is written, ``required`` or not), ``items``, ``minItems``/``maxItems``,
``enum``, ``const``, ``minimum``/``maximum`` and their exclusive forms, ``multipleOf``,
``minLength``/``maxLength``, ``anyOf``/``oneOf`` (the first choice), ``allOf`` (merged),
local ``$ref`` (``#/$defs/...``, ``#/definitions/...``, as Pydantic writes nested models)
and string ``format`` ``date``, ``date-time``, ``email``, ``uri``, ``uuid``. Not covered:
``pattern``, ``additionalProperties`` schemas, ``not``, ``if``/``then``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from actors.backends.simulated._text import VOCABULARY, stable_hash

__all__ = ["instance", "json_object"]

_MAX_DEPTH = 12  # a recursive $ref stops here (with null, or an empty container)
_STRING_FORMATS = {
    "date": "2025-01-15",
    "date-time": "2025-01-15T10:00:00Z",
    "time": "10:00:00",
    "email": "queue@example.com",
    "uri": "https://example.com/queue",
    "uuid": "3f2b8c1e-5d4a-4c6b-9e7f-1a2b3c4d5e6f",
}


def json_object(*seed: str) -> dict[str, Any]:
    """The object ``format: "json"`` gets: ``{"response": <a few words>}``."""
    rng = random.Random(stable_hash("json", *seed))
    return {"response": _words(rng, rng.randint(3, 8))}


def instance(schema: Mapping[str, Any], *seed: str) -> Any:
    """A value that satisfies ``schema``, the same for the same ``seed``."""
    rng = random.Random(stable_hash("schema", *seed))
    return _Builder(schema, rng).build(schema, 0)


class _Builder:
    """Walks one schema, resolving its local references against the root."""

    def __init__(self, root: Mapping[str, Any], rng: random.Random) -> None:
        self._root = root
        self._rng = rng

    def build(self, schema: Any, depth: int) -> Any:
        """A value for ``schema`` at nesting ``depth``."""
        if not isinstance(schema, Mapping):
            return self._rng.choice((True, "yes", 1))  # ``true`` or no schema: anything
        schema = self._resolve(schema, depth)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self._rng.randrange(len(enum))]
        for key in ("anyOf", "oneOf"):
            choices = schema.get(key)
            if isinstance(choices, list) and choices:
                non_null = [c for c in choices if not _is_null(c)]
                return self.build((non_null or choices)[0], depth + 1)
        kind = _type_of(schema)
        if depth >= _MAX_DEPTH:
            return {"object": {}, "array": []}.get(kind)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return self._string(schema)
        if kind in ("number", "integer"):
            return self._number(schema, integer=kind == "integer")
        if kind == "boolean":
            return self._rng.random() < 0.5
        return None

    def _resolve(self, schema: Mapping[str, Any], depth: int) -> Mapping[str, Any]:
        """``schema`` with a local ``$ref`` followed and ``allOf`` merged in."""
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#") and depth < _MAX_DEPTH:
            target: Any = self._root
            for part in ref.lstrip("#").strip("/").split("/"):
                if not part:
                    continue
                key = part.replace("~1", "/").replace("~0", "~")
                target = target.get(key) if isinstance(target, Mapping) else None
            if isinstance(target, Mapping):
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                schema = {**self._resolve(target, depth + 1), **rest}
        parts = schema.get("allOf")
        if isinstance(parts, list):
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                if isinstance(part, Mapping):
                    piece = self._resolve(part, depth + 1)
                    properties = {**merged.get("properties", {}), **piece.get("properties", {})}
                    required = [*merged.get("required", []), *piece.get("required", [])]
                    merged.update(piece)
                    merged["properties"], merged["required"] = properties, required
            schema = merged
        return schema

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            properties = {}
        names = list(properties)
        required = schema.get("required")
        for name in required if isinstance(required, list) else ():
            if isinstance(name, str) and name not in properties:
                names.append(name)
        return {name: self.build(properties.get(name, {}), depth + 1) for name in names}

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        low = _int(schema.get("minItems"), 1)
        high = max(low, _int(schema.get("maxItems"), max(low, 3)))
        count = self._rng.randint(low, min(high, low + 3))
        items = schema.get("items", {})
        if isinstance(items, list):  # the old tuple form: one schema per position
            return [self.build(item, depth + 1) for item in items]
        return [self.build(items, depth + 1) for _ in range(count)]

    def _string(self, schema: Mapping[str, Any]) -> str:
        fixed = _STRING_FORMATS.get(str(schema.get("format", "")))
        text = fixed if fixed is not None else _words(self._rng, self._rng.randint(1, 4))
        low = _int(schema.get("minLength"), 0)
        high = _int(schema.get("maxLength"), max(low, len(text)))
        while len(text) < low:
            text = f"{text} {_words(self._rng, 1)}"
        return text[: max(high, low)]

    def _number(self, schema: Mapping[str, Any], *, integer: bool) -> int | float:
        low = _bound(schema, "minimum", "exclusiveMinimum", 1)
        high = _bound(schema, "maximum", "exclusiveMaximum", -1)
        low = 0.0 if low is None else low
        high = low + 100.0 if high is None else high
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0:
            first, last = math.ceil(low / step), math.floor(high / step)
            start = self._rng.randint(first, max(first, last))
            for k in (start, *range(first, max(first, last) + 1)):
                value = k * step  # a float step: one whose quotient comes out whole
                if (value / step).is_integer():
                    return int(value) if integer else value
            return int(first * step) if integer else first * step
        if integer:
            return self._rng.randint(math.ceil(low), max(math.ceil(low), math.floor(high)))
        return round(low + (high - low) * self._rng.random(), 3)


def _type_of(schema: Mapping[str, Any]) -> str:
    """The schema's type (the first that is not null, in a list); guessed when absent."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or kind
        kind = kinds[0] if kinds else None
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _is_null(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _bound(schema: Mapping[str, Any], inclusive: str, exclusive: str, inward: int) -> float | None:
    """A numeric bound; an exclusive one (a number, as in draft 6) moved inward a little."""
    value = schema.get(inclusive)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    value = schema.get(exclusive)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) + inward * (1 if float(value).is_integer() else 1e-3)
    return None


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(count))
