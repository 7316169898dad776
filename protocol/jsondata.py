"""Checks that caller-supplied values are plain JSON data and valid Unicode text.

The job store writes a request as JSON and the model server reads it as JSON: bytes,
non-finite floats, integers beyond 64 bits and lone surrogates have no JSON (or UTF-8)
form, so they are refused where they come in, with the path to the bad value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

from protocol.errors import ValidationError
from protocol.frozen import freeze

__all__ = [
    "INT_MIN",
    "JSON_DATA",
    "UINT_MAX",
    "check_json_data",
    "check_text",
    "frozen_json",
    "is_int",
]

JSON_DATA = "strings, finite numbers, integers within 64 bits, booleans, null, arrays, objects"
INT_MIN, UINT_MAX = -(2**63), 2**64 - 1


def is_int(value: object) -> TypeGuard[int]:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_json_data(field: str, value: object) -> None:
    """Raise ValidationError naming the first part of ``value`` that is not plain JSON data.

    The job store writes options and format as JSON, and the model server reads them
    as JSON: bytes, non-finite floats and integers beyond 64 bits have no JSON form.
    """
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        check_text(field, value)
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= UINT_MAX:
            raise ValidationError(field, "is an integer beyond 64 bits", allowed=JSON_DATA)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(field, f"is {value!r}, not a finite number", allowed=JSON_DATA)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_text(f"{field} (a key)", key)
            check_json_data(f"{field}.{key}", item)
        return
    if isinstance(value, tuple):
        for index, item in enumerate(value):
            check_json_data(f"{field}[{index}]", item)
        return
    raise ValidationError(
        field, f"is a {type(value).__name__} value, not JSON data", allowed=JSON_DATA
    )


def check_text(field: str, text: str) -> None:
    """Refuse text that is not valid Unicode: a lone surrogate (what a JSON ``"\\ud800"``
    escape decodes to) has no UTF-8 form for the job store or the model server."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            field,
            f"has a lone surrogate at character {exc.start}",
            allowed="valid Unicode text",
        ) from None


def frozen_json(field: str, value: object) -> Any:
    """``value`` made deeply immutable and checked to be JSON data; errors name ``field``."""
    try:
        frozen = freeze(value)
    except TypeError as exc:
        raise ValidationError(field, str(exc), allowed=JSON_DATA) from None
    check_json_data(field, frozen)
    return frozen
