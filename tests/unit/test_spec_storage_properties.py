"""Every spec that validation accepts can be stored and read back unchanged (hypothesis).

Validation and the store's encoding must agree: a spec that passes ``JobSpec`` but
cannot be written would fail at the store instead of naming its field, and a value the
store writes differently from how it reads it would change the job behind the caller's
back. Options, format and text are drawn from everything Python's JSON parser accepts
and more (NaN, huge integers, lone surrogates, bytes); so are tools, thinking, messages'
tool calls and generate's own fields. What a job produced (its answer's output and the
metrics of each call) comes back from the file as it was committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from actors.runtime import ManualClock
from actors.stores import JobDB
from protocol import (
    Job,
    JobMetrics,
    JobSpec,
    JobState,
    Logprob,
    Output,
    TokenLogprob,
    ToolCall,
    ValidationError,
)
from protocol.messages import InsertJob, Transition

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


# --- the fields #14 added: tools, thinking, tool calls, generate's own fields ----------

json_objects = st.dictionaries(any_text, json_like, max_size=3)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {"function": st.fixed_dictionaries(
            {"name": any_text, "arguments": st.one_of(json_objects, json_like)},
            optional={"index": st.integers(min_value=-1, max_value=3)},
        )},
        optional={"id": st.one_of(st.none(), any_text), "type": st.just("function")},
    ),
    max_size=2,
)  # fmt: skip
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": any_text},
        optional={
            "thinking": any_text,
            "tool_calls": tool_calls,
            "tool_name": st.one_of(st.none(), any_text),
            "tool_call_id": st.one_of(st.none(), any_text),
            "images": st.lists(any_text, max_size=2),
        },
    ),
    min_size=1,
    max_size=3,
)
tools = st.lists(
    st.fixed_dictionaries(
        {"type": st.just("function"), "function": st.fixed_dictionaries(
            {"name": any_text},
            optional={"description": any_text, "parameters": st.one_of(json_objects, json_like)},
        )},
    ),
    max_size=3,
)  # fmt: skip
thinking = st.one_of(st.none(), st.booleans(), st.sampled_from(["low", "medium", "high", "max"]))
top_logprobs = st.integers(min_value=-1, max_value=21)


def refused_or_stored(db: JobDB, build: Callable[[], JobSpec]) -> None:
    """Build a spec; a refusal must name its field, an accepted spec must come back equal."""
    try:
        spec = build()
    except ValidationError as refused:
        assert refused.field, "a refusal names its field"
        event(f"refused at {refused.field.split('[')[0].split('.')[0]}")
        return
    event("accepted")
    again = store_and_read(db, spec)
    assert again == spec
    assert again.to_dict() == spec.to_dict()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    messages=messages,
    tools=tools,
    think=st.one_of(thinking, any_text),
    logprobs=st.booleans(),
    top_logprobs=top_logprobs,
)
def test_an_accepted_chat_spec_with_tools_and_thinking_is_stored_and_read_back_unchanged(
    db: JobDB,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    think: bool | str | None,
    logprobs: bool,
    top_logprobs: int,
) -> None:
    refused_or_stored(
        db,
        lambda: JobSpec.chat(
            model="qwen3",
            messages=messages,
            tools=tools,
            think=think,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        ),
    )


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompt=any_text,
    fields=st.fixed_dictionaries(
        {},
        optional={
            "images": st.lists(any_text, max_size=2),
            "raw": st.booleans(),
            "suffix": st.one_of(st.none(), any_text),
            "template": st.one_of(st.none(), any_text),
            "system": st.one_of(st.none(), any_text),
            "context": st.lists(st.integers(min_value=-(2**64), max_value=2**64), max_size=4),
            "think": thinking,
            "logprobs": st.booleans(),
            "top_logprobs": top_logprobs,
        },
    ),
)
def test_an_accepted_generate_spec_with_its_own_fields_is_stored_and_read_back_unchanged(
    db: JobDB, prompt: str, fields: dict[str, Any]
) -> None:
    refused_or_stored(db, lambda: JobSpec.generate(model="codellama", prompt=prompt, **fields))


# --- what a job produced comes back as stored ------------------------------------------

valid_text = st.text(st.characters(codec="utf-8"), max_size=12)
valid_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        valid_text,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(valid_text, inner, max_size=3)
    ),
    max_leaves=8,
)
outputs = st.builds(
    Output,
    thinking=valid_text,
    tool_calls=st.lists(
        st.builds(
            ToolCall,
            name=valid_text.filter(str.strip),
            arguments=st.dictionaries(valid_text, valid_json, max_size=3),
            id=st.one_of(st.none(), valid_text.filter(str.strip)),
            index=st.one_of(st.none(), st.integers(min_value=0, max_value=9)),
        ),
        max_size=2,
    ).map(tuple),
    logprobs=st.lists(
        st.builds(
            Logprob,
            token=valid_text,
            logprob=st.floats(max_value=0.0, allow_nan=False, allow_infinity=False),
            bytes=st.lists(st.integers(0, 255), max_size=3).map(tuple),
            top_logprobs=st.lists(
                st.builds(
                    TokenLogprob,
                    token=valid_text,
                    logprob=st.floats(max_value=0.0, allow_nan=False, allow_infinity=False),
                ),
                max_size=2,
            ).map(tuple),
        ),
        max_size=2,
    ).map(tuple),
    done_reason=st.one_of(st.none(), valid_text),
    context=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3).map(tuple),
)
segments = st.lists(
    st.builds(JobMetrics, *[st.integers(min_value=0, max_value=2**53)] * 6), max_size=3
).map(tuple)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(output=outputs, segments=segments, text=valid_text)
def test_an_answer_and_its_segments_are_stored_and_read_back_unchanged(
    db: JobDB, output: Output, segments: tuple[JobMetrics, ...], text: str
) -> None:
    taken = iter([InsertJob(JobSpec.chat(model="m", messages=[{"role": "user", "content": "hi"}]))])
    (job,) = db.write_batch(lambda: next(taken, None))
    assert isinstance(job, Job)
    moves = iter(
        [
            Transition(job.id, JobState.LOADING),
            Transition(
                job.id,
                JobState.SUCCEEDED,
                result=text,
                output=output,
                segments=segments,
                metrics=JobMetrics.total(segments),
            ),
        ]
    )
    *_, done = db.write_batch(lambda: next(moves, None))
    assert isinstance(done, Job), done
    again = db.get(job.id)  # from the file: a terminal job is no longer kept in memory
    assert (again.result, again.output, again.segments) == (text, output, segments)
    assert again.answer == text and again.answer.tool_calls == output.tool_calls
