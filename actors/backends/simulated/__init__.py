"""A simulated Ollama server: a real HTTP server on loopback that speaks the Ollama API.

gpulane's demo, tests and benchmarks run on it, so the whole HTTP path is exercised
(docs/architecture.md section 9). It keeps Ollama's field names, nanosecond durations,
``done_reason``, sticky ``keep_alive`` and residency rules (one model loaded unless
configured otherwise, one generation at a time per model), simulates load time, time to
first token and tokens per second on an injectable Clock, writes deterministic text that
can be resumed, answers tools, thinking, ``format`` and images as Ollama does, keeps a
model catalog that pull, push, create, copy and delete change, and takes injected faults.
Stats let tests see what the server saw, e.g. a client going away. docs/backends.md
("The simulated Ollama server") says what it does and which Ollama source it follows.

The modules behind this one are private; this ``__all__`` is the API:

- ``_catalog``: ModelProfile, the default models, the installed models (Catalog);
- ``_faults``: FaultKind and Fault;
- ``_residency``: the runners, keep_alive expiry and load time, and ServerStats;
- ``_wire``: the Ollama wire format (request fields, errors, answer pieces);
- ``_handler``, ``_routes``, ``_generation``, ``_models``: the HTTP routes (dispatch,
  what they share, chat/generate/embed, the catalog and its management);
- ``_text``, ``_schema``, ``_tools``: the deterministic text and embeddings, JSON that
  satisfies a schema, and the rule for tool calls;
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
