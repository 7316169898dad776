"""Admission holds across gateways: a follower forwards every request that creates work and
the leader decides its admission (docs/architecture.md section 14, "Followers forward"), so
one caller's rate limit and queue cap count its requests through any gateway, and a request
refused through a follower is refused as the leader alone refuses it.

Each test has a fresh PostgreSQL database (a leader counts every job not yet ended in its
database when it starts), a leader and a follower from ``follower_kit``. The limits give
alice a burst of 2 requests and then one every 10 minutes, longer than any test runs, so her
third request is refused however long the test takes; bob has no rate limit, so his queue
cap of 3 is what refuses him. A refusal comes back as ``errors.as_gateway_error`` words it: a
rate limit is a 429, a full queue a 503, each with ``Retry-After`` and the limit named in
``field``. The official ``ollama`` client raises ResponseError with the status and the body's
``error`` (``ollama/_client.py``, ``_request_raw``: ``raise_for_status`` then
``ResponseError(response.text, status_code)``; ``_types.py`` reads ``error`` from the JSON).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest
from follower_kit import TIMEOUT_S, Follower, Leader, running_follower, running_leader, view_of
from gateway_kit import ALICE, BOB, HELLO, bearer
from postgres_kit import fresh_database

from actors.testing import wait_until
from protocol import Limits
from protocol.messages import ListJobs

LIMITS = Limits(
    requests_per_minute=0.1, burst=2, max_queued_per_caller=3,
    callers={"bob": {"requests_per_minute": 0}},
)  # fmt: skip
JOB = {"model": "tiny", "messages": HELLO}


@pytest.fixture
def gateways() -> Iterator[tuple[Leader, Follower]]:
    with (
        fresh_database() as database,
        running_leader(database, LIMITS) as leader,
        running_follower(database, view_of(leader.url)) as follower,
    ):
        yield leader, follower


def leader_client(leader: Leader, key: str) -> httpx.Client:
    return httpx.Client(base_url=leader.url, headers=bearer(key), timeout=TIMEOUT_S)


def admission(leader: Leader) -> Any:
    """The leader's RateLimiter as its status shows it."""
    return leader.lane.status()["admission"]


def test_two_submits_through_the_leader_spend_the_burst_and_the_followers_third_is_refused_429(
    gateways: tuple[Leader, Follower],
) -> None:
    leader, follower = gateways
    with leader_client(leader, ALICE) as lead, follower.client(ALICE) as follow:
        assert [lead.post("/jobs", json=JOB).status_code for _ in range(2)] == [202, 202]
        through_follower = follow.post("/jobs", json=JOB)
        through_leader = lead.post("/jobs", json=JOB)
    for refused in (through_follower, through_leader):
        assert refused.status_code == 429
        body = refused.json()
        assert body["field"] == "requests_per_minute"
        figure, _, seconds = body["problem"].rpartition(" retry after ")
        assert figure == "requests_per_minute exceeded: 2 of 2 used;"
        assert int(refused.headers["Retry-After"]) == math.ceil(float(seconds.removesuffix("s")))
        assert 0 < int(refused.headers["Retry-After"]) <= 600  # a token every 10 minutes
    for host in (follower.url, leader.url):
        with pytest.raises(ollama.ResponseError) as chat_refused:
            ollama.Client(host=host, headers=bearer(ALICE)).chat(model="tiny", messages=HELLO)
        assert chat_refused.value.status_code == 429
        assert chat_refused.value.error.startswith(
            "requests_per_minute: requests_per_minute exceeded: 2 of 2 used; retry after "
        )
    assert admission(leader)["rejections_by_caller"] == {"alice": 4}
    assert follower.metric('gpulane_cluster_forwarded_total{outcome="forwarded"}') == 2
    assert len(follower.reader.list_jobs(ListJobs(caller="alice"))) == 2


def test_the_queue_cap_counts_a_callers_jobs_submitted_through_either_gateway(
    gateways: tuple[Leader, Follower],
) -> None:
    leader, follower = gateways
    with leader_client(leader, BOB) as lead, follower.client(BOB) as follow:
        admitted = [http.post("/jobs", json=JOB).status_code for http in (lead, follow, lead)]
        assert admitted == [202, 202, 202]
        through_follower = follow.post("/jobs", json=JOB)
        through_leader = lead.post("/jobs", json=JOB)
        full = "queued_per_caller is full: 3 of 3 queued; retry after 1.0s"
        for refused in (through_follower, through_leader):
            assert (refused.status_code, refused.headers["Retry-After"]) == (503, "1")
            assert refused.json() == {
                "error": f"queued_per_caller: {full}", "field": "queued_per_caller",
                "problem": full, "allowed": None,
            }  # fmt: skip
        with pytest.raises(ollama.ResponseError) as chat_refused:
            ollama.Client(host=follower.url, headers=bearer(BOB)).chat(model="tiny", messages=HELLO)
        assert (chat_refused.value.status_code, chat_refused.value.error) == (
            503,
            f"queued_per_caller: {full}",
        )
        assert admission(leader)["queued_by_caller"] == {"bob": 3}
        assert len(follower.reader.list_jobs(ListJobs(caller="bob"))) == 3

        leader.gpu.next_call().finish("done")  # a job that ends frees its place
        wait_until(
            lambda: admission(leader)["queued_by_caller"] == {"bob": 2}, TIMEOUT_S, "a free place"
        )
        assert follow.post("/jobs", json=JOB).status_code == 202
        assert admission(leader)["queued_by_caller"] == {"bob": 3}
