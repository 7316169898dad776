"""How actors address each other: anything with ``tell`` and ``ask``.

A pykka ActorRef fits, and so does a supervisor's stable reference (what gpulane's
tree uses), which always reaches the current instance of a child across restarts.
"""

from __future__ import annotations

from typing import Any, Protocol

import pykka

from actors.runtime._stable_refs import StableRef
from actors.runtime._vocabulary import ChildRestartingError, ChildState

__all__ = ["ActorAddress", "ask_while_up"]

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
