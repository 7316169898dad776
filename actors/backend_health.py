"""One backend's health as the ResidencyTracker keeps it: up, or down since T with the
next probe at T' (docs/architecture.md section 13).

Thread-free, like :mod:`actors.scheduling`: the tracker feeds it what slots, polls and
probes report, and acts on what it answers (tell the arbiter, arm the probe timer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["BackendHealth"]


@dataclasses.dataclass
class BackendHealth:
    """Up since ``since``, or down since ``since`` with ``failed_probes`` probes failed."""

    name: str
    since: float
    up: bool = True
    failed_probes: int = 0
    next_probe_at: float | None = None
    last_error: str | None = None
    probes: int = 0  # every probe asked, since start
    changes: int = 0  # every move between up and down, since start
    down_s_before: float = 0.0  # time down in outages that have ended

    def went_down(self, error: str, now: float) -> bool:
        """A failure that belongs to the backend; True if it was up until now."""
        self.last_error = error
        if not self.up:
            return False
        self.up, self.since, self.failed_probes = False, now, 0
        self.changes += 1
        return True

    def is_stale(self, started_at: float) -> bool:
        """True if a failure of a call begun at ``started_at`` predates the backend's last
        return: that call met the old outage, which says nothing about the backend now."""
        return self.up and self.changes > 0 and started_at < self.since

    def probing(self, due: float) -> None:
        """A probe is armed for ``due``."""
        self.next_probe_at = due

    def probe_failed(self, error: str) -> None:
        """A probe found the backend still unreachable."""
        self.probes += 1
        self.failed_probes += 1
        self.next_probe_at = None
        self.last_error = error

    def came_up(self, now: float) -> float | None:
        """A probe (or any answer) reached the backend; the outage's length, if it was down."""
        if self.up:
            return None
        self.probes += 1
        down_for = max(0.0, now - self.since)
        self.down_s_before += down_for
        self.up, self.since, self.failed_probes, self.next_probe_at = True, now, 0, None
        self.changes += 1
        return down_for

    def down_s_total(self, now: float) -> float:
        """Time spent down since start, the current outage included."""
        return self.down_s_before + (0.0 if self.up else max(0.0, now - self.since))

    def snapshot(self, now: float) -> Mapping[str, Any]:
        """The health as /status, top and /metrics show it."""
        return MappingProxyType(
            {
                "state": "up" if self.up else "down",
                "since": None if self.up else self.since,
                "down_s_total": self.down_s_total(now),
                "next_probe_at": self.next_probe_at,
                "probes": self.probes,
                "last_error": self.last_error,
                "changes": self.changes,
            }
        )
