"""Request-side checks the Ollama, OpenAI and job routes share: images, the backend labels
a job requires (``X-Gpulane-Labels``), and the fields a client may send that gpulane
recognises but cannot carry (refused by name, never dropped)."""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Iterable

from fastapi import Request

from actors.gateway.errors import GatewayError
from protocol import ValidationError
from protocol.spec import parse_labels

__all__ = ["LABELS_HEADER", "check_image", "labels_asked", "refuse_uncarried"]

# The backend labels a job requires, comma-separated (docs/gateway.md).
LABELS_HEADER = "x-gpulane-labels"


def check_image(field: str, data: str, max_bytes: int) -> str:
    """``data`` if it is base64, as Ollama reads an image (Go's standard encoding, padded,
    line breaks skipped), of at most ``max_bytes`` decoded; otherwise a 400 (not base64) or
    a 413 (too large) naming ``field``, before the model server sees it."""
    try:
        size = len(b64decode(data.replace("\r", "").replace("\n", ""), validate=True))
    except (binascii.Error, ValueError):
        raise GatewayError(
            400, "is not base64 image data", field=field, allowed="base64 (standard, padded)"
        ) from None
    if size > max_bytes:
        raise GatewayError(
            413, f"is an image of {size} bytes; the limit is {max_bytes}", field=field,
            allowed=f"gateway.max_image_bytes = {max_bytes}", reason="too_large",
        )  # fmt: skip
    return data


def refuse_uncarried(asked: Iterable[tuple[str, bool, str]]) -> None:
    """A 400 naming the first field in ``asked`` (field, whether the request asks for
    something with it, why gpulane cannot carry it) that the request asks for."""
    for field, set_, why in asked:
        if set_:
            raise GatewayError(400, f"gpulane cannot carry it: {why}", field=field)


def labels_asked(request: Request) -> tuple[str, ...]:
    """The backend labels ``X-Gpulane-Labels`` requires (``a,b``; none without the header):
    the job runs only on a backend carrying all of them. A bad label is a 400 naming the
    header."""
    raw = request.headers.get(LABELS_HEADER)
    if raw is None or not raw.strip():
        return ()
    try:
        return parse_labels(LABELS_HEADER, [part.strip() for part in raw.split(",")])
    except ValidationError as exc:
        raise GatewayError(400, exc.problem, field=LABELS_HEADER, allowed=exc.allowed) from None
