"""Signed completion webhooks end to end: a lane on the fake GPU posts to a real receiver on
loopback, which checks every post with the verifier docs/operations.md gives receivers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pykka
import pytest
from webhook_receiver import Post, WebhookReceiver, documented_verifier, verified

from actors import GpuLane
from actors.testing import FakeGpu, InjectedFault, quiesce, wait_until
from actors.tree import LaneWiring
from actors.webhooks import WebhookDelivery
from protocol import Job, JobSpec, JobState, Limits, ValidationError
from protocol.config import WebhookSettings
from protocol.messages import PruneJobs
from protocol.webhook import DELIVERY_HEADER, EVENT_HEADER, TIMESTAMP_HEADER, WebhookState

StartLane = Callable[..., GpuLane]
SECRET = "lane-webhook-secret-0001"
SETTINGS = WebhookSettings(
    secret=SECRET, allowed_hosts=("127.0.0.1",), base_delay_s=5, max_delay_s=60, jitter=0.5
)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as started:
        yield started


def ask(receiver: WebhookReceiver, text: str = "hi") -> JobSpec:
    return JobSpec.chat(
        model="m", messages=[{"role": "user", "content": text}], webhook=f"{receiver.url}/hook"
    )


def delivery_settles(lane: GpuLane, job_id: str, state: WebhookState, attempts: int) -> Job:
    """The job once its delivery is in ``state`` after ``attempts`` attempts; the lane rests."""

    def settled() -> bool:
        webhook = lane.get(job_id).webhook
        return webhook is not None and (webhook.state, len(webhook.deliveries)) == (
            state, attempts,
        )  # fmt: skip

    wait_until(settled, what=f"the delivery never became {state.value} after {attempts}")
    quiesce()
    return lane.get(job_id)


def first_post_refused(lane: GpuLane, gpu: FakeGpu, receiver: WebhookReceiver) -> Job:
    """A job that ended, whose first post the receiver answered with a 500: pending."""
    receiver.answer(500)
    ticket = lane.submit(ask(receiver))
    gpu.next_call().finish("hello")
    return delivery_settles(lane, ticket.job_id, WebhookState.PENDING, 1)


def check_signed(post: Post, job: Job, event: str) -> None:
    assert post.path == "/hook"
    assert (post.headers[EVENT_HEADER], post.headers[DELIVERY_HEADER]) == (event, job.id)
    assert post.headers["content-type"] == "application/json"
    assert verified(post, SECRET, now=int(post.headers[TIMESTAMP_HEADER]))
    body = post.json()
    assert (body["event"], body["job"]["id"], body["job"]["state"]) == (
        event, job.id, job.state.value,
    )  # fmt: skip


def test_a_job_that_ends_is_posted_once_signed_and_shown_delivered(
    start_lane: StartLane, fake_gpu: FakeGpu, receiver: WebhookReceiver
) -> None:
    lane = start_lane(webhooks=SETTINGS)
    ticket = lane.submit(ask(receiver))
    assert lane.get(ticket.job_id).to_dict()["webhook"]["state"] == "waiting"
    fake_gpu.next_call().finish("hello")
    assert ticket.result(timeout=5) == "hello"
    (post,) = receiver.posts(1)
    job = delivery_settles(lane, ticket.job_id, WebhookState.DELIVERED, 1)
    check_signed(post, job, "job.succeeded")
    assert post.json()["job"]["result"] == "hello"
    assert int(post.headers[TIMESTAMP_HEADER]) == int(fake_gpu.clock.now())
    assert job.webhook is not None
    (attempt,) = job.webhook.deliveries
    assert (attempt.status, attempt.error, attempt.at) == (200, None, fake_gpu.clock.now())
    fake_gpu.clock.advance(SETTINGS.retry_for_s * 2)
    quiesce()
    assert len(receiver.stats()) == 1, "delivered exactly once"


def test_a_receivers_500_is_posted_again_after_the_back_off_and_both_attempts_show(
    start_lane: StartLane, fake_gpu: FakeGpu, receiver: WebhookReceiver
) -> None:
    clock = fake_gpu.clock
    lane = start_lane(webhooks=SETTINGS)
    job = first_post_refused(lane, fake_gpu, receiver)
    receiver.posts(1)
    assert job.webhook is not None and job.webhook.next_attempt_at is not None
    failed_at = clock.now()
    # The first retry comes base_delay_s later, less up to jitter of it.
    assert failed_at + 2.5 <= job.webhook.next_attempt_at <= failed_at + 5
    assert len(receiver.stats()) == 1, "nothing is posted before the back-off has passed"
    clock.advance(job.webhook.next_attempt_at - clock.now())
    first, second = receiver.posts(2)
    job = delivery_settles(lane, job.id, WebhookState.DELIVERED, 2)
    assert job.webhook is not None
    assert [(a.status, a.error) for a in job.webhook.deliveries] == [
        (500, "HTTP 500 Internal Server Error"), (200, None),
    ]  # fmt: skip
    for post in (first, second):
        check_signed(post, job, "job.succeeded")
    assert first.body == second.body, "the body is fixed when the job ends"
    assert int(second.headers[TIMESTAMP_HEADER]) > int(first.headers[TIMESTAMP_HEADER])


def test_failed_and_cancelled_jobs_are_posted_with_their_event(
    start_lane: StartLane, fake_gpu: FakeGpu, receiver: WebhookReceiver
) -> None:
    lane = start_lane(webhooks=SETTINGS)
    failing = lane.submit(ask(receiver, "fails"), detach=True)
    fake_gpu.next_call().fail("model not found", transient=False, status=404)
    failed = delivery_settles(lane, failing.job_id, WebhookState.DELIVERED, 1)
    blocker = lane.submit(JobSpec.chat(model="m", messages=[{"role": "user", "content": "b"}]))
    call = fake_gpu.next_call()
    queued = lane.submit(ask(receiver, "never runs"), detach=True)
    assert lane.cancel(queued.job_id) == "queued"
    cancelled = delivery_settles(lane, queued.job_id, WebhookState.DELIVERED, 1)
    first, second = receiver.posts(2)
    check_signed(first, failed, "job.failed")
    assert "model not found" in first.json()["job"]["error"]
    check_signed(second, cancelled, "job.cancelled")
    call.finish("done")
    assert blocker.result(timeout=5) == "done"


def test_a_delivery_is_given_up_after_retry_for_s_and_its_job_may_then_be_pruned(
    start_lane: StartLane, fake_gpu: FakeGpu, receiver: WebhookReceiver
) -> None:
    clock = fake_gpu.clock
    settings = WebhookSettings(
        secret=SECRET, allowed_hosts=("127.0.0.1",), retry_for_s=60, base_delay_s=10,
        max_delay_s=20, jitter=0.0,
    )  # fmt: skip
    lane = start_lane(webhooks=settings)
    receiver.answer(*[503] * 10)
    ticket = lane.submit(ask(receiver))
    fake_gpu.next_call().finish("hello")
    ended_at = clock.now()
    # Attempts at 0, 10, 30 and 50 s; the next would come at 70 s, past retry_for_s.
    for attempts, wait in ((1, 10), (2, 20), (3, 20)):
        delivery_settles(lane, ticket.job_id, WebhookState.PENDING, attempts)
        assert lane.ref_for("store").ask(PruneJobs(0)) == 0, "a pending delivery keeps its job"
        clock.advance(wait)
    job = delivery_settles(lane, ticket.job_id, WebhookState.FAILED, 4)
    assert job.webhook is not None
    assert [a.at - ended_at for a in job.webhook.deliveries] == [0, 10, 30, 50]
    assert job.webhook.ended_at == ended_at + 50 and job.webhook.next_attempt_at is None
    clock.advance(3600)
    quiesce()
    assert len(receiver.stats()) == 4
    assert lane.ref_for("store").ask(PruneJobs(0)) == 1


def test_a_webhook_on_a_host_the_caller_may_not_use_is_refused_at_submit(
    start_lane: StartLane, receiver: WebhookReceiver
) -> None:
    lane = start_lane(webhooks=SETTINGS)
    spec = ask(receiver).replace(webhook="https://elsewhere.example/hook")
    with pytest.raises(ValidationError) as raised:
        lane.submit(spec)
    assert raised.value.field == "webhook"
    assert raised.value.allowed == ("127.0.0.1",)
    assert "'elsewhere.example' is not allowed for caller 'anonymous'" in str(raised.value)
    assert lane.list() == (), "nothing was stored"


def test_without_allowed_hosts_every_webhook_is_refused(
    start_lane: StartLane, receiver: WebhookReceiver
) -> None:
    lane = start_lane()
    with pytest.raises(ValidationError, match=r"list it in webhooks\.allowed_hosts"):
        lane.submit(ask(receiver))


def test_the_documented_verifier_refuses_a_replay_a_changed_body_and_another_secret(
    start_lane: StartLane, fake_gpu: FakeGpu, receiver: WebhookReceiver
) -> None:
    lane = start_lane(webhooks=SETTINGS)
    ticket = lane.submit(ask(receiver))
    fake_gpu.next_call().finish("hello")
    (post,) = receiver.posts(1)
    sent = int(post.headers[TIMESTAMP_HEADER])
    verify = documented_verifier()
    assert verify(SECRET, post.headers, post.body, now=sent + 299)
    assert not verify(SECRET, post.headers, post.body, now=sent + 301), "an old one is a replay"
    assert not verify(SECRET, post.headers, post.body, now=sent - 301), "so is one from ahead"
    assert not verify(SECRET, post.headers, post.body.replace(b"hello", b"HELLO"), now=sent)
    assert not verify("another-secret-000001", post.headers, post.body, now=sent)
    stale = {**post.headers, TIMESTAMP_HEADER: str(sent - 3600)}
    assert not verify(SECRET, stale, post.body, now=sent - 3600), "the timestamp is signed"
    assert not verify(SECRET, {}, post.body, now=sent)
    delivery_settles(lane, ticket.job_id, WebhookState.DELIVERED, 1)


def test_a_restarted_delivery_actor_reads_the_pending_deliveries_again(
    start_lane: StartLane, fake_gpu: FakeGpu, receiver: WebhookReceiver
) -> None:
    clock = fake_gpu.clock
    lane = start_lane(webhooks=SETTINGS)
    job = first_post_refused(lane, fake_gpu, receiver)
    lane.ref_for("webhooks").tell(InjectedFault())
    wait_until(lambda: lane.status()["supervision"]["children"]["webhooks"]["restarts"] == 1)
    wait_until(lambda: lane.status()["supervision"]["children"]["webhooks"]["state"] == "running")
    quiesce()
    assert len(receiver.stats()) == 1, "the retry waits for its time after the restart too"
    assert job.webhook is not None and job.webhook.next_attempt_at is not None
    clock.advance(job.webhook.next_attempt_at - clock.now())
    receiver.posts(2)
    delivery_settles(lane, job.id, WebhookState.DELIVERED, 2)
    assert fake_gpu.no_new_call()


def test_twelve_jobs_ending_together_are_each_delivered_once(
    start_lane: StartLane, fake_gpu: FakeGpu, receiver: WebhookReceiver
) -> None:
    lane = start_lane(webhooks=SETTINGS, limits=Limits.off())
    tickets = [lane.submit(ask(receiver, f"job {n}")) for n in range(12)]
    for n in range(12):
        fake_gpu.next_call().finish(f"answer {n}")
    for ticket in tickets:
        delivery_settles(lane, ticket.job_id, WebhookState.DELIVERED, 1)
    posts = receiver.posts(12)
    assert len(posts) == 12
    assert sorted(post.headers[DELIVERY_HEADER] for post in posts) == sorted(
        ticket.job_id for ticket in tickets
    )
    assert all(lane.get(t.job_id).state is JobState.SUCCEEDED for t in tickets)


def test_a_receiver_that_is_down_is_an_attempt_without_a_status_and_tried_again(
    start_lane: StartLane, fake_gpu: FakeGpu, receiver: WebhookReceiver
) -> None:
    clock = fake_gpu.clock
    lane = start_lane(webhooks=SETTINGS)
    ticket = lane.submit(ask(receiver))
    receiver.refuse_connections()
    fake_gpu.next_call().finish("hello")
    job = delivery_settles(lane, ticket.job_id, WebhookState.PENDING, 1)
    assert job.webhook is not None and job.webhook.next_attempt_at is not None
    (refused,) = job.webhook.deliveries
    assert refused.status is None and refused.error is not None
    assert refused.error.startswith("ConnectError")
    receiver.accept_connections()
    clock.advance(job.webhook.next_attempt_at - clock.now())
    (post,) = receiver.posts(1)
    job = delivery_settles(lane, job.id, WebhookState.DELIVERED, 2)
    check_signed(post, job, "job.succeeded")


def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(
    start_lane: StartLane, fake_gpu: FakeGpu
) -> None:
    """Through the delivery actor's transport seam (``httpx.MockTransport``, the stand-in
    httpx provides): GitHub and Stripe do not follow a webhook's redirect either."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(301, headers={"Location": "http://127.0.0.1:9/elsewhere"})
        return httpx.Response(204)

    def mocked(wiring: LaneWiring) -> pykka.ActorRef[Any]:
        return WebhookDelivery.start(
            store=wiring.refs.ref_for("store"),
            config=wiring.config,
            clock=wiring.clock,
            timers=wiring.timers,
            transport=httpx.MockTransport(answer),
        )

    clock = fake_gpu.clock
    lane = start_lane(webhooks=SETTINGS, factories={"webhooks": mocked})
    spec = JobSpec.chat(
        model="m", messages=[{"role": "user", "content": "hi"}], webhook="http://127.0.0.1:8/h"
    )
    ticket = lane.submit(spec)
    fake_gpu.next_call().finish("hello")
    job = delivery_settles(lane, ticket.job_id, WebhookState.PENDING, 1)
    assert job.webhook is not None and job.webhook.next_attempt_at is not None
    assert [(a.status, a.error) for a in job.webhook.deliveries] == [
        (301, "HTTP 301 Moved Permanently")
    ]
    clock.advance(job.webhook.next_attempt_at - clock.now())
    job = delivery_settles(lane, job.id, WebhookState.DELIVERED, 2)
    assert [str(request.url) for request in seen] == ["http://127.0.0.1:8/h"] * 2
    assert seen[1].headers[TIMESTAMP_HEADER] == str(int(clock.now()))


def test_a_reloaded_secret_signs_the_next_attempt(
    start_lane: StartLane, fake_gpu: FakeGpu, receiver: WebhookReceiver
) -> None:
    clock = fake_gpu.clock
    lane = start_lane(webhooks=SETTINGS)
    job = first_post_refused(lane, fake_gpu, receiver)
    rotated = "rotated-webhook-secret-01"
    changed = lane.reload_config(
        lane.config.replace(webhooks=dataclasses.replace(SETTINGS, secret=rotated))
    )
    assert changed == ("webhooks.secret",)
    assert job.webhook is not None and job.webhook.next_attempt_at is not None
    clock.advance(job.webhook.next_attempt_at - clock.now())
    first, second = receiver.posts(2)
    delivery_settles(lane, job.id, WebhookState.DELIVERED, 2)
    now = int(second.headers[TIMESTAMP_HEADER])
    assert verified(first, SECRET, now=now) and not verified(first, rotated, now=now)
    assert verified(second, rotated, now=now) and not verified(second, SECRET, now=now)
