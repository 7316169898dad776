"""A webhook receiver on loopback for the webhook tests, and the verifier docs/operations.md
gives receivers, taken from the page itself so the tests check the procedure as documented.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import httpx

from actors.backends.simulated import LoopbackHandler, LoopbackServer

OPERATIONS_MD = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
Verifier = Callable[..., bool]


@dataclasses.dataclass(frozen=True)
class Post:
    """One request the receiver got: its path, headers (case-insensitive) and raw body."""

    path: str
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        """The body, decoded."""
        return json.loads(self.body)


class _Handler(LoopbackHandler):
    def do_POST(self) -> None:
        self.respond(self._receive)

    def _receive(self) -> None:
        receiver = cast(WebhookReceiver, self.owner)
        post = Post(self.path, httpx.Headers(list(self.headers.items())), self.read_body())
        self.send_json(receiver.record(post), {"received": True})


class WebhookReceiver(LoopbackServer[tuple[Post, ...]]):
    """Records every post and answers it with the next status queued by :meth:`answer`
    (200 once they run out). ``stats()`` and ``wait_for`` see the posts so far."""

    def __init__(self) -> None:
        super().__init__(_Handler, name="webhook-receiver")
        self._posts: list[Post] = []
        self._statuses: collections.deque[int] = collections.deque()

    def answer(self, *statuses: int) -> None:
        """Answer the next posts with these statuses, in order."""
        with self.cond:
            self._statuses.extend(statuses)

    def record(self, post: Post) -> int:
        """Keep ``post``; the status to answer it with."""
        with self.cond:
            self._posts.append(post)
            self.cond.notify_all()
            return self._statuses.popleft() if self._statuses else 200

    def posts(self, count: int, timeout: float = 10.0) -> tuple[Post, ...]:
        """Every post so far, once there are at least ``count``."""
        return self.wait_for(lambda posts: len(posts) >= count, timeout)

    def snapshot_locked(self) -> tuple[Post, ...]:
        return tuple(self._posts)


def documented_verifier() -> Verifier:
    """``verify_webhook`` as docs/operations.md's "Webhooks" section writes it."""
    text = OPERATIONS_MD.read_text(encoding="utf-8")
    section = text.split("\n## Webhooks\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    source = next(block for block in blocks if "def verify_webhook(" in block)
    namespace: dict[str, Any] = {}
    exec(compile(source, f"{OPERATIONS_MD}:Webhooks", "exec"), namespace)
    return cast(Verifier, namespace["verify_webhook"])


def verified(post: Post, secret: str, now: float) -> bool:
    """The documented verifier's verdict on ``post`` at time ``now``."""
    headers: Mapping[str, str] = post.headers
    return documented_verifier()(secret, headers, post.body, now=now)
