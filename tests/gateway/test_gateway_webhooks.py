"""``POST /jobs`` with a webhook: allowed by the key's hosts, posted signed when the job ends on
the simulated Ollama, and shown with its attempts on ``GET /jobs/{ref}``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_kit import ALICE, BOB, HELLO, KEYS, Stack, running_stack
from webhook_receiver import WebhookReceiver, verified

from actors.config import ApiKey, GatewaySettings
from actors.testing import wait_until
from protocol.webhook import DELIVERY_HEADER, TIMESTAMP_HEADER

ACME = "acme-key-0005"
ACME_SECRET = "acme-webhook-secret-0001"
KEYS_WITH_HOOKS = (
    *KEYS,
    ApiKey(ACME, "acme", webhook_hosts=("127.0.0.1",), webhook_secret=ACME_SECRET),
)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as started:
        yield started


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path, GatewaySettings(api_keys=KEYS_WITH_HOOKS)) as running:
        yield running


def job_when(http: httpx.Client, job_id: str, delivery: str) -> dict[str, Any]:
    """The job as ``GET /jobs/{id}`` shows it, once its webhook is in state ``delivery``."""
    shown: dict[str, Any] = {}

    def reached() -> bool:
        shown.update(http.get(f"/jobs/{job_id}").json())
        return bool(shown.get("webhook", {}).get("state") == delivery)

    wait_until(reached, 10.0, f"the webhook never became {delivery}: {shown}")
    return shown


def test_a_jobs_webhook_is_posted_signed_with_its_keys_secret_and_shown_on_the_job(
    stack: Stack, receiver: WebhookReceiver
) -> None:
    url = f"{receiver.url}/gpulane"
    with stack.client(ACME) as acme:
        submitted = acme.post("/jobs", json={"model": "tiny", "messages": HELLO, "webhook": url})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        job = job_when(acme, job_id, "delivered")
    assert job["spec"]["webhook"] == url and job["state"] == "succeeded"
    (attempt,) = job["webhook"]["deliveries"]
    assert (attempt["status"], attempt["error"]) == (200, None)
    (post,) = receiver.posts(1)
    assert post.headers[DELIVERY_HEADER] == job_id
    assert verified(post, ACME_SECRET, now=int(post.headers[TIMESTAMP_HEADER]))
    assert not verified(post, "another-secret-0000001", now=int(post.headers[TIMESTAMP_HEADER]))
    sent = post.json()["job"]
    assert (sent["id"], sent["caller"], sent["result"]) == (job_id, "acme", job["result"])


@pytest.mark.parametrize(
    ("key", "allowed"),
    [(ACME, ["127.0.0.1"]), (ALICE, "no host yet: list it in webhook_hosts of the API key")],
)
def test_a_webhook_on_a_host_the_key_does_not_allow_is_a_400_naming_the_allowed_hosts(
    stack: Stack, key: str, allowed: Any
) -> None:
    body = {"model": "tiny", "messages": HELLO, "webhook": "https://elsewhere.example/hook"}
    with stack.client(key) as http:
        refused = http.post("/jobs", json=body)
    assert refused.status_code == 400
    error = refused.json()
    assert error["field"] == "webhook"
    assert "'elsewhere.example' is not allowed" in error["problem"]
    if isinstance(allowed, list):
        assert error["allowed"] == allowed
    else:
        assert error["allowed"].startswith(allowed)
    assert stack.lane.list() == ()


def test_a_webhook_that_is_not_an_http_url_is_a_400_naming_the_field(stack: Stack) -> None:
    with stack.client(BOB) as bob:
        refused = bob.post("/jobs", json={"model": "tiny", "messages": HELLO, "webhook": "ftp://x"})
    assert refused.status_code == 400
    assert (refused.json()["field"], refused.json()["allowed"]) == ("webhook", ["http", "https"])
