"""The follower's proxy: a request a follower does not serve itself goes to the leader's
gateway, and the answer comes back as it streams (docs/architecture.md section 14;
docs/operations.md, "Several gateways").

The leader decides admission and runs the queue, so a follower forwards every request that
creates or steers work or streams from a GPU: same method, path, query and headers (less
the hop-by-hop ones and ``Host``; ``Authorization`` stays, the leader checks the key), the
body streamed as it arrives. The answer's status, headers and body chunks are relayed as
they come, without buffering, so Ollama's NDJSON and OpenAI's server-sent events arrive
token by token. There is no read time-out (a generation can be long), only a connect
time-out. A forwarded request carries ``X-Gpulane-Forwarded-By: <node>``; a follower that
receives one does not forward it again (503, "not the leader"), so a stale view of the
cluster cannot loop. When no leader is known, or its gateway cannot be reached, the answer
is a 503 with ``Retry-After`` in the error shape of the API the path belongs to
(``errors.render``); a request is never dropped in silence.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Literal

import httpx
import structlog
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from actors.gateway.errors import GatewayError, render
from protocol.cluster import ClusterView, Role

__all__ = [
    "CONNECT_TIMEOUT_S",
    "FORWARDED_BY",
    "OUTCOMES",
    "Forwarder",
    "Outcome",
    "leader_client",
    "relayed_answer",
    "relayed_headers",
    "retry_after_s",
]

log = structlog.get_logger("actors.gateway")

FORWARDED_BY = "X-Gpulane-Forwarded-By"
CONNECT_TIMEOUT_S = 3.0  # how long a forward waits to connect to the leader's gateway

# What became of a request the follower did not serve itself.
Outcome = Literal["forwarded", "no_leader", "unreachable", "loop"]
OUTCOMES: tuple[Outcome, ...] = ("forwarded", "no_leader", "unreachable", "loop")

# Headers of one connection, not of the message (RFC 9110 section 7.6.1), and those the
# relaying end writes itself: never passed on, either way.
_HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
        b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    }
)  # fmt: skip
_NOT_FORWARDED = _HOP_BY_HOP | {b"host"}  # httpx writes the leader's Host
_NOT_RELAYED = _HOP_BY_HOP | {b"date", b"server"}  # the follower's server writes its own


def leader_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The client a follower reaches the leader's gateway with: a connect time-out of
    ``CONNECT_TIMEOUT_S``, none for reading or writing (a generation streams as long as it
    takes), and no cap on connections (each stream holds one; the leader sets the limits).
    ``transport`` stands in for the network (tests)."""
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
    )


def relayed_headers(
    raw: Iterable[tuple[bytes, bytes]], dropped: frozenset[bytes] = _NOT_FORWARDED
) -> list[tuple[bytes, bytes]]:
    """``raw`` headers without ``dropped`` ones and those the ``Connection`` header names
    (lower-cased names, repeated headers kept)."""
    headers = [(name.lower(), value) for name, value in raw]
    named = {
        token.strip().lower().encode()
        for name, value in headers
        if name == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    return [(name, value) for name, value in headers if name not in dropped | named]


def retry_after_s(lease_s: float) -> int:
    """A 503's ``Retry-After`` in seconds: a failover is over within about a lease."""
    return math.ceil(lease_s)


def relayed_answer(answer: httpx.Response) -> Response:
    """A leader's answer that was read whole, as this gateway's response: its status,
    body and headers (less those of the connection and of the encoding, as the body is
    decoded)."""
    dropped = _NOT_RELAYED | {b"content-length", b"content-encoding"}
    response = Response(answer.content, answer.status_code)
    response.raw_headers = [
        *relayed_headers(answer.headers.raw, dropped),
        (b"content-length", str(len(answer.content)).encode()),
    ]
    return response


class Forwarder:
    """Forwards a request to the leader in ``view()`` and relays its answer; ``count``
    hears each request's :data:`Outcome` (the metrics)."""

    def __init__(
        self,
        view: Callable[[], ClusterView],
        client: httpx.AsyncClient,
        lease_s: float,
        count: Callable[[Outcome], None],
    ) -> None:
        self._view = view
        self._client = client
        self._retry_after_s = retry_after_s(lease_s)
        self._count = count

    async def forward(self, request: Request) -> Response:
        """The route of every request the follower does not serve itself: the leader's
        answer, streamed; or a 503 (502) saying why there is none."""
        view = self._view()
        wait = f"retry after {self._retry_after_s} s"
        sender = request.headers.get(FORWARDED_BY)
        if sender is not None:
            log.warning("follower_refused_forwarded", node=view.node, sender=sender)
            return self._refuse(
                request, "loop",
                f"this gateway ({view.node}) is not the leader; {sender} forwarded the request "
                f"here from a stale view of the cluster; {wait}",
            )  # fmt: skip
        if view.role is Role.LEADER:
            return self._refuse(
                request, "no_leader",
                f"this gateway ({view.node}) has just taken the leader's lease and does not "
                f"serve as the leader yet; {wait}",
            )  # fmt: skip
        if view.leader_url is None:
            return self._refuse(
                request, "no_leader", f"no leader gateway: a failover is under way; {wait}"
            )
        leader = view.leader_url
        headers = [
            *relayed_headers(request.headers.raw),
            (FORWARDED_BY.encode(), view.node.encode()),
        ]
        # A Request of its own, not the client's build_request: that would add the client's
        # default headers (Accept, Accept-Encoding, User-Agent) the caller did not send.
        outgoing = httpx.Request(
            request.method,
            _target(leader, request.scope),
            headers=headers,
            content=request.stream() if _has_body(request) else None,
        )
        try:
            upstream = await self._client.send(outgoing, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            log.warning("follower_leader_unreachable", leader=leader, error=_text(exc))
            return self._refuse(
                request, "unreachable",
                f"the leader gateway at {leader} cannot be reached: {_text(exc)}; {wait}",
            )  # fmt: skip
        except httpx.TransportError as exc:
            # Sent, perhaps acted on, and not answered: not safe to call retryable.
            log.warning("follower_leader_failed", leader=leader, error=_text(exc))
            return self._refuse(
                request, "unreachable",
                f"the leader gateway at {leader} failed before it answered: {_text(exc)}",
                status=502,
            )  # fmt: skip
        self._count("forwarded")
        return _Relayed(upstream, leader)

    def _refuse(
        self, request: Request, outcome: Outcome, problem: str, *, status: int = 503
    ) -> Response:
        self._count(outcome)
        headers = {"Retry-After": str(self._retry_after_s)} if status == 503 else None
        error = GatewayError(status, problem, reason=outcome, headers=headers)
        return render(request, error)


class _Relayed(StreamingResponse):
    """The leader's answer as it streams: its status, its headers (less the hop-by-hop
    ones), its body's bytes as they arrive. The leader's response is closed however this
    one ends, so a client that goes away closes the forward and the leader sees it go (and
    cancels its call, as it does for its own clients)."""

    def __init__(self, upstream: httpx.Response, leader: str) -> None:
        super().__init__(_chunks(upstream, leader), status_code=upstream.status_code)
        self.raw_headers = relayed_headers(upstream.headers.raw, _NOT_RELAYED)
        self._upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._upstream.aclose()


async def _chunks(upstream: httpx.Response, leader: str) -> AsyncIterator[bytes]:
    """The body's bytes as they come (not decoded: its Content-Encoding is relayed too).
    A leader that dies mid-answer breaks the client's stream, as its own death would."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.TransportError as exc:
        log.warning("follower_stream_broken", leader=leader, error=_text(exc))
        raise


def _target(leader: str, scope: Scope) -> httpx.URL:
    """The leader's URL for this request: its path as the client sent it (still
    percent-encoded) under the leader's base URL, and its query."""
    base = httpx.URL(leader)
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope["query_string"]
    return base.copy_with(
        raw_path=base.raw_path.rstrip(b"/") + path + (b"?" + query if query else b"")
    )


def _has_body(request: Request) -> bool:
    """Whether the request declares a body (its length, or chunks)."""
    length = request.headers.get("content-length")
    return (length is not None and length != "0") or "transfer-encoding" in request.headers


def _text(exc: Exception) -> str:
    """An httpx error on one line (some have no message of their own)."""
    return " ".join(str(exc).split()) or type(exc).__name__
