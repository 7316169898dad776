"""Every spec that validation accepts can be stored and read back unchanged (hypothesis).

Validation and the store's encoding must agree: a spec that passes ``JobSpec`` but
cannot be written would fail at the store instead of naming its field, and a value the
store writes differently from how it reads it would change the job behind the caller's
back. Options, format and text are drawn from everything Python's JSON parser accepts
and more (NaN, huge integers, lone surrogates, bytes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from actors.runtime import ManualClock
from actors.stores import JobDB
from protocol import Job, JobSpec, ValidationError
from protocol.messages import InsertJob

any_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
    st.binary(max_size=4),
)
json_like = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(any_text, inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobDB]:
    path: Path = tmp_path_factory.mktemp("spec-storage") / "jobs.sqlite3"
    opened = JobDB.open(str(path), ManualClock(), synchronous="NORMAL")
    yield opened
    opened.close()


def store_and_read(db: JobDB, spec: JobSpec) -> JobSpec:
    """Insert ``spec`` as a job and read the job back from the file."""
    taken = iter([InsertJob(spec)])
    (outcome,) = db.write_batch(lambda: next(taken, None))
    assert isinstance(outcome, Job), f"an accepted spec was refused by the store: {outcome}"
    return db.get(outcome.id).spec


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(options=st.dictionaries(any_text, json_like, max_size=4), content=any_text, caller=any_text)
def test_an_accepted_chat_spec_is_stored_and_read_back_unchanged(
    db: JobDB, options: dict[str, Any], content: str, caller: str
) -> None:
    try:
        spec = JobSpec.chat(
            model="llama3.2",
            messages=[{"role": "user", "content": content}],
            options=options,
            caller=caller or "anonymous",
        )
    except ValidationError as refused:
        assert refused.field, "a refusal names its field"
        event("refused")
        return
    event("accepted")
    again = store_and_read(db, spec)
    assert again == spec
    assert again.to_dict() == spec.to_dict()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(schema=st.dictionaries(any_text, json_like, min_size=1, max_size=4), prompt=any_text)
def test_an_accepted_generate_spec_with_a_format_schema_is_stored_and_read_back_unchanged(
    db: JobDB, schema: dict[str, Any], prompt: str
) -> None:
    try:
        spec = JobSpec.generate(model="llama3.2", prompt=prompt, format=schema)
    except ValidationError as refused:
        assert refused.field, "a refusal names its field"
        event("refused")
        return
    event("accepted")
    assert store_and_read(db, spec) == spec
