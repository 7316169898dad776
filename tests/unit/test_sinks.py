"""Sinks: where a job's chunks and outcome reach the callers waiting on it."""

from __future__ import annotations

from actors.sinks import Sink, SinkEvent, SinkRegistry
from protocol import Chunk, Job, JobSpec, JobState, ToolCall


def make_job(job_id: str) -> Job:
    """A succeeded chat job with ``job_id``."""
    spec = JobSpec.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    return Job(
        id=job_id, seq=1, spec=spec, state=JobState.SUCCEEDED, created_at=1.0, updated_at=2.0
    )


def test_a_sink_listener_for_the_outcome_only_hears_the_end_and_not_each_chunk() -> None:
    sink = Sink("job-1")
    everything: list[SinkEvent] = []
    outcome: list[SinkEvent] = []
    sink.chunk("early ")
    sink.subscribe(everything.append)
    sink.subscribe(outcome.append, chunks=False)
    sink.chunk("late")
    ended = make_job("job-1")
    sink.end(ended)
    assert everything == [("chunk", "early "), ("chunk", "late"), ("end", ended)]
    assert outcome == [("end", ended)]


def test_an_outcome_listener_that_subscribes_after_the_end_hears_it_at_once() -> None:
    sink = Sink("job-2")
    sink.chunk("text")
    ended = make_job("job-2")
    sink.end(ended)
    outcome: list[SinkEvent] = []
    sink.subscribe(outcome.append, chunks=False)
    assert outcome == [("end", ended)]


def test_an_unsubscribed_outcome_listener_hears_nothing_more() -> None:
    sink = Sink("job-3")
    outcome: list[SinkEvent] = []
    sink.subscribe(outcome.append, chunks=False)
    sink.unsubscribe(outcome.append)
    sink.end(make_job("job-3"))
    assert outcome == []


def test_chunks_carry_thinking_and_tool_calls_to_their_listeners() -> None:
    sink = Sink("job-4")
    heard: list[SinkEvent] = []
    sink.subscribe(heard.append)
    call = ToolCall("get_weather", {"city": "Paris"})
    sink.chunk(Chunk(thinking="Paris, then."))
    sink.chunk(Chunk(tool_calls=(call,)))
    (first, second) = [value for _, value in heard]
    assert isinstance(first, Chunk) and first.thinking == "Paris, then."
    assert isinstance(second, Chunk) and second.tool_calls == (call,)


def test_a_registry_wraps_a_plain_text_piece_as_a_chunk() -> None:
    registry = SinkRegistry()
    sink = registry.register("job-5")
    heard: list[SinkEvent] = []
    sink.subscribe(heard.append)
    registry.chunk("job-5", "plain")
    assert heard == [("chunk", Chunk("plain"))] and isinstance(heard[0][1], Chunk)


def test_a_held_and_rewound_sink_gives_a_late_listener_only_the_new_start() -> None:
    sink = Sink("job-6")
    outcome: list[SinkEvent] = []
    sink.subscribe(outcome.append, chunks=False)  # waiting for the end is not watching
    sink.chunk(Chunk(thinking="first try"))
    assert not sink.watched and sink.hold()
    sink.chunk(Chunk(thinking=" (still the first try)"))  # the cut-off call's last piece
    late: list[SinkEvent] = []
    sink.subscribe(late.append)  # joins while held: hears none of the first try
    assert late == [] and sink.watched
    sink.rewind()
    sink.chunk(Chunk(thinking="second try"))
    assert late == [("chunk", Chunk(thinking="second try"))]
    assert [value.thinking for _, value in late] == ["second try"]
    assert outcome == []


def test_a_sink_that_was_streamed_cannot_be_held() -> None:
    sink = Sink("job-7")
    seen: list[SinkEvent] = []
    sink.subscribe(seen.append)
    sink.chunk(Chunk(thinking="seen"))
    assert sink.watched and not sink.hold()
    sink.chunk(Chunk("more"))
    assert [value for _, value in seen] == ["", "more"]


def test_a_released_hold_gives_a_late_listener_what_it_missed_once() -> None:
    sink = Sink("job-8")
    sink.chunk(Chunk(thinking="a"))
    assert sink.hold()
    late: list[SinkEvent] = []
    sink.subscribe(late.append)
    sink.chunk(Chunk("b"))
    sink.release()
    sink.chunk(Chunk("c"))
    assert [(v.text, v.thinking) for _, v in late] == [("", "a"), ("b", ""), ("c", "")]  # type: ignore[attr-defined]


def test_a_registry_without_a_sink_for_the_job_holds_it_at_once() -> None:
    registry = SinkRegistry()
    assert registry.hold("nobody-waits")
    registry.rewind("nobody-waits")
    registry.release("nobody-waits")
