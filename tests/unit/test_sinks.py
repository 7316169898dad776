"""Sinks: where a job's chunks and outcome reach the callers waiting on it."""

from __future__ import annotations

from actors.sinks import Sink, SinkEvent
from protocol import Job, JobSpec, JobState


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
