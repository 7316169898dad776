"""The conformance suite's fixture, and litellm kept off the network.

litellm reads its model cost map, tokenizers and Anthropic beta headers from the internet
when it is imported or first used, unless told not to: ``LITELLM_LOCAL_MODEL_COST_MAP``
makes ``litellm_core_utils/get_model_cost_map.py`` load the copy it ships, and
``LITELLM_OFFLINE_MODE`` (``litellm_core_utils/offline_mode.py``) does the same for every
catalog, check and tokenizer it would fetch on its own (litellm 1.110). litellm logs each
call on a thread pool of its own (``litellm_core_utils/thread_pool_executor.py``, up to
``LOGGING_EXECUTOR_MAX_THREADS`` threads, 100 by default) whose threads live as long as the
process; two are plenty here, and test_litellm_sdk.py starts them before its tests. They
are set here, before any test module imports litellm; the only server it talks to is the
gateway.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_kit import conformance_stack
from gateway_kit import Stack

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_OFFLINE_MODE"] = "true"
os.environ["LOGGING_EXECUTOR_MAX_THREADS"] = "2"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A gateway of its own for each test: the suite's guard fails a test that leaves a
    thread behind, and the gateway starts threads as its load asks (a module-wide gateway
    would leave those of one test to the next)."""
    with conformance_stack(tmp_path) as running:
        yield running
