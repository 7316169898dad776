"""gpulane's behaviour: the actors, the GpuLane facade and its configuration.

>>> from actors import GpuLane, Config
"""

from actors.config import BackendSettings, Config
from actors.runtime import Clock, ManualClock, SystemClock
from actors.system import GpuLane
from actors.ticket import Ticket
from actors.tree import GpuFactory, SlotWiring

__all__ = [
    "BackendSettings",
    "Clock",
    "Config",
    "GpuFactory",
    "GpuLane",
    "ManualClock",
    "SlotWiring",
    "SystemClock",
    "Ticket",
]
