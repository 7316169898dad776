"""How actors address each other: anything with ``tell`` and ``ask``.

A pykka ActorRef fits, and so does a supervisor's stable reference (what gpulane's
tree uses), which always reaches the current instance of a child across restarts.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["ActorAddress"]


class ActorAddress(Protocol):
    """Where messages go. ``ask`` blocks for the reply and re-raises the handler's error."""

    def tell(self, message: Any) -> None:
        """Deliver without waiting."""
        ...

    def ask(self, message: Any, *, timeout: float | None = None) -> Any:
        """Deliver and wait for the reply."""
        ...
