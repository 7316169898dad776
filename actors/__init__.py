"""gpulane's behaviour: the actors, the GpuLane facade and its configuration.

>>> from actors import GpuLane, Config
"""

from actors.config import BackendSettings, Config
from actors.runtime import Clock, ManualClock, SystemClock
from actors.system import GpuFactory, GpuLane, SlotWiring
from actors.ticket import Ticket

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
