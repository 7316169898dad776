"""A model server's text is made valid Unicode before the store, callers or gateway see it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from actors import GpuLane
from actors.backends.text import TextMender, mend_text
from actors.testing import FakeGpu
from protocol import JobSpec, JobState

GRIN = "\U0001f600"
HIGH, LOW = "\ud83d", "\ude00"  # GRIN's two UTF-16 halves, as a JSON escape pair decodes


def test_valid_text_passes_through_unchanged() -> None:
    assert mend_text("plain") == "plain"
    assert mend_text(f"emoji {GRIN} and é") == f"emoji {GRIN} and é"


def test_a_surrogate_pair_in_one_string_becomes_its_character() -> None:
    assert mend_text(f"a {HIGH}{LOW} b") == f"a {GRIN} b"


def test_a_lone_surrogate_becomes_the_replacement_character() -> None:
    assert mend_text(f"x{HIGH}y{LOW}") == "x\ufffdy\ufffd"


def test_a_pair_split_across_pieces_is_joined() -> None:
    mender = TextMender()
    assert mender.feed(f"smile {HIGH}") == "smile "
    assert mender.feed(f"{LOW}!") == f"{GRIN}!"
    assert mender.flush() == ""


def test_a_half_that_never_meets_its_partner_is_replaced_at_the_end() -> None:
    mender = TextMender()
    assert mender.feed(f"cut {HIGH}") == "cut "
    assert mender.flush() == "\ufffd"


pieces = st.lists(
    st.text(st.sampled_from(["a", "é", GRIN, HIGH, LOW, "\udbff", "\udc00"]), max_size=5),
    max_size=8,
)


@given(pieces)
def test_mended_pieces_join_to_the_mended_whole_and_are_valid_utf8(parts: list[str]) -> None:
    mender = TextMender()
    out = [mender.feed(p) for p in parts] + [mender.flush()]
    joined = "".join(out)
    assert joined == mend_text("".join(parts))
    joined.encode("utf-8")  # raises if any surrogate is left


def spec() -> JobSpec:
    return JobSpec.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])


def test_an_answer_whose_emoji_arrives_split_is_stored_and_delivered_whole(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    ticket = lane.submit(spec())
    call = fake_gpu.next_call()
    call.emit(f"smile {HIGH}", f"{LOW} done")
    call.finish()
    assert ticket.result(timeout=5) == f"smile {GRIN} done"
    job = lane.get(ticket.job_id)
    assert job.state is JobState.SUCCEEDED and job.result == f"smile {GRIN} done"


def test_a_stream_cut_after_half_an_emoji_ends_with_the_replacement_character(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    ticket = lane.submit(spec())
    call = fake_gpu.next_call()
    call.emit(f"cut {HIGH}")
    call.finish()
    assert list(ticket.chunks(timeout=5)) == ["cut ", "\ufffd"]
    assert lane.get(ticket.job_id).result == "cut \ufffd"


def test_a_failure_message_with_a_lone_surrogate_fails_the_job_clearly(
    lane: GpuLane, fake_gpu: FakeGpu
) -> None:
    ticket = lane.submit(spec().replace(max_attempts=1))
    fake_gpu.next_call().fail(f"server said {HIGH}", transient=False)
    job = ticket.job(timeout=5)
    assert job.state is JobState.FAILED and job.error == "server said \ufffd"
