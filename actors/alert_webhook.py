"""Alert notices posted to a webhook: a generic JSON body, or Slack's or Discord's message.

Posting is I/O, so it runs on a worker thread of its own, never on the Alerter's (or the
supervisor's) thread; a failed post (no answer, a 429 or a 5xx) is tried again after 1 s,
2 s, 4 s... (capped at 30 s, or after the receiver's ``Retry-After``) on the lane's timers,
up to ``alerts.webhook_attempts`` in all; any other refusal is final. The transport is the
test seam (``transport=``, httpx's).

The chat formats follow the services' own documentation: a Slack incoming webhook takes
``{"text": ...}`` in mrkdwn, in which ``&``, ``<`` and ``>`` must be written as HTML
entities (docs.slack.dev, "Formatting message text", escaping); a Discord webhook takes
``{"content": ...}`` of at most 2000 characters, and ``allowed_mentions`` with an empty
``parse`` list keeps an ``@everyone`` in a caller's name from pinging anyone
(discord/discord-api-docs, docs/resources/webhook, "Execute Webhook").
"""

from __future__ import annotations

import re
import threading
from typing import Any

import httpx
import structlog

from actors.alert_rules import AlertNotice
from actors.runtime import Timers, WorkerThread
from protocol.config import AlertSettings

__all__ = ["AlertWebhook", "render"]

log = structlog.get_logger(__name__)

_FIRST_RETRY_S = 1.0
_MAX_RETRY_S = 30.0
_DISCORD_MAX_CHARS = 2000
_SLACK_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_DISCORD_MARKUP = re.compile(r"([\\*_~`|])")  # what Discord reads as markdown inline


def render(notice: AlertNotice, form: str) -> dict[str, Any]:
    """The webhook body for ``notice`` in ``form`` ("json", "slack" or "discord")."""
    if form == "json":
        return notice.to_dict()
    headline = "RESOLVED" if not notice.firing else "STILL FIRING" if notice.reminder else "FIRING"
    if form == "slack":
        told = "".join(_SLACK_ENTITIES.get(c, c) for c in f"{notice.subject}: {notice.summary}")
        return {"text": f"*{headline}* gpulane `{notice.rule}` {told}"}
    told = _DISCORD_MARKUP.sub(r"\\\1", f"{notice.subject}: {notice.summary}")
    content = f"**{headline}** gpulane `{notice.rule}` {told}"
    return {"content": content[:_DISCORD_MAX_CHARS], "allowed_mentions": {"parse": []}}


class AlertWebhook:
    """Posts notices to ``alerts.webhook_url`` in the background; see the module docstring.

    :meth:`send` never blocks. The worker thread starts with the first notice to post, so a
    lane without a webhook has none. Thread-safe.
    """

    def __init__(
        self,
        settings: AlertSettings,
        timers: Timers,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._timers = timers
        self._transport = transport
        self._lock = threading.Lock()
        self._worker: WorkerThread | None = None
        self._client: httpx.Client | None = None  # made and used on the worker only
        self._closed = False

    def apply(self, settings: AlertSettings) -> None:
        """New settings, for the notices sent from now on."""
        with self._lock:
            self._settings = settings

    def send(self, notice: AlertNotice) -> None:
        """Post ``notice`` if a webhook is configured; returns at once."""
        with self._lock:
            settings = self._settings
            if self._closed or not settings.webhook_url:
                return
            if self._worker is None:
                self._worker = WorkerThread("gpulane-alert-webhook")
            worker = self._worker
        body = render(notice, settings.webhook_format)
        worker.submit(lambda: self._post(notice, settings.webhook_url, body, 1))

    def close(self) -> None:
        """Post what is queued (no more retries), then stop the worker and the client."""
        with self._lock:
            self._closed = True
            worker, timeout_s = self._worker, self._settings.webhook_timeout_s
        if worker is None:
            return
        if not worker.stop(2 * timeout_s + 1.0):
            log.warning("alert_webhook_stop_timeout", timeout_s=2 * timeout_s + 1.0)
            return
        if self._client is not None:
            self._client.close()

    def _post(self, notice: AlertNotice, url: str, body: dict[str, Any], attempt: int) -> None:
        """One attempt, on the worker; a retryable failure schedules the next on the timers."""
        with self._lock:
            settings, closed = self._settings, self._closed
        if self._client is None:
            self._client = httpx.Client(transport=self._transport, follow_redirects=False)
        retry_after: float | None = None
        try:
            response = self._client.post(url, json=body, timeout=settings.webhook_timeout_s)
        except httpx.HTTPError as exc:
            error, retryable = f"{type(exc).__name__}: {exc}", True
        else:
            if response.is_success:
                log.debug("alert_webhook_sent", rule=notice.rule, subject=notice.subject)
                return
            status = response.status_code
            error, retryable = f"HTTP {status}", status == 429 or status >= 500
            retry_after = _retry_after(response)
        if not retryable or closed or attempt >= settings.webhook_attempts:
            log.warning(
                "alert_webhook_failed",
                rule=notice.rule,
                subject=notice.subject,
                state=notice.state,
                attempts=attempt,
                error=error,
            )
            return
        delay = min(_MAX_RETRY_S, _FIRST_RETRY_S * 2 ** (attempt - 1))
        if retry_after is not None:
            delay = min(_MAX_RETRY_S, retry_after)
        log.info(
            "alert_webhook_retry", rule=notice.rule, attempt=attempt, error=error, delay_s=delay
        )
        self._timers.call_later(delay, lambda: self._again(notice, url, body, attempt + 1))

    def _again(self, notice: AlertNotice, url: str, body: dict[str, Any], attempt: int) -> None:
        """A retry's time came (on the timer thread): hand it to the worker unless closed."""
        with self._lock:
            worker = None if self._closed else self._worker
        if worker is not None:
            worker.submit(lambda: self._post(notice, url, body, attempt))


def _retry_after(response: httpx.Response) -> float | None:
    """The seconds a 429 or 503 asks the client to wait (RFC 9110's delay-seconds form)."""
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
