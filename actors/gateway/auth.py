"""API keys → caller identities (docs/architecture.md section 10).

The caller a job is charged to always comes from the key, never from the request
body, so rate limits and job visibility key on an identity a client cannot forge.
Keys are looked up by their SHA-256 digest: the raw keys are not kept in the table.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

from actors.config import ApiKey
from actors.gateway.errors import GatewayError
from protocol import Lane

__all__ = ["OPEN_CALLER", "Caller", "KeyRing"]


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling and what they may do."""

    name: str
    allow_internal: bool = False
    admin: bool = False
    allow_cloud: bool = False

    @property
    def default_lane(self) -> Lane:
        """The lane a request lands in when it does not ask: internal for internal keys."""
        return Lane.INTERNAL if self.allow_internal else Lane.EXTERNAL

    def check_lane(self, lane: Lane) -> Lane:
        """``lane`` if this caller may use it; 403 naming the field otherwise."""
        if lane is Lane.INTERNAL and not self.allow_internal:
            raise GatewayError(
                403,
                "this API key may not submit internal work",
                field="lane",
                allowed=[Lane.EXTERNAL.value],
                reason="forbidden",
            )
        return lane

    def cloud_for(self, asked: bool | None, field: str) -> bool:
        """Whether a job may go to the cloud: as ``asked`` (the request's ``field``), or the
        key's ``allow_cloud`` when it did not ask; 403 naming ``field`` when it asks for the
        cloud and the key may not use it."""
        if asked and not self.allow_cloud:
            raise GatewayError(
                403, "this API key may not send work to the cloud", field=field,
                allowed="a key with allow_cloud = true", reason="forbidden",
            )  # fmt: skip
        return self.allow_cloud if asked is None else asked

    def require_admin(self) -> None:
        """403 unless this caller may administer the queue."""
        if not self.admin:
            raise GatewayError(
                403, "this API key may not administer the queue", field="authorization",
                reason="forbidden",
            )  # fmt: skip

    def may_see(self, job_caller: str) -> bool:
        """Admins see every job; everyone else sees their own."""
        return self.admin or job_caller == self.name


OPEN_CALLER = Caller("local", allow_internal=False, admin=True)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Resolves an ``Authorization`` header to a Caller; open (no keys) means OPEN_CALLER."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_digest = {
            _digest(k.key): Caller(k.caller, k.allow_internal, k.admin, k.allow_cloud) for k in keys
        }

    @property
    def open(self) -> bool:
        """True when no keys are configured (loopback only; see GatewaySettings)."""
        return not self._by_digest

    def identify(self, authorization: str | None) -> Caller:
        """The caller for ``Authorization: Bearer <key>``; 401 when missing or unknown."""
        if self.open:
            return OPEN_CALLER
        if not authorization:
            raise _unauthorized("missing; send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthorized("must be 'Bearer <key>'")
        caller = self._by_digest.get(_digest(key.strip()))
        if caller is None:
            raise _unauthorized("unknown API key")
        return caller


def _unauthorized(problem: str) -> GatewayError:
    return GatewayError(
        401, problem, field="authorization", reason="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="gpulane"'},
    )  # fmt: skip
