"""Completion webhooks: the URL a job names, the hosts a caller may post to, the signature,
and what a job shows of its delivery (docs/operations.md, "Webhooks").

The signature follows Stripe's scheme (``stripe-python``'s ``WebhookSignature``): an
HMAC-SHA256, in hex, of ``"{timestamp}.{body}"`` under a shared secret, tagged with its
scheme (``v1=``), with the timestamp in its own header as GitHub and Standard Webhooks send
it. A receiver recomputes it, compares in constant time and refuses a timestamp outside a
tolerance window (Stripe's default: 300 s), so a captured delivery cannot be replayed later.

URLs are checked by hand: ``protocol`` imports no ``urllib`` (it does no I/O, and a test
keeps it so), and a webhook URL needs only a scheme, a host and the rest as given.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Sequence
from typing import Any

from protocol.errors import ValidationError

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "MAX_URL",
    "MIN_SECRET",
    "SIGNATURE_HEADER",
    "SIGNATURE_SCHEME",
    "TIMESTAMP_HEADER",
    "PendingDelivery",
    "WebhookAttempt",
    "WebhookState",
    "WebhookStatus",
    "check_secret",
    "check_webhook_url",
    "host_allowed",
    "parse_hosts",
    "sign",
    "webhook_host",
]

SIGNATURE_HEADER = "X-Gpulane-Signature"
TIMESTAMP_HEADER = "X-Gpulane-Timestamp"
DELIVERY_HEADER = "X-Gpulane-Delivery"  # the job's id: a receiver drops a repeat by it
EVENT_HEADER = "X-Gpulane-Event"  # job.succeeded, job.failed or job.cancelled
SIGNATURE_SCHEME = "v1"
MAX_URL = 2048
MIN_SECRET = 16

# scheme://authority then the rest, which starts with /, ? or # when there is one.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.S)
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<name>[^:]*))(?::(?P<port>\d{1,5}))?")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_URL_TEXT = re.compile(r"[\x21-\x7e]*")  # printable ASCII, no spaces: percent-encode the rest


class WebhookState(enum.Enum):
    """Where a job's delivery stands: ``waiting`` for the job to end, ``pending`` (due or
    retrying), ``delivered`` (a 2xx came back) or ``failed`` (tried for ``retry_for_s``)."""

    WAITING = "waiting"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One post of a delivery: when, the HTTP status that came back (None if none did),
    the error (a non-2xx status's reason, or why nothing came back) and how long it took."""

    at: float
    status: int | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def delivered(self) -> bool:
        """True when the receiver answered 2xx."""
        return self.status is not None and 200 <= self.status < 300

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the store keeps each attempt in this form)."""
        return {"at": self.at, "status": self.status, "error": self.error, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: Any) -> WebhookAttempt:
        """Inverse of :meth:`to_dict`."""
        return cls(
            at=data["at"], status=data["status"], error=data["error"], seconds=data["seconds"]
        )


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookStatus:
    """What a job shows of its webhook: the URL, the delivery's state, every attempt so far,
    when the next one is due (pending) and when it ended (delivered or failed)."""

    url: str
    state: WebhookState = WebhookState.WAITING
    deliveries: tuple[WebhookAttempt, ...] = ()
    next_attempt_at: float | None = None
    ended_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``GET /jobs/{ref}`` shows it as the job's ``webhook``)."""
        return {
            "url": self.url,
            "state": self.state.value,
            "deliveries": [attempt.to_dict() for attempt in self.deliveries],
            "next_attempt_at": self.next_attempt_at,
            "ended_at": self.ended_at,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class PendingDelivery:
    """A pending delivery as the outbox keeps it: the job it reports (by sequence number and
    id), whose it is, where it goes, the body to post, and how many attempts it has had."""

    seq: int
    job_id: str
    caller: str
    event: str
    url: str
    body: bytes
    created_at: float
    attempts: int = 0


def check_webhook_url(value: object, field: str = "webhook") -> str:
    """``value`` if it is an http(s) URL with a host; a ValidationError naming ``field`` if not.

    Credentials in the URL are refused: the URL is stored and shown with the job, and the
    signature already tells the receiver who is posting.
    """
    allowed = "an http:// or https:// URL with a host, e.g. https://example.com/hooks/gpulane"
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a URL string, got {type(value).__name__}", allowed)
    if len(value) > MAX_URL:
        raise ValidationError(field, f"is {len(value)} characters long; the limit is {MAX_URL}")
    if not _URL_TEXT.fullmatch(value):
        raise ValidationError(
            field, "may hold only printable ASCII without spaces", "percent-encoded characters"
        )
    match = _URL.fullmatch(value)
    if match is None:
        raise ValidationError(field, f"{value!r} is not a URL", allowed)
    scheme = match["scheme"].lower()
    if scheme not in ("http", "https"):
        raise ValidationError(field, f"unsupported scheme {scheme!r}", ("http", "https"))
    if "@" in match["authority"]:
        raise ValidationError(
            field, "must not carry credentials (user:password@)", "the signature identifies us"
        )
    if match["rest"] and match["rest"][0] not in "/?#":
        raise ValidationError(field, f"{value!r} is not a URL", allowed)
    _host_of(match["authority"], field)
    return value


def webhook_host(url: str) -> str:
    """The host of a URL :func:`check_webhook_url` accepted, lower case (an IPv6 address
    without its brackets)."""
    match = _URL.fullmatch(url)
    if match is None:
        raise ValidationError("webhook", f"{url!r} is not a URL")
    return _host_of(match["authority"], "webhook")


def _host_of(authority: str, field: str) -> str:
    parts = _HOST_PORT.fullmatch(authority)
    if parts is None:
        raise ValidationError(field, f"bad host or port in {authority!r}", "host[:port]")
    if not (parts["v6"] or parts["name"]):
        raise ValidationError(field, "has no host", "a URL such as https://example.com/hook")
    if parts["port"] is not None and not 0 < int(parts["port"]) <= 65535:
        raise ValidationError(field, f"port {parts['port']} is out of range", "1 to 65535")
    if parts["v6"] is not None:
        try:
            return str(ipaddress.IPv6Address(parts["v6"]))
        except ValueError:
            raise ValidationError(field, f"bad IPv6 address {parts['v6']!r}") from None
    host = parts["name"].lower().removesuffix(".")
    if not all(_LABEL.fullmatch(label) for label in host.split(".")) or len(host) > 253:
        raise ValidationError(
            field, f"bad host name {parts['name']!r}", "a DNS name (IDN in its xn-- form) or an IP"
        )
    return host


def parse_hosts(field: str, value: object) -> tuple[str, ...]:
    """A list of allowed hosts (a name, ``*.`` before a domain for its subdomains, or ``*``
    for any host), lower case; a comma-separated string is taken too (the environment form)."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValidationError(field, "must be a list of host names")
    hosts: list[str] = []
    for index, entry in enumerate(value):
        if not isinstance(entry, str) or not entry.strip():
            raise ValidationError(f"{field}[{index}]", "must be a non-empty host name")
        host = entry.strip().lower()
        if host != "*":
            name = host.removeprefix("*.")
            probe = f"[{name}]" if ":" in name else name
            try:
                host = host[: len(host) - len(name)] + _host_of(probe, f"{field}[{index}]")
            except ValidationError as exc:
                raise ValidationError(
                    exc.field, exc.problem, "a host name, *.domain for its subdomains, or *"
                ) from None
        hosts.append(host)
    return tuple(hosts)


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """True when ``host`` is listed, falls under a ``*.domain`` entry, or ``*`` is listed."""
    for entry in allowed:
        if entry in ("*", host):
            return True
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
    return False


def check_secret(field: str, secret: object, needed: bool) -> str:
    """A signing secret: a string, at least :data:`MIN_SECRET` characters when ``needed``
    (some host is allowed) or given at all."""
    if not isinstance(secret, str):
        raise ValidationError(field, "must be a string")
    if (needed or secret) and len(secret) < MIN_SECRET:
        raise ValidationError(
            field,
            f"must be at least {MIN_SECRET} characters"
            + (" when webhook hosts are allowed" if needed and not secret else ""),
            "a random string, e.g. from: python -c 'import secrets; print(secrets.token_hex(32))'",
        )
    return secret


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: ``v1=`` and the hex HMAC-SHA256 of
    ``"{timestamp}.".encode() + body`` under ``secret`` (Stripe's signed payload)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_SCHEME}={digest.hexdigest()}"
