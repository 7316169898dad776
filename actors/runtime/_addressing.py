"""How actors address each other: anything with ``tell`` and ``ask``.

A pykka ActorRef fits, and so does a supervisor's stable reference (what gpulane's
tree uses), which always reaches the current instance of a child across restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import pykka
import structlog

from actors.runtime._stable_refs import StableRef
from actors.runtime._vocabulary import (
    ChildExitedError,
    ChildRestartingError,
    ChildState,
    ChildUnavailableError,
    HoldBufferFullError,
)

__all__ = ["ActorAddress", "ask_through_restarts", "ask_while_up"]

log = structlog.get_logger(__name__)

_RETRYABLE = (ChildRestartingError, HoldBufferFullError, ChildExitedError)

_POLL_S = 0.05


class ActorAddress(Protocol):
    """Where messages go. ``ask`` blocks for the reply and re-raises the handler's error."""

    def tell(self, message: Any) -> None:
        """Deliver without waiting."""
        ...

    def ask(self, message: Any, *, timeout: float | None = None) -> Any:
        """Deliver and wait for the reply."""
        ...


def ask_while_up(address: ActorAddress, message: Any) -> Any:
    """Ask and wait for the reply, but give up if the target restarts meanwhile.

    For an actor asking a sibling that comes before it in a rest_for_one tree: if
    the sibling crashes, the ask is held for its next instance, which the supervisor
    starts only after it has stopped the asker, so waiting would hold up the
    asker's own stop. Raises ChildRestartingError then; the asker restarts anyway.
    """
    if not isinstance(address, StableRef):
        return address.ask(message)
    future = address.ask(message, block=False)
    while True:
        try:
            return future.get(timeout=_POLL_S)
        except pykka.Timeout:
            if address.state is not ChildState.RUNNING:
                raise ChildRestartingError(address.child_id) from None


def ask_through_restarts(
    ref: StableRef,
    message: Any,
    *,
    timeout_s: float,
    check: Callable[[], None],
    retry_exited: bool = True,
) -> Any:
    """Ask a child, waiting through its restarts up to ``timeout_s``.

    A child that is restarting holds the ask (HOLD) or refuses it at once (FAIL_FAST);
    either way it is tried again until the deadline. An instance that died with the ask
    unanswered (ChildExitedError) is retried only with ``retry_exited``: a write that met
    it must be reported as not acknowledged, so a retry can never apply it twice.
    ``check()`` runs after each failure and raises if the caller should stop trying (the
    tree gave up).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ref.ask(message, timeout=max(0.0, deadline - time.monotonic()))
        except (ChildUnavailableError, pykka.Timeout) as error:
            check()
            retry = isinstance(error, _RETRYABLE) and (
                retry_exited or not isinstance(error, ChildExitedError)
            )
            if not retry or time.monotonic() > deadline:
                raise
            log.info("call_retried", child=ref.child_id, error=type(error).__name__)
            time.sleep(0.01)
