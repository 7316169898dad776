"""The swap tally, thread-free: swaps and their load time, busy time, the overhead ratio,
swaps per hour over a window, and the per-model load histograms (Prometheus-style
cumulative buckets, the +Inf bucket being the count)."""

from __future__ import annotations

import math

import pytest

from actors.swap_tally import LOAD_BUCKETS, SwapTally

T0 = 1_767_610_800.0


def test_a_new_tally_has_no_swaps_and_no_overhead_ratio_until_a_slot_was_busy() -> None:
    figures = SwapTally().snapshot(T0)
    assert figures["swaps"] == 0 and figures["loading_s"] == 0.0 and figures["busy_s"] == 0.0
    assert figures["overhead_ratio"] is None and figures["swaps_per_hour"] == 0.0
    assert dict(figures["by_model"]) == {}


def test_the_overhead_ratio_is_the_time_loading_over_the_time_busy() -> None:
    tally = SwapTally()
    tally.swapped("llama3.2", 6.0, T0)
    tally.swapped("qwen2.5:7b", 9.0, T0 + 20)
    tally.busy(20.0)
    tally.busy(40.0)
    figures = tally.snapshot(T0 + 60)
    assert figures["swaps"] == 2 and figures["loading_s"] == 15.0 and figures["busy_s"] == 60.0
    assert figures["overhead_ratio"] == 0.25


def test_a_swap_whose_load_time_is_unknown_counts_as_a_swap_with_no_load_time() -> None:
    tally = SwapTally()
    tally.swapped("llama3.2", 0.0, T0)
    tally.busy(3.0)
    figures = tally.snapshot(T0)
    assert figures["swaps"] == 1 and figures["overhead_ratio"] == 0.0
    assert figures["by_model"]["llama3.2"]["count"] == 1


def test_swaps_per_hour_counts_the_last_window_only_and_scales_it_to_an_hour() -> None:
    tally = SwapTally(window_s=600.0)
    for minute in (0, 2, 4, 9):
        tally.swapped("m", 1.0, T0 + minute * 60)
    assert tally.snapshot(T0 + 9 * 60)["swaps_per_hour"] == 4 * 6
    # ten minutes after the one at minute 2, it is out of the window; minute 4's is not
    assert tally.snapshot(T0 + 12 * 60)["swaps_per_hour"] == 2 * 6
    later = tally.snapshot(T0 + 3600)
    assert later["swaps_per_hour"] == 0.0 and later["swaps"] == 4


def test_the_tally_keeps_only_the_swap_times_within_the_window() -> None:
    tally = SwapTally(window_s=60.0)
    for second in range(0, 10_000, 5):
        tally.swapped("m", 0.5, T0 + second)
    assert len(tally._recent) <= 13  # one window of swaps, every five seconds
    figures = tally.snapshot(T0 + 10_000)
    assert figures["swaps"] == 2000 and figures["by_model"]["m"]["count"] == 2000


def test_a_swap_timed_before_the_last_one_still_counts_in_the_window() -> None:
    tally = SwapTally(window_s=3600.0)
    tally.swapped("a", 1.0, T0 + 100)
    tally.swapped("b", 1.0, T0 + 50)  # the wall clock stepped back
    assert tally.snapshot(T0 + 100)["swaps_per_hour"] == 2.0
    assert tally.snapshot(T0 + 3650)["swaps_per_hour"] == 1.0


def test_each_model_gets_cumulative_load_buckets_on_the_exported_bounds() -> None:
    tally = SwapTally()
    for load_s in (0.004, 0.3, 1.0, 7.0, 900.0):
        tally.swapped("llama3.2|num_ctx=8192", load_s, T0)
    tally.swapped("qwen2.5:7b", 2.0, T0)
    by_model = tally.snapshot(T0)["by_model"]
    assert list(by_model) == ["llama3.2|num_ctx=8192", "qwen2.5:7b"]
    llama = by_model["llama3.2|num_ctx=8192"]
    assert llama["count"] == 5 and llama["sum_s"] == pytest.approx(908.304)
    buckets = dict(llama["buckets"])
    assert tuple(buckets) == tuple(float(b) for b in LOAD_BUCKETS)
    assert buckets[0.005] == 1 and buckets[0.25] == 1 and buckets[0.5] == 2
    assert buckets[1.0] == 3  # a bound counts the loads equal to it (le)
    assert buckets[10.0] == 4 and buckets[600.0] == 4  # 900 s is only in +Inf: the count
    counts = [n for _, n in llama["buckets"]]
    assert counts == sorted(counts)
    assert dict(by_model["qwen2.5:7b"]["buckets"])[2.5] == 1


def test_the_snapshot_is_read_only_and_does_not_move_with_later_swaps() -> None:
    tally = SwapTally()
    tally.swapped("m", 1.0, T0)
    figures = tally.snapshot(T0)
    tally.swapped("m", 1.0, T0 + 1)
    assert figures["swaps"] == 1 and figures["by_model"]["m"]["count"] == 1
    with pytest.raises(TypeError):
        figures["swaps"] = 5  # type: ignore[index]
    with pytest.raises(TypeError):
        figures["by_model"]["m"]["count"] = 5  # type: ignore[index]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_a_negative_or_non_finite_time_is_refused_by_name(bad: float) -> None:
    tally = SwapTally()
    with pytest.raises(ValueError, match="load_s must be a finite number of seconds"):
        tally.swapped("m", bad, T0)
    with pytest.raises(ValueError, match="seconds must be a finite number of seconds"):
        tally.busy(bad)
    assert tally.snapshot(T0)["swaps"] == 0


@pytest.mark.parametrize("bad", [0.0, -60.0, math.inf])
def test_a_window_that_is_not_a_positive_span_is_refused_by_name(bad: float) -> None:
    with pytest.raises(ValueError, match="window_s must be a finite number of seconds above 0"):
        SwapTally(window_s=bad)
