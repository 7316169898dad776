"""A simulated Ollama server: a real HTTP server on loopback that speaks the Ollama API.

gpulane's demo, tests and benchmarks run on it, so the whole HTTP path is exercised
(docs/architecture.md section 9). It keeps Ollama's field names, nanosecond durations,
``done_reason``, ``keep_alive`` and residency rules (one model loaded unless configured
otherwise, one generation at a time per model), simulates load time, time to first token
and tokens per second on an injectable Clock, writes deterministic text that can be
resumed, and takes injected faults. Stats let tests see what the server saw, e.g. a
client going away.

The modules behind this one are private; this ``__all__`` is the API:

- ``_catalog``: ModelProfile and the default models;
- ``_faults``: FaultKind and Fault;
- ``_residency``: the runners, keep_alive expiry and load time, and ServerStats;
- ``_wire``, ``_handler``: the Ollama wire format and the HTTP routes;
- ``_text``: the deterministic text (Answer) and embeddings;
- ``_loopback``: the server scaffolding (LoopbackServer, LoopbackHandler, FaultQueue)
  that SimulatedOllama and the tests' fake OpenAI and Anthropic servers share;
- ``_simulator``: SimulatedOllama, which puts them together.
"""

from actors.backends.simulated._catalog import DEFAULT_MODELS, ModelProfile
from actors.backends.simulated._faults import Fault, FaultKind
from actors.backends.simulated._loopback import (
    Aborted,
    ClientGone,
    Cut,
    FaultQueue,
    LoopbackHandler,
    LoopbackServer,
    QueuedFault,
)
from actors.backends.simulated._residency import ServerStats
from actors.backends.simulated._simulator import SimulatedOllama
from actors.backends.simulated._text import (
    ASSISTANT_MARKER,
    Answer,
    embedding,
    render_chat,
)

__all__ = [
    "ASSISTANT_MARKER",
    "DEFAULT_MODELS",
    "Aborted",
    "Answer",
    "ClientGone",
    "Cut",
    "Fault",
    "FaultKind",
    "FaultQueue",
    "LoopbackHandler",
    "LoopbackServer",
    "ModelProfile",
    "QueuedFault",
    "ServerStats",
    "SimulatedOllama",
    "embedding",
    "render_chat",
]
