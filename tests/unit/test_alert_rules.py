"""The alert rules, thread-free: observations with their times in, notices out (no clock)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from actors.alert_rules import AlertNotice, AlertRules, LaneSample
from actors.config import Config
from protocol import Job, JobSpec, JobState, ValidationError
from protocol.config import AlertSettings

T0 = 1_000_000.0


def rules(**settings: Any) -> AlertRules:
    return AlertRules(AlertSettings(**settings))


def states(notices: list[AlertNotice]) -> list[tuple[str, str, str]]:
    return [(n.rule, n.subject, n.state) for n in notices]


def job(preemptions: int, state: JobState = JobState.QUEUED) -> Job:
    spec = JobSpec.chat(model="m", messages=[{"role": "user", "content": "hi"}], caller="bob")
    return Job("01JOB", 1, spec, state, T0, T0, preemptions=preemptions)


def test_an_alert_fires_once_stays_quiet_while_it_holds_clears_and_fires_again() -> None:
    book = rules(queue_depth=10, queue_depth_for_s=60, remind_s=0)
    assert book.sample(LaneSample(T0, queued=11)) == [], "not yet held for 60 s"
    fired = book.sample(LaneSample(T0 + 60, queued=12))
    assert states(fired) == [("queue_depth", "queue", "firing")]
    assert (fired[0].since, fired[0].value, fired[0].threshold) == (T0, 12, 10)
    assert "12 jobs queued, over 10 for 1m" in fired[0].summary
    for minute in range(2, 30):
        assert book.sample(LaneSample(T0 + 60 * minute, queued=50)) == [], "quiet while it holds"
    resolved = book.sample(LaneSample(T0 + 1800, queued=3))
    assert states(resolved) == [("queue_depth", "queue", "resolved")]
    assert resolved[0].summary == "3 jobs queued (limit 10); it lasted 30m"
    assert book.sample(LaneSample(T0 + 1805, queued=3)) == []
    assert book.sample(LaneSample(T0 + 1810, queued=11)) == [], "the hold starts over"
    again = book.sample(LaneSample(T0 + 1870, queued=11))
    assert states(again) == [("queue_depth", "queue", "firing")]
    assert again[0].since == T0 + 1810 and not again[0].reminder


def test_a_dip_under_the_limit_before_the_hold_time_fires_nothing() -> None:
    book = rules(queue_depth=10, queue_depth_for_s=60)
    assert book.sample(LaneSample(T0, queued=20)) == []
    assert book.sample(LaneSample(T0 + 30, queued=5)) == [], "pending only: no resolved notice"
    assert book.sample(LaneSample(T0 + 65, queued=20)) == []
    assert states(book.sample(LaneSample(T0 + 125, queued=20))) == [
        ("queue_depth", "queue", "firing")
    ]


def test_a_lasting_alert_is_announced_again_every_remind_s_and_a_past_event_is_not() -> None:
    book = rules(queue_depth=1, queue_depth_for_s=0, remind_s=600, child_restarts=1)
    first = book.sample(LaneSample(T0, queued=5, exits={"store": (0, None)}))
    assert states(first) == [("queue_depth", "queue", "firing")]
    crashed = book.sample(LaneSample(T0 + 5, queued=5, exits={"store": (1, "crashed: boom")}))
    assert states(crashed) == [("supervision", "store", "firing")]
    assert book.sample(LaneSample(T0 + 300, queued=5, exits={"store": (1, "crashed")})) == []
    reminded = book.sample(LaneSample(T0 + 600, queued=5, exits={"store": (2, "crashed")}))
    assert [(n.rule, n.reminder) for n in reminded] == [("queue_depth", True)]
    assert reminded[0].since == T0, "a reminder keeps when the condition began"
    assert book.sample(LaneSample(T0 + 900, queued=5)) == []
    assert [n.reminder for n in book.sample(LaneSample(T0 + 1200, queued=5))] == [True]


def test_remind_s_0_never_announces_again() -> None:
    book = rules(queue_depth=1, queue_depth_for_s=0, remind_s=0)
    assert len(book.sample(LaneSample(T0, queued=5))) == 1
    assert all(book.sample(LaneSample(T0 + 3600 * h, queued=5)) == [] for h in range(1, 48))


def test_a_part_that_could_not_be_read_neither_starts_nor_ends_an_alert() -> None:
    book = rules(queue_depth=1, queue_depth_for_s=0)
    assert len(book.sample(LaneSample(T0, queued=5))) == 1
    assert book.sample(LaneSample(T0 + 5)) == [], "the arbiter did not answer: no news"
    assert states(book.sample(LaneSample(T0 + 10, queued=0))) == [
        ("queue_depth", "queue", "resolved")
    ]


def test_swap_overhead_is_loading_time_over_busy_time_in_the_trailing_window() -> None:
    book = rules(swap_overhead_pct=50, swap_overhead_window_s=600)
    assert book.sample(LaneSample(T0, swaps=(0.0, 0.0))) == []
    # 40 s busy (under a tenth of the window): not judged, however much of it loaded.
    assert book.sample(LaneSample(T0 + 60, swaps=(40.0, 40.0))) == []
    fired = book.sample(LaneSample(T0 + 120, swaps=(80.0, 100.0)))
    assert states(fired) == [("swap_overhead", "gpu", "firing")]
    assert fired[0].value == 80.0 and "models loading 80% of busy time" in fired[0].summary
    # Loading stops; busy time grows: the window's ratio falls under 50%.
    assert book.sample(LaneSample(T0 + 300, swaps=(80.0, 150.0))) == []
    resolved = book.sample(LaneSample(T0 + 500, swaps=(80.0, 200.0)))
    assert states(resolved) == [("swap_overhead", "gpu", "resolved")]


def test_swap_overhead_reads_only_the_window_not_the_totals_since_start() -> None:
    book = rules(swap_overhead_pct=50, swap_overhead_window_s=600)
    book.sample(LaneSample(T0, swaps=(900.0, 1000.0)))  # a bad first hour, long ago
    assert book.sample(LaneSample(T0 + 600, swaps=(910.0, 1200.0))) == [], "5% in the window"


def test_a_tracker_restart_resets_the_swap_counters_without_a_false_alert() -> None:
    book = rules(swap_overhead_pct=50, swap_overhead_window_s=600)
    book.sample(LaneSample(T0, swaps=(100.0, 1000.0)))
    assert book.sample(LaneSample(T0 + 5, swaps=(0.0, 70.0))) == [], "counted from zero again"
    assert states(book.sample(LaneSample(T0 + 10, swaps=(80.0, 140.0)))) == [
        ("swap_overhead", "gpu", "firing")
    ], "80 s loading in 140 s busy since the restart"


def test_a_job_preempted_n_times_fires_at_once_and_resolves_when_it_ends() -> None:
    book = rules(job_preemptions=3)
    assert book.job(job(2), T0) == []
    fired = book.job(job(3), T0 + 1)
    assert states(fired) == [("job_preemptions", "01JOB", "firing")]
    assert "job 01JOB (caller bob, model m) preempted 3 times" in fired[0].summary
    assert book.job(job(3, JobState.LOADING), T0 + 2) == [], "quiet on its later commits"
    assert book.job(job(4), T0 + 3) == []
    ended = book.job(job(4, JobState.SUCCEEDED), T0 + 4)
    assert states(ended) == [("job_preemptions", "01JOB", "resolved")]
    assert ended[0].summary.startswith("job 01JOB (caller bob, model m) ended succeeded after 4")


def test_a_job_first_seen_ended_with_n_preemptions_fires_and_resolves_together() -> None:
    notices = rules(job_preemptions=1).job(job(1, JobState.FAILED), T0)
    assert [n.state for n in notices] == ["firing", "resolved"]
    assert rules(job_preemptions=0).job(job(9), T0) == [], "0 turns the rule off"


def test_the_backend_down_rule_counts_from_when_it_went_down() -> None:
    book = rules(backend_down_for_s=30)
    assert book.sample(LaneSample(T0, health={"local": (True, None)})) == []
    assert book.sample(LaneSample(T0 + 20, health={"local": (False, T0 + 10)})) == []
    fired = book.sample(LaneSample(T0 + 40, health={"local": (False, T0 + 10)}))
    assert states(fired) == [("backend_down", "local", "firing")]
    assert fired[0].since == T0 + 10 and fired[0].summary == "backend local down for 30s"
    assert book.sample(LaneSample(T0 + 45, health={"local": (False, T0 + 10)})) == []
    resolved = book.sample(LaneSample(T0 + 70, health={"local": (True, None)}))
    assert states(resolved) == [("backend_down", "local", "resolved")]
    assert resolved[0].summary == "backend local up again; it lasted 1m"
    assert resolved[0].value == 30.0, "the figure that tripped it stays"


def test_a_short_outage_under_the_hold_time_is_not_an_alert() -> None:
    book = rules(backend_down_for_s=30)
    assert book.sample(LaneSample(T0 + 25, health={"local": (False, T0)})) == []
    assert book.sample(LaneSample(T0 + 29, health={"local": (True, None)})) == []
    assert (
        rules(backend_down_for_s=0).sample(LaneSample(T0 + 99, health={"local": (False, T0)})) == []
    )


def test_a_child_exiting_fires_once_per_child_and_resolves_after_a_calm_window() -> None:
    book = rules(child_restarts=1, child_restarts_window_s=600)
    calm = {"store": (0, None), "arbiter": (0, None)}
    assert book.sample(LaneSample(T0, exits=calm)) == []
    crashed = {"store": (1, "crashed: OSError('disk')"), "arbiter": (0, None)}
    fired = book.sample(LaneSample(T0 + 5, exits=crashed))
    assert states(fired) == [("supervision", "store", "firing")]
    assert "child store exited 1 times in the last 10m" in fired[0].summary
    assert "crashed: OSError('disk')" in fired[0].summary
    again = {"store": (2, "crashed: OSError('disk')"), "arbiter": (0, None)}
    assert book.sample(LaneSample(T0 + 300, exits=again)) == [], "still the same alert"
    assert book.sample(LaneSample(T0 + 600, exits=again)) == []
    resolved = book.sample(LaneSample(T0 + 905, exits=again))
    assert states(resolved) == [("supervision", "store", "resolved")]


def test_child_restarts_counts_exits_within_the_window() -> None:
    book = rules(child_restarts=2, child_restarts_window_s=60)
    exits = {10: 1, 80: 2, 100: 3}  # seconds after T0 -> the child's exits so far
    count, fired = 0, []
    for second in range(0, 101, 10):
        count = exits.get(second, count)
        fired += book.sample(LaneSample(T0 + second, exits={"gpu0": (count, "crashed")}))
        if second < 100:
            assert fired == [], f"one exit in any 60 s up to {second} s"
    assert states(fired) == [("supervision", "gpu0", "firing")] and fired[0].value == 2


def test_a_nested_supervisor_restarting_its_counters_keeps_the_exits_in_the_window() -> None:
    book = rules(child_restarts=1, child_restarts_window_s=600)
    book.sample(LaneSample(T0, exits={"gpu0": (0, None)}))
    assert len(book.sample(LaneSample(T0 + 5, exits={"gpu0": (1, "crashed")}))) == 1
    assert book.sample(LaneSample(T0 + 10, exits={"gpu0": (0, None)})) == [], "gpus restarted"
    assert book.sample(LaneSample(T0 + 300, exits={"gpu0": (0, None)})) == []
    assert [n.state for n in book.sample(LaneSample(T0 + 610, exits={"gpu0": (0, None)}))] == [
        "resolved"
    ]


def test_the_tree_giving_up_fires_once_and_never_resolves() -> None:
    book = rules()
    (notice,) = book.gave_up("escalated: gpulane: more than 5 restarts in 10s", T0)
    assert (notice.rule, notice.subject, notice.state) == ("supervision", "gpulane", "firing")
    assert notice.summary == (
        "the supervision tree gave up: escalated: gpulane: more than 5 restarts in 10s"
    )
    assert book.gave_up("again", T0 + 1) == []


def test_one_caller_refused_n_times_in_the_window_fires_for_that_caller_alone() -> None:
    book = rules(caller_rejections=10, caller_rejections_window_s=60)
    assert book.sample(LaneSample(T0, rejections={"old": 99})) == [], "the first is the baseline"
    assert book.sample(LaneSample(T0 + 5, rejections={"bob": 4, "amy": 1})) == []
    fired = book.sample(LaneSample(T0 + 10, rejections={"bob": 12, "amy": 2}))
    assert states(fired) == [("caller_rejections", "bob", "firing")]
    assert fired[0].summary == "caller bob refused 12 times in the last 1m (limit 10)"
    assert book.sample(LaneSample(T0 + 40, rejections={"bob": 30, "amy": 2})) == []
    resolved = book.sample(LaneSample(T0 + 105, rejections={"bob": 31, "amy": 2}))
    assert states(resolved) == [("caller_rejections", "bob", "resolved")]


def test_a_limiter_restart_does_not_end_the_alert_before_its_window() -> None:
    book = rules(caller_rejections=5, caller_rejections_window_s=60)
    book.sample(LaneSample(T0, rejections={}))
    assert len(book.sample(LaneSample(T0 + 5, rejections={"bob": 9}))) == 1
    assert book.sample(LaneSample(T0 + 10, rejections={})) == [], "the limiter restarted"
    assert book.sample(LaneSample(T0 + 30, rejections={"bob": 1})) == []
    assert states(book.sample(LaneSample(T0 + 95, rejections={"bob": 1}))) == [
        ("caller_rejections", "bob", "resolved")
    ]


def test_a_rule_turned_off_by_a_reload_resolves_its_alerts() -> None:
    book = rules(queue_depth=1, queue_depth_for_s=0, caller_rejections=5)
    fired = book.sample(LaneSample(T0, queued=9))
    assert len(fired) == 1
    notices = book.apply(AlertSettings(queue_depth=0), T0 + 60)
    assert states(notices) == [("queue_depth", "queue", "resolved")]
    assert notices[0].summary == "the rule was turned off; it lasted 1m"
    assert book.sample(LaneSample(T0 + 65, queued=9)) == []


def test_raising_job_preemptions_past_a_firing_job_resolves_it() -> None:
    book = rules(job_preemptions=2)
    assert len(book.job(job(2), T0)) == 1
    (resolved,) = book.apply(AlertSettings(job_preemptions=5), T0 + 10)
    assert (resolved.subject, resolved.state) == ("01JOB", "resolved")
    assert resolved.summary == "the limit was raised to 5; it lasted 10s"
    assert book.job(job(2, JobState.SUCCEEDED), T0 + 20) == []


def test_from_status_reads_the_shape_of_gpulane_status() -> None:
    status = {
        "queued": 7,
        "swaps": {"loading_s": 3.0, "busy_s": 9.0, "overhead_ratio": 1 / 3},
        "health": {"local": {"state": "down", "since": T0 - 5}},
        "admission": {"rejections": {}, "rejections_by_caller": {"bob": 2}},
        "supervision": {
            "state": "running",
            "restarts": 1,
            "children": {"store": {"state": "running", "restarts": 1, "exits": 1,
                                   "last_exit": "crashed: x"}},
        },
    }  # fmt: skip
    sample = LaneSample.from_status(T0, status)
    assert sample == LaneSample(
        T0,
        queued=7,
        swaps=(3.0, 9.0),
        health={"local": (False, T0 - 5)},
        rejections={"bob": 2},
        exits={"store": (1, "crashed: x")},
    )
    stopped = LaneSample.from_status(T0, {"supervision": {"state": "stopped", "children": {}}})
    assert stopped == LaneSample(T0)


def test_a_notice_is_the_generic_json_body() -> None:
    (notice,) = rules(queue_depth=1, queue_depth_for_s=0).sample(LaneSample(T0, queued=2))
    assert notice.to_dict() == {
        "source": "gpulane",
        "rule": "queue_depth",
        "subject": "queue",
        "state": "firing",
        "reminder": False,
        "summary": "2 jobs queued, over 1 for 0s",
        "value": 2,
        "threshold": 1,
        "since": T0,
        "at": T0,
    }


@pytest.mark.parametrize(
    ("setting", "value", "field"),
    [
        ({"queue_depth": -1}, -1, "alerts.queue_depth"),
        ({"job_preemptions": 1.5}, 1.5, "alerts.job_preemptions"),
        ({"sample_s": 0}, 0, "alerts.sample_s"),
        ({"swap_overhead_pct": 150}, 150, "alerts.swap_overhead_pct"),
        ({"caller_rejections_window_s": 0}, 0, "alerts.caller_rejections_window_s"),
        ({"backend_down_for_s": float("nan")}, "nan", "alerts.backend_down_for_s"),
        ({"webhook_url": "hooks.slack.com/x"}, "hooks", "alerts.webhook_url"),
        ({"webhook_format": "teams"}, "teams", "alerts.webhook_format"),
        ({"webhook_attempts": 0}, 0, "alerts.webhook_attempts"),
        ({"child_restarts": True}, True, "alerts.child_restarts"),
    ],
)
def test_bad_alert_settings_are_refused_naming_the_field(
    setting: dict[str, Any], value: object, field: str
) -> None:
    with pytest.raises(ValidationError, match=field) as caught:
        AlertSettings(**setting)
    assert str(value) in str(caught.value)


def test_alerts_is_a_config_section_from_the_file_and_the_environment() -> None:
    config = Config.from_mapping({"alerts": {"queue_depth": 50, "webhook_format": "slack"}})
    assert (config.alerts.queue_depth, config.alerts.webhook_format) == (50, "slack")
    env = {"GPULANE_ALERTS_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X"}
    assert Config.from_mapping({}, env=env).alerts.webhook_url.endswith("/T/B/X")
    with pytest.raises(ValidationError, match=r"alerts\.queue_dept"):
        Config.from_mapping({"alerts": {"queue_dept": 5}})
    with pytest.raises(ValidationError, match=r"alerts\.webhook_format"):
        Config.from_mapping({"alerts": {"webhook_format": "teams"}})


def test_the_alerts_block_in_configuration_md_loads_and_shows_the_defaults() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    blocks = re.findall(r"```toml\n(\[alerts\]\n.*?)```", page.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    config = Config.from_mapping(tomllib.loads(blocks[0]))
    assert config.alerts == AlertSettings()
