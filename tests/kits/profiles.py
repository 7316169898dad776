"""The simulated model profiles the tests share, defined once.

Each names how a simulated model behaves (docs/backends.md, "The simulated Ollama
server"); a test module that needs a one-off profile keeps it beside its tests.
"""

from __future__ import annotations

from actors.backends.simulated import ModelProfile

__all__ = ["EMBEDDER", "ENDLESS", "TINY"]

# A small chat model that answers in a few milliseconds (about 20 tokens, at most 300).
TINY = ModelProfile(
    load_seconds=0.01,
    first_token_seconds=0.001,
    tokens_per_second=5000.0,
    mean_answer_tokens=20,
    max_answer_tokens=300,
    size_bytes=1_000_000,
    embedding_dimensions=16,
    context_length=2048,
)
# Practically never ends on its own: runs until num_predict or until its client leaves.
ENDLESS = ModelProfile(
    load_seconds=0.0, first_token_seconds=0.0, tokens_per_second=200.0,
    mean_answer_tokens=1_000_000, max_answer_tokens=100_000,
)  # fmt: skip
# An embedding-only model (its /api/show family is a BERT's, as nomic-embed-text's is).
EMBEDDER = ModelProfile(
    load_seconds=0.005, first_token_seconds=0.0, size_bytes=500_000,
    embedding_dimensions=8, embedding_only=True, family="nomic-bert",
)  # fmt: skip
