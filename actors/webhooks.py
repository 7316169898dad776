"""Signed completion webhooks: who may post where, and the WebhookDelivery actor that posts.

A job may name a webhook URL (``JobSpec.webhook``). Its caller's signer allows the URL's
host and holds the secret: the API key that stands for the caller (``webhook_hosts``,
``webhook_secret``), or ``[webhooks]`` (``allowed_hosts``, ``secret``) for a caller no
key stands for, such as a bot's in-process jobs. :func:`check_webhook` refuses a job
whose host is not allowed, at submit, naming the hosts that are.

When the job ends the store writes its delivery to the outbox in the same transaction
(``actors.stores._outbox``). The WebhookDelivery actor hears of it from the store's
commit listener (``WebhookDue``) and, when it starts, reads every pending delivery, so a
process killed between the commit and the post delivers after its restart: at least
once. Posts run on worker threads (docs/architecture.md section 8), at most
``webhooks.workers`` at once, each signed at the moment it is sent (``protocol.webhook``:
a fresh timestamp per attempt); a failure is tried again with capped exponential back-off
and jitter for ``webhooks.retry_for_s`` after the job ended, and every attempt is recorded
in the store, where the job shows it (docs/operations.md, "Webhooks").
"""

from __future__ import annotations

import collections
import dataclasses
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import pykka
import structlog

from actors.config import Config
from actors.runtime import (
    ActorAddress,
    ChildUnavailableError,
    Clock,
    SupervisedActor,
    TimerHandle,
    Timers,
    WorkerThread,
    ask_while_up,
)
from protocol import JobSpec, ValidationError
from protocol.messages import (
    PendingWebhooks,
    ReadWebhook,
    RecordWebhookAttempt,
    WebhookAttempted,
    WebhookDue,
    WebhooksFound,
)
from protocol.webhook import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    PendingDelivery,
    WebhookAttempt,
    WebhookState,
    host_allowed,
    sign,
    webhook_host,
)

__all__ = ["Signer", "WebhookDelivery", "check_webhook", "signer_for"]

log = structlog.get_logger(__name__)

_USER_AGENT = "gpulane-webhooks"
_MAX_ERROR = 300  # characters of an attempt's error kept in the store


@dataclasses.dataclass(frozen=True, slots=True)
class Signer:
    """Whose webhooks these are: the hosts they may go to, the secret that signs them, and
    the setting both come from (named in a refusal)."""

    hosts: tuple[str, ...]
    secret: str
    setting: str


def signer_for(config: Config, caller: str) -> Signer:
    """The signer of ``caller``'s webhooks: its API key's, else ``[webhooks]``'s.

    Every key of one caller has the same webhook settings (``GatewaySettings`` checks),
    so the first key found is the caller's.
    """
    for key in config.gateway.api_keys:
        if key.caller == caller:
            return Signer(
                key.webhook_hosts,
                key.webhook_secret,
                f"webhook_hosts of the API key of caller {caller!r}",
            )
    webhooks = config.webhooks
    return Signer(webhooks.allowed_hosts, webhooks.secret, "webhooks.allowed_hosts")


def check_webhook(spec: JobSpec, config: Config) -> None:
    """ValidationError naming ``webhook`` when the spec's webhook host is not allowed for
    its caller (with the hosts that are); nothing to check without a webhook."""
    if spec.webhook is None:
        return
    signer = signer_for(config, spec.caller)
    host = webhook_host(spec.webhook)
    if not host_allowed(host, signer.hosts):
        raise ValidationError(
            "webhook",
            f"host {host!r} is not allowed for caller {spec.caller!r} ({signer.setting})",
            allowed=signer.hosts or f"no host yet: list it in {signer.setting}",
        )


class WebhookDelivery(SupervisedActor):
    """Posts the outbox's deliveries, signed, and records each attempt (module docstring).

    It owns no durable state: the schedule it keeps (which delivery is due when, which are
    being posted) is rebuilt from the store's outbox at each start. ``config`` gives the
    settings in force now (a reload changes the secret, hosts, timing and worker count of
    the next post); ``transport`` replaces httpx's (a test's ``httpx.MockTransport``).
    """

    def __init__(
        self,
        *,
        store: ActorAddress,
        config: Callable[[], Config],
        clock: Clock,
        timers: Timers,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        super().__init__()
        self._store = store
        self._config = config
        self._clock = clock
        self._timers = timers
        self._rng = rng or random.Random()
        self._shutdown_timeout_s = shutdown_timeout_s
        self._client = httpx.Client(transport=transport, follow_redirects=False)
        self._workers: list[WorkerThread] = []
        self._idle: list[WorkerThread] = []
        self._posting: dict[int, WorkerThread] = {}  # seq -> the worker posting it
        self._due: collections.deque[int] = collections.deque()  # due, waiting for a worker
        self._retries: dict[int, TimerHandle] = {}  # seq -> its next attempt's timer

    def on_start(self) -> None:
        """Read the outbox's pending deliveries (on a worker: the store may be busy)."""
        worker = self._new_worker()
        self._idle.append(worker)  # free for posts once it has read the outbox
        store, me = self._store, self.actor_ref

        def find() -> None:
            try:
                due: tuple[tuple[int, float], ...] = ask_while_up(store, PendingWebhooks())
            except ChildUnavailableError:
                return  # the store restarts, and this actor after it (rest_for_one)
            except Exception as exc:  # reported, never raised here: the worker lives on
                log.error("webhooks_unreadable", error=repr(exc))
                return
            _tell_quietly(me, WebhooksFound(due))

        worker.submit(find)

    def on_end(self) -> None:
        """Stopped or crashed: drop the timers, let the posts in flight finish (within the
        shutdown time), so no worker, timer or connection outlives the instance."""
        self._wind_down()

    def on_receive(self, message: Any) -> None:
        """Dispatch on the message type."""
        match message:
            case WebhookDue(seq=seq):
                self._make_due(seq)
            case WebhooksFound(due=due):
                for seq, at in due:
                    self._schedule(seq, at)
                log.info("webhooks_pending", deliveries=len(due))
            case WebhookAttempted():
                self._attempted(message)
            case _:
                raise TypeError(f"WebhookDelivery cannot handle {type(message).__name__}")
        self._dispatch()

    # --- the schedule -------------------------------------------------------------------

    def _schedule(self, seq: int, at: float) -> None:
        """Make ``seq`` due at ``at`` (now, if that has passed)."""
        if seq in self._posting or seq in self._due or seq in self._retries:
            return
        if at <= self._clock.now():
            self._due.append(seq)
        else:
            self._retries[seq] = self._timers.send_at(at, self.actor_ref, WebhookDue(seq))

    def _make_due(self, seq: int) -> None:
        """Post ``seq`` as soon as a worker is free (its retry timer, if any, is moot)."""
        retry = self._retries.pop(seq, None)
        if retry is not None:
            retry.cancel()
        if seq not in self._posting and seq not in self._due:
            self._due.append(seq)

    def _dispatch(self) -> None:
        """Hand due deliveries to free workers, up to ``webhooks.workers`` posts at once."""
        limit = self._config().webhooks.workers
        while self._due and len(self._posting) < limit:
            worker = self._idle.pop() if self._idle else self._new_worker()
            seq = self._due.popleft()
            self._posting[seq] = worker
            worker.submit(self._post_job(seq))

    def _new_worker(self) -> WorkerThread:
        worker = WorkerThread(f"gpulane-webhooks-{len(self._workers)}")
        self._workers.append(worker)
        return worker

    def _attempted(self, report: WebhookAttempted) -> None:
        """A worker is back: record its attempt and decide what comes next."""
        worker = self._posting.pop(report.seq, None)
        if worker is not None:
            self._idle.append(worker)
        attempt = report.attempt
        if attempt is None:
            return  # no longer pending: nothing was posted
        settings = self._config().webhooks
        next_at: float | None = None
        if attempt.delivered:
            state = WebhookState.DELIVERED
        else:
            next_at = attempt.at + settings.retry_delay(report.attempts, self._rng.random())
            give_up = next_at > report.created_at + settings.retry_for_s
            state = WebhookState.FAILED if give_up else WebhookState.PENDING
        if state is not WebhookState.PENDING:
            next_at = None
        self._store.tell(RecordWebhookAttempt(report.seq, attempt, state, next_at))
        (log.warning if state is WebhookState.FAILED else log.info)(
            f"webhook_{state.value}",
            seq=report.seq,
            attempts=report.attempts,
            status=attempt.status,
            error=attempt.error,
            next_attempt_at=next_at,
        )
        if next_at is not None:
            self._schedule(report.seq, next_at)

    # --- a post, on a worker ------------------------------------------------------------

    def _post_job(self, seq: int) -> Callable[[], None]:
        """The work of one attempt: read the delivery, sign it, post it, report back."""
        store, me, clock, config, client = (
            self._store, self.actor_ref, self._clock, self._config, self._client,
        )  # fmt: skip

        def post() -> None:
            try:
                delivery: PendingDelivery | None = ask_while_up(store, ReadWebhook(seq))
            except Exception as exc:  # reported, never raised here: the worker lives on
                # The store restarts (and this actor after it), or cannot read: the delivery
                # stays pending in the outbox, read again at the next start.
                log.warning("webhook_unreadable", seq=seq, error=repr(exc))
                delivery = None
            if delivery is None:
                _tell_quietly(me, WebhookAttempted(seq, None))
                return
            try:
                attempt = _post(client, config(), clock, delivery)
            except Exception as exc:  # a failure of ours, not the receiver's: an attempt too
                attempt = WebhookAttempt(at=clock.now(), error=repr(exc)[:_MAX_ERROR])
            report = WebhookAttempted(seq, attempt, delivery.created_at, delivery.attempts + 1)
            _tell_quietly(me, report)

        return post

    def _wind_down(self) -> None:
        for timer in self._retries.values():
            timer.cancel()
        self._retries.clear()
        for worker in self._workers:
            worker.stop(self._shutdown_timeout_s)
        self._client.close()


def _post(
    client: httpx.Client, config: Config, clock: Clock, delivery: PendingDelivery
) -> WebhookAttempt:
    """Sign and post ``delivery`` once: the attempt (a status, or why none came back)."""
    at = clock.now()
    signer = signer_for(config, delivery.caller)
    if not signer.secret:
        problem = f"no webhook secret for caller {delivery.caller!r} ({signer.setting})"
        return WebhookAttempt(at=at, error=problem)
    timestamp = int(at)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": _USER_AGENT,
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: delivery.job_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(signer.secret, timestamp, delivery.body),
    }
    began = time.monotonic()
    try:
        request = client.build_request(
            "POST",
            delivery.url,
            content=delivery.body,
            headers=headers,
            timeout=config.webhooks.timeout_s,
        )
        response = client.send(request, stream=True)  # the answer's body is never read
        response.close()
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        failure = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]
        return WebhookAttempt(at=at, error=failure, seconds=round(time.monotonic() - began, 6))
    status = response.status_code
    error = None if 200 <= status < 300 else f"HTTP {status} {response.reason_phrase}".strip()
    return WebhookAttempt(
        at=at, status=status, error=error, seconds=round(time.monotonic() - began, 6)
    )


def _tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        log.debug("webhook_delivery_gone", message=type(message).__name__)
