"""The names a backend's actors go by in the supervision tree (docs/architecture.md section 4).

One backend named ``local`` (the ``[backend]`` section) keeps the short names a
one-GPU lane always had (``gpu0``, ``residency``); each of several ``[[backends]]``
gets its own prefix (``a100.gpu0``, ``residency.a100``), so a child id says where it runs.
"""

from __future__ import annotations

from protocol import LOCAL_BACKEND

__all__ = ["slot_id_for", "tracker_id_for"]


def slot_id_for(backend: str, index: int) -> str:
    """The id of slot ``index`` on ``backend``."""
    return f"gpu{index}" if backend == LOCAL_BACKEND else f"{backend}.gpu{index}"


def tracker_id_for(backend: str) -> str:
    """The id of ``backend``'s ResidencyTracker."""
    return "residency" if backend == LOCAL_BACKEND else f"residency.{backend}"
