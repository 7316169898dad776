"""How actors address each other: anything with ``tell`` and ``ask``.

A pykka ActorRef fits, and so does a supervisor's stable reference, which always
reaches the current instance of a child across restarts.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

__all__ = ["ActorAddress", "Forward"]


class ActorAddress(Protocol):
    """Where messages go. ``ask`` blocks for the reply and re-raises the handler's error."""

    def tell(self, message: Any) -> None:
        """Deliver without waiting."""
        ...

    def ask(self, message: Any, *, timeout: float | None = None) -> Any:
        """Deliver and wait for the reply."""
        ...


class Forward:
    """An address whose target is set after creation, so actors that refer to each other
    in a cycle (the arbiter and its slots) can be wired before all of them exist.
    Messages told before the target is set are held and delivered, in order, once it is."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._target: ActorAddress | None = None
        self._held: list[Any] = []

    def point_at(self, target: ActorAddress) -> None:
        """Send everything to ``target`` from now on, starting with what was held."""
        with self._lock:
            held, self._held = self._held, []
            for message in held:
                target.tell(message)
            self._target = target

    def tell(self, message: Any) -> None:
        """Deliver without waiting (held until a target is set)."""
        with self._lock:
            target = self._target
            if target is None:
                self._held.append(message)
                return
        target.tell(message)

    def ask(self, message: Any, *, timeout: float | None = None) -> Any:
        """Deliver and wait for the reply."""
        target = self._target
        if target is None:
            raise RuntimeError(f"{self.name} is not started yet")
        return target.ask(message, timeout=timeout)
