"""The RateLimiter's decisions without threads: buckets, caps, rejections, limits config."""

from __future__ import annotations

import pytest

from actors.config import Config
from actors.token_bucket import Admissions, TokenBucket
from protocol import Lane, Limits, QueueFullError, RateLimitedError, ValidationError

T0 = 1_767_610_800.0


def test_a_full_bucket_admits_its_burst_then_refuses_with_the_wait_for_one_token() -> None:
    bucket = TokenBucket.full(per_minute=60, burst=3, now=T0)
    assert [bucket.take(T0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(T0) == pytest.approx(1.0)
    assert bucket.take(T0 + 0.25) == pytest.approx(0.75)


def test_a_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    bucket = TokenBucket.full(per_minute=30, burst=2, now=T0)
    bucket.take(T0)
    bucket.take(T0)
    assert bucket.take(T0 + 2.0) == 0.0  # 30 a minute: one token every 2 s
    bucket.refill(T0 + 1000)
    assert bucket.tokens == 2.0


def test_a_zero_rate_means_no_limit() -> None:
    bucket = TokenBucket.full(per_minute=0, burst=1, now=T0)
    assert all(bucket.take(T0) == 0.0 for _ in range(1000))


def test_reshaping_a_bucket_keeps_its_fill_within_the_new_capacity() -> None:
    bucket = TokenBucket.full(per_minute=60, burst=10, now=T0)
    for _ in range(4):
        bucket.take(T0)
    bucket.reshape(per_minute=120, burst=3, now=T0)
    assert bucket.tokens == 3.0 and bucket.capacity == 3.0
    bucket.reshape(per_minute=120, burst=20, now=T0)
    assert bucket.tokens == 3.0


def test_a_caller_over_its_request_rate_is_told_the_limit_the_figure_and_when_to_retry() -> None:
    book = Admissions(Limits(requests_per_minute=6, burst=2))
    book.admit("alice", Lane.EXTERNAL, T0)
    book.admit("alice", Lane.EXTERNAL, T0)
    with pytest.raises(RateLimitedError) as caught:
        book.admit("alice", Lane.EXTERNAL, T0 + 1.0)
    err = caught.value
    assert (err.limit, err.current, err.maximum) == ("requests_per_minute", 2, 2)
    assert err.retry_after == pytest.approx(9.0)  # 6 a minute: a token every 10 s
    assert "requests_per_minute exceeded: 2 of 2 used; retry after 9.0s" in str(err)


def test_embeddings_draw_from_their_own_budget() -> None:
    book = Admissions(
        Limits(requests_per_minute=60, burst=1, embeddings_per_minute=60, embeddings_burst=1)
    )
    book.admit("bot", Lane.EXTERNAL, T0)
    assert book.admit("bot", Lane.EXTERNAL, T0, embedding=True) == 0
    with pytest.raises(RateLimitedError) as caught:
        book.admit("bot", Lane.EXTERNAL, T0 + 0.5, embedding=True)
    err = caught.value
    assert (err.limit, err.current, err.maximum) == ("embeddings_per_minute", 1, 1)
    assert err.retry_after == pytest.approx(0.5)


def test_a_caller_with_too_many_queued_jobs_is_told_the_cap_and_a_retry_after() -> None:
    book = Admissions(Limits(requests_per_minute=0, max_queued_per_caller=2, min_retry_after_s=3))
    for n in range(2):
        book.bind(book.admit("alice", Lane.EXTERNAL, T0), f"job{n}")
    with pytest.raises(QueueFullError) as caught:
        book.admit("alice", Lane.EXTERNAL, T0)
    err = caught.value
    assert (err.limit, err.current, err.maximum, err.retry_after) == ("queued_per_caller", 2, 2, 3)
    assert "queued_per_caller is full: 2 of 2 queued; retry after 3.0s" in str(err)
    book.admit("bob", Lane.EXTERNAL, T0)  # another caller has its own cap


def test_a_full_external_lane_is_refused_with_its_depth() -> None:
    book = Admissions(Limits(requests_per_minute=0, max_external_queue=3))
    for caller in "abc":
        book.admit(caller, Lane.EXTERNAL, T0)
    with pytest.raises(QueueFullError) as caught:
        book.admit("d", Lane.EXTERNAL, T0)
    assert (caught.value.limit, caught.value.current, caught.value.maximum) == (
        "external_queue",
        3,
        3,
    )
    book.admit("d", Lane.INTERNAL, T0)  # the internal lane has no depth cap


def test_queue_retry_after_follows_the_run_time_of_finished_jobs() -> None:
    book = Admissions(Limits(requests_per_minute=0, max_queued_per_caller=1, min_retry_after_s=1))
    book.bind(book.admit("a", Lane.EXTERNAL, T0), "j1")
    book.ended("j1", run_s=8.0)
    book.bind(book.admit("a", Lane.EXTERNAL, T0), "j2")
    with pytest.raises(QueueFullError) as caught:
        book.admit("a", Lane.EXTERNAL, T0)
    assert caught.value.retry_after == pytest.approx(8.0)


def test_counts_go_down_when_jobs_end_or_inserts_fail() -> None:
    book = Admissions(Limits(requests_per_minute=0, max_queued_per_caller=1))
    first = book.admit("a", Lane.EXTERNAL, T0)
    book.release(first)  # the insert failed
    book.bind(book.admit("a", Lane.EXTERNAL, T0), "j1")
    assert book.queued("a") == 1
    book.ended("j1", run_s=None)
    assert book.queued("a") == 0
    book.ended("j1", run_s=None)  # told twice: counted once
    assert book.queued("a") == 0
    book.admit("a", Lane.EXTERNAL, T0)


def test_internal_work_is_not_limited_by_default_but_can_be() -> None:
    tight = Limits(requests_per_minute=60, burst=1, max_queued_per_caller=1)
    book = Admissions(tight)
    for _ in range(5):
        book.admit("bot", Lane.INTERNAL, T0)
    book.apply(
        Limits(requests_per_minute=60, burst=1, max_queued_per_caller=5, limit_internal=True), T0
    )
    with pytest.raises(QueueFullError) as caught:
        book.admit("bot", Lane.INTERNAL, T0)
    assert caught.value.current == 5  # the queued internal jobs count once limited


def test_a_queue_refusal_keeps_the_callers_tokens() -> None:
    book = Admissions(Limits(requests_per_minute=60, burst=1, max_external_queue=1))
    book.admit("a", Lane.EXTERNAL, T0)
    with pytest.raises(QueueFullError):
        book.admit("b", Lane.EXTERNAL, T0)
    assert book.snapshot()["rejections"]["external_queue"] == 1


def test_per_caller_overrides_replace_only_the_figures_they_name() -> None:
    limits = Limits(
        requests_per_minute=10, burst=2, max_queued_per_caller=0, callers={"bot": {"burst": 50}}
    )
    assert limits.for_caller("bot").burst == 50
    assert limits.for_caller("bot").requests_per_minute == 10
    assert limits.for_caller("anyone").burst == 2
    book = Admissions(limits)
    for _ in range(50):
        book.admit("bot", Lane.EXTERNAL, T0)
    with pytest.raises(RateLimitedError) as caught:
        book.admit("bot", Lane.EXTERNAL, T0)
    assert caught.value.maximum == 50


def test_the_limits_section_loads_from_toml_with_per_caller_tables() -> None:
    config = Config.from_mapping(
        {
            "limits": {
                "requests_per_minute": 120,
                "max_external_queue": 7,
                "callers": {"alice": {"max_queued_per_caller": 3}},
            },
            "residency": {"chat_model": "llama3.2", "embedding_model": "nomic-embed-text"},
        },
        env={"GPULANE_LIMITS_BURST": "4"},
    )
    assert config.limits.requests_per_minute == 120 and config.limits.burst == 4
    assert config.limits.for_caller("alice").max_queued_per_caller == 3
    assert config.limits.for_caller("alice").burst == 4
    assert config.residency.pinned == ("llama3.2", "nomic-embed-text")


def test_a_bad_limit_names_the_setting() -> None:
    with pytest.raises(ValidationError, match=r"limits\.callers\.alice\.rpm"):
        Config.from_mapping({"limits": {"callers": {"alice": {"rpm": 5}}}}, env={})
    with pytest.raises(ValidationError, match=r"limits\.burst"):
        Config.from_mapping({"limits": {"burst": -1}}, env={})
    with pytest.raises(ValidationError, match=r"limits\.nonsense"):
        Config.from_mapping({"limits": {"nonsense": 1}}, env={})
