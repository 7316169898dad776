"""Alert notices posted to a webhook: each format as a real HTTP server on loopback receives
it, retries on the manual clock, and a send that never waits for the post.

The Slack body follows Slack's incoming webhooks ({"text": ...} in mrkdwn, with &, < and >
written as HTML entities: docs.slack.dev, "Formatting message text"); the Discord body
follows discord/discord-api-docs, "Execute Webhook" (``content`` of at most 2000
characters; ``allowed_mentions`` with an empty ``parse`` so nothing pings).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from webhook_receiver import WebhookReceiver

from actors.alert_rules import AlertNotice
from actors.alert_webhook import AlertWebhook, render
from actors.runtime import Timers
from actors.testing import ManualClock, quiesce
from protocol.config import AlertSettings

T0 = ManualClock.DEFAULT_START
NOTICE = AlertNotice(
    "caller_rejections",
    "bob <ops> & co",
    "firing",
    T0 + 60,
    T0 + 50,
    "caller bob <ops> & co refused 31 times in the last 1m (limit 30)",
    31,
    30,
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timers(clock: ManualClock) -> Iterator[Timers]:
    started = Timers(clock).start()
    yield started
    started.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


def webhook(timers: Timers, url: str, **settings: Any) -> AlertWebhook:
    return AlertWebhook(AlertSettings(webhook_url=url, **settings), timers)


def test_the_json_format_posts_the_notice_as_it_is(
    timers: Timers, receiver: WebhookReceiver
) -> None:
    hook = webhook(timers, receiver.url + "/alerts", webhook_format="json")
    hook.send(NOTICE)
    quiesce()
    hook.close()
    (got,) = receiver.stats()
    assert got.path == "/alerts"
    assert got.headers["Content-Type"] == "application/json"
    assert got.json() == NOTICE.to_dict()
    assert got.json()["state"] == "firing" and got.json()["value"] == 31


def test_the_slack_format_is_one_text_with_slacks_control_characters_escaped(
    timers: Timers, receiver: WebhookReceiver
) -> None:
    hook = webhook(timers, receiver.url, webhook_format="slack")
    hook.send(NOTICE)
    quiesce()
    hook.close()
    (got,) = receiver.stats()
    assert got.json() == {
        "text": "*FIRING* gpulane `caller_rejections` bob &lt;ops&gt; &amp; co: caller bob "
        "&lt;ops&gt; &amp; co refused 31 times in the last 1m (limit 30)"
    }


def test_the_discord_format_is_content_that_pings_no_one_and_keeps_markdown_literal(
    timers: Timers, receiver: WebhookReceiver
) -> None:
    hook = webhook(timers, receiver.url, webhook_format="discord")
    resolved = AlertNotice(
        "backend_down", "local", "resolved", T0, T0, "backend local_1 up; @everyone *", 0.0, 30
    )
    hook.send(resolved)
    quiesce()
    hook.close()
    (got,) = receiver.stats()
    assert got.json() == {
        "content": r"**RESOLVED** gpulane `backend_down` local: backend local\_1 up; @everyone \*",
        "allowed_mentions": {"parse": []},
    }


def test_a_reminder_says_it_is_still_firing_and_discord_content_is_cut_at_2000() -> None:
    reminder = AlertNotice("queue_depth", "queue", "firing", T0, T0, "x" * 3000, 9, 1, True)
    assert render(reminder, "slack")["text"].startswith("*STILL FIRING* gpulane `queue_depth`")
    assert len(render(reminder, "discord")["content"]) == 2000


def test_a_5xx_is_retried_after_the_back_off_on_the_lane_clock(
    clock: ManualClock, timers: Timers, receiver: WebhookReceiver
) -> None:
    receiver.answer(500, 503)
    hook = webhook(timers, receiver.url, webhook_attempts=3)
    hook.send(NOTICE)
    quiesce()
    assert len(receiver.stats()) == 1, "the retry waits for its time"
    clock.advance(1.0)
    quiesce()
    assert len(receiver.stats()) == 2
    clock.advance(1.9)
    quiesce()
    assert len(receiver.stats()) == 2, "the second back-off is 2 s"
    clock.advance(0.1)
    quiesce()
    hook.close()
    assert [post.json() for post in receiver.stats()] == [NOTICE.to_dict()] * 3


def test_a_429_waits_as_long_as_retry_after_says(clock: ManualClock, timers: Timers) -> None:
    seen: list[float] = []

    def slack(request: httpx.Request) -> httpx.Response:
        seen.append(clock.now())
        if len(seen) == 1:  # Slack's rate limit: a 429 that says when to come back
            return httpx.Response(429, headers={"Retry-After": "7"})
        return httpx.Response(200, text="ok")

    settings = AlertSettings(webhook_url="https://hooks.slack.com/services/T/B/X")
    hook = AlertWebhook(settings, timers, transport=httpx.MockTransport(slack))
    hook.send(NOTICE)
    quiesce()
    clock.advance(6.9)
    quiesce()
    assert len(seen) == 1
    clock.advance(0.1)
    quiesce()
    hook.close()
    assert seen == [T0, T0 + 7.0]


def test_a_refusal_is_final_and_running_out_of_attempts_is_logged(
    clock: ManualClock, timers: Timers, receiver: WebhookReceiver
) -> None:
    receiver.answer(404, 502, 502)
    hook = webhook(timers, receiver.url, webhook_attempts=2)
    with structlog.testing.capture_logs() as logs:
        hook.send(NOTICE)
        quiesce()
        hook.send(NOTICE)
        quiesce()
        clock.advance(1.0)
        quiesce()
    hook.close()
    assert len(receiver.stats()) == 3, "the 404 once, the 502 twice"
    failed = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert [(e["error"], e["attempts"]) for e in failed] == [("HTTP 404", 1), ("HTTP 502", 2)]
    assert all(e["log_level"] == "warning" and "url" not in e for e in failed), "no secret URL"


def test_a_receiver_that_is_not_listening_is_tried_again_then_given_up(
    clock: ManualClock, timers: Timers
) -> None:
    with WebhookReceiver() as gone:
        url = gone.url
    hook = webhook(timers, url, webhook_attempts=2)
    with structlog.testing.capture_logs() as logs:
        hook.send(NOTICE)
        quiesce()
        clock.advance(1.0)
        quiesce()
    hook.close()
    (failed,) = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert failed["attempts"] == 2 and failed["error"].startswith("ConnectError")


def test_send_returns_before_the_post_is_answered_through_the_transport_seam(
    timers: Timers,
) -> None:
    posted, release = threading.Event(), threading.Event()
    bodies: list[bytes] = []

    def slow(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        posted.set()
        release.wait(10)
        return httpx.Response(204)

    hook = AlertWebhook(
        AlertSettings(webhook_url="https://hooks.slack.com/services/T/B/X", webhook_format="slack"),
        timers,
        transport=httpx.MockTransport(slow),
    )
    hook.send(NOTICE)  # returns while the receiver holds the post
    assert posted.wait(5)
    release.set()
    quiesce()
    hook.close()
    assert bodies and b'"text"' in bodies[0]


def test_without_a_url_nothing_is_posted_and_no_thread_is_started(timers: Timers) -> None:
    before = threading.active_count()
    hook = AlertWebhook(AlertSettings(), timers)
    hook.send(NOTICE)
    assert threading.active_count() == before
    hook.close()
