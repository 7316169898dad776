"""The gateway a follower runs (``actors/gateway/follower.py``, ``forward.py``) and its job
reads (``actors/stores/_pg_reader.py``), on the real PostgreSQL.

The leader and the followers are ``follower_kit``'s, on loopback: a new leader per test, on
the module's database. The streaming tests emit a piece only once the client has the one
before: a follower that buffered would hold the first piece back and the test would fail
waiting for it. The clients are the official ``ollama`` and ``openai`` packages; what they
raise on an error status follows their sources (``ollama/_client.py``: ResponseError with
the body's ``error`` and the status; ``openai/_client.py``: InternalServerError for a 5xx,
AuthenticationError for a 401, the body's ``error.message``). Skips naming the missing
server without PostgreSQL, fails under CI.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import httpx
import ollama
import openai
import psycopg
import pytest
from follower_kit import TIMEOUT_S, Follower, Leader, running_follower, running_leader, view_of
from gateway_kit import ADMIN, ALICE, BOB, HELLO, bearer
from postgres_kit import fresh_database

from actors.gateway.forward import FORWARDED_BY
from actors.stores import PgJobReader
from actors.stores._pg_reader import APPLICATION_NAME
from actors.testing import quiesce, wait_until
from protocol import JobNotFoundError, JobState, StoreError, ValidationError
from protocol.cluster import Role
from protocol.messages import ListJobs


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def leader(database: str) -> Iterator[Leader]:
    with running_leader(database) as running:
        yield running


@pytest.fixture
def follower(database: str, leader: Leader) -> Iterator[Follower]:
    with running_follower(database, view_of(leader.url)) as running:
        yield running


def closed_port_url() -> str:
    """A loopback URL where nothing listens (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextmanager
def background(work: Callable[[], None]) -> Iterator[None]:
    """Run ``work`` on a thread while the block runs; when the block ends, wait for it and
    re-raise what it raised (a daemon thread: a failed block does not wait for it)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the test's thread
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    thread.join(TIMEOUT_S)
    assert not thread.is_alive(), "the background work did not end"
    if raised:
        raise raised[0]


# --- streams through the follower ---------------------------------------------------------


def test_the_ollama_clients_streaming_chat_through_a_follower_arrives_piece_by_piece(
    leader: Leader, follower: Follower
) -> None:
    parts: queue.SimpleQueue[ollama.ChatResponse] = queue.SimpleQueue()
    client = ollama.Client(host=follower.url, headers=bearer(ALICE))

    def chat() -> None:
        for part in client.chat(model="tiny", messages=HELLO, stream=True):
            parts.put(part)

    with background(chat):
        call = leader.gpu.next_call()
        assert call.request.messages[-1].content == HELLO[0]["content"]
        for piece in ("Hel", "lo", " there"):
            call.emit(piece)
            part = parts.get(timeout=TIMEOUT_S)  # before the next piece exists
            assert (part.message.content, part.done) == (piece, False)
        call.finish()
    last = parts.get(timeout=TIMEOUT_S)
    assert last.done is True and last.done_reason == "stop"
    assert parts.empty()


def test_the_openai_clients_streaming_chat_through_a_follower_arrives_piece_by_piece(
    leader: Leader, follower: Follower
) -> None:
    deltas: queue.SimpleQueue[tuple[str | None, str | None]] = queue.SimpleQueue()
    client = openai.OpenAI(base_url=f"{follower.url}/v1", api_key=ALICE, max_retries=0)

    def chat() -> None:
        stream = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content or choice.finish_reason:
                    deltas.put((choice.delta.content, choice.finish_reason))

    with background(chat):
        call = leader.gpu.next_call()
        for piece in ("Gen", "eral", " Kenobi"):
            call.emit(piece)
            assert deltas.get(timeout=TIMEOUT_S) == (piece, None)
        call.finish()
    assert deltas.get(timeout=TIMEOUT_S)[1] == "stop"


def test_a_client_that_goes_away_from_a_follower_cancels_its_call_on_the_leader(
    leader: Leader, follower: Follower
) -> None:
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    leave = threading.Event()

    def read_one_line_and_leave() -> None:
        with (
            follower.client() as http,
            http.stream("POST", "/api/chat", json={"model": "tiny", "messages": HELLO}) as answer,
        ):
            lines.put(answer.headers["X-Gpulane-Job"])  # the leader's header, relayed
            lines.put(next(answer.iter_lines()))
            leave.wait(TIMEOUT_S)

    with background(read_one_line_and_leave):
        call = leader.gpu.next_call()
        call.emit("one")
        job_id = lines.get(timeout=TIMEOUT_S)
        assert json.loads(lines.get(timeout=TIMEOUT_S))["message"]["content"] == "one"
        leave.set()
    assert call.wait_cancelled(TIMEOUT_S)
    wait_until(lambda: leader.lane.get(job_id).state is JobState.CANCELLED, TIMEOUT_S, "cancel")


# --- the job surface: forwarded writes, reads from the database --------------------------


def test_a_job_posted_through_a_follower_runs_on_the_leader_and_reads_the_same_on_both(
    leader: Leader, follower: Follower
) -> None:
    with follower.client() as http, httpx.Client(base_url=leader.url, timeout=TIMEOUT_S) as lead:
        posted = http.post("/jobs", json={"model": "tiny", "messages": HELLO, "task_id": "t-1"})
        assert posted.status_code == 202
        job_id, seq = posted.json()["id"], posted.json()["seq"]
        assert leader.lane.get(job_id).spec.caller == "alice"
        call = leader.gpu.next_call()
        quiesce()  # the store has committed the job's move
        started = http.get(f"/jobs/{job_id}").json()
        assert started == lead.get(f"/jobs/{job_id}", headers=bearer(ALICE)).json()
        assert started["state"] in ("loading", "running") and started["spec"]["task_id"] == "t-1"
        events: queue.SimpleQueue[str] = queue.SimpleQueue()

        def follow() -> None:  # the job's events, reconnected through the follower
            with http.stream("GET", f"/jobs/{job_id}/events") as stream:
                for line in stream.iter_lines():
                    if line.startswith("event: "):
                        events.put(line.removeprefix("event: "))

        with background(follow):
            assert events.get(timeout=TIMEOUT_S) == "started"
            call.emit("all ")
            assert events.get(timeout=TIMEOUT_S) == "chunk"
            call.finish("done")
        assert [events.get_nowait() for _ in range(events.qsize())][-1] == "end"
        ended = http.get(f"/jobs/{seq}").json()  # by sequence number too
        assert ended == lead.get(f"/jobs/{job_id}", headers=bearer(ALICE)).json()
        assert (ended["state"], ended["result"]) == ("succeeded", "all done")
        for key, query in ((ALICE, "?limit=5"), (ADMIN, "?state=succeeded&of=alice&limit=3")):
            mine = http.get(f"/jobs{query}", headers=bearer(key)).json()
            assert mine == lead.get(f"/jobs{query}", headers=bearer(key)).json()
            assert mine["jobs"][0]["id"] == job_id
        assert http.get(f"/jobs/{job_id}", headers=bearer(BOB)).status_code == 404
        assert job_id not in {
            j["id"] for j in http.get("/jobs", headers=bearer(BOB)).json()["jobs"]
        }
        assert http.get(f"/jobs/{job_id}", headers=bearer(ADMIN)).json() == ended


def test_the_followers_job_reads_answer_as_the_leaders_do_when_they_refuse(
    follower: Follower,
) -> None:
    with follower.client() as http:
        missing = http.get("/jobs/no-such-job")
        assert (missing.status_code, missing.json()["error"]) == (404, "job: no job 'no-such-job'")
        assert http.get("/jobs/99999999").json()["error"] == "job: no job 99999999"
        bad = http.get("/jobs?limit=0")
        assert bad.status_code == 400 and bad.json()["field"] == "query.limit"
        assert http.get("/jobs", headers=bearer("not-a-key")).status_code == 401
    with follower.client(None) as anonymous:
        assert anonymous.get("/jobs").status_code == 401


def test_a_follower_whose_database_does_not_answer_says_so_without_the_password() -> None:
    view = view_of(closed_port_url())
    with running_follower("postgresql://reader:s3cret@127.0.0.1:1/gpulane", view) as follower:
        with follower.client() as http:
            answer = http.get("/jobs")
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "3"
        assert "job database postgresql://reader@127.0.0.1:1/gpulane" in answer.json()["error"]
        assert "s3cret" not in answer.text


# --- no leader, an unreachable one, a loop ----------------------------------------------


def test_without_a_leader_a_follower_answers_503_with_retry_after_in_each_apis_shape(
    leader: Leader, follower: Follower
) -> None:
    follower.views.current = view_of(None)
    problem = "no leader gateway: a failover is under way; retry after 3 s"
    with follower.client() as http:
        ollama_api = http.post("/api/chat", json={"model": "tiny", "messages": HELLO})
        openai_api = http.post("/v1/chat/completions", json={"model": "tiny", "messages": HELLO})
        jobs = http.post("/jobs", json={"model": "tiny", "messages": HELLO})
        read = http.get("/jobs")
    for answer in (ollama_api, openai_api, jobs):
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "3"
    assert ollama_api.json() == {
        "error": problem,
        "field": None,
        "problem": problem,
        "allowed": None,
    }
    assert jobs.json() == ollama_api.json()  # the job surface speaks Ollama's shape
    assert openai_api.json()["error"] == {
        "message": problem, "type": "server_error", "param": None, "code": "no_leader",
        "allowed": None,
    }  # fmt: skip
    assert read.status_code == 200  # the job reads need no leader
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=follower.url, headers=bearer(ALICE)).generate(model="tiny", prompt="hi")
    assert (refused.value.status_code, refused.value.error) == (503, problem)
    client = openai.OpenAI(base_url=f"{follower.url}/v1", api_key=ALICE, max_retries=0)
    with pytest.raises(openai.InternalServerError, match="a failover is under way"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert follower.metric('gpulane_cluster_forwarded_total{outcome="no_leader"}') == 5
    assert leader.gpu.no_new_call()


def test_an_unreachable_leader_is_a_503_naming_it(leader: Leader, follower: Follower) -> None:
    gone = closed_port_url()
    follower.views.current = view_of(gone)
    with follower.client() as http:
        answer = http.post("/v1/chat/completions", json={"model": "tiny", "messages": HELLO})
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "3"
    message = answer.json()["error"]["message"]
    assert message.startswith(f"the leader gateway at {gone} cannot be reached: ")
    assert "All connection attempts failed" in message and message.endswith("; retry after 3 s")
    assert answer.json()["error"]["code"] == "unreachable"
    assert follower.metric('gpulane_cluster_forwarded_total{outcome="unreachable"}') == 1


def test_a_request_another_gateway_forwarded_is_not_forwarded_again(
    leader: Leader, follower: Follower
) -> None:
    with follower.client() as http:
        answer = http.post(
            "/api/chat", json={"model": "tiny", "messages": HELLO},
            headers={FORWARDED_BY: "follower-9"},
        )  # fmt: skip
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "3"
    assert answer.json()["error"] == (
        "this gateway (follower-1) is not the leader; follower-9 forwarded the request here "
        "from a stale view of the cluster; retry after 3 s"
    )
    assert follower.metric('gpulane_cluster_forwarded_total{outcome="loop"}') == 1
    assert leader.gpu.no_new_call()


def test_two_followers_that_each_take_the_other_for_the_leader_do_not_loop(
    database: str, leader: Leader
) -> None:
    with (
        running_follower(database, view_of(None, "follower-a")) as a,
        running_follower(database, view_of(a.url, "follower-b")) as b,
    ):
        a.views.current = view_of(b.url, "follower-a")
        with a.client() as http:
            answer = http.post("/api/generate", json={"model": "tiny", "prompt": "hi"})
        assert answer.status_code == 503
        assert answer.json()["error"].startswith(
            "this gateway (follower-b) is not the leader; follower-a forwarded the request"
        )
        assert a.metric('gpulane_cluster_forwarded_total{outcome="forwarded"}') == 1
        assert b.metric('gpulane_cluster_forwarded_total{outcome="loop"}') == 1
    assert leader.gpu.no_new_call()


# --- what is forwarded, and what comes back ----------------------------------------------


def test_a_forward_carries_the_request_as_sent_and_relays_the_answer_as_given(
    database: str,
) -> None:
    seen: list[httpx.Request] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"as "
        yield b"given"

    def leader_answers(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            207, content=body(),
            headers=[("X-Leader", "yes"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                     ("Connection", "close, X-Private"), ("X-Private", "hop")],
        )  # fmt: skip

    view = view_of("http://leader.example:11435")
    with (
        running_follower(database, view, httpx.MockTransport(leader_answers)) as follower,
        follower.client() as http,
    ):
        answer = http.put(
            "/api/some%2Fthing?x=1&y=a%20b", content=b'{"k": "v"}',
            headers={"Connection": "keep-alive, X-Hop", "X-Hop": "1", "X-Custom": "kept",
                     "Content-Type": "application/json"},
        )  # fmt: skip
    (sent,) = seen
    assert (sent.method, str(sent.url)) == (
        "PUT", "http://leader.example:11435/api/some%2Fthing?x=1&y=a%20b"
    )  # fmt: skip
    assert sent.headers["Authorization"] == f"Bearer {ALICE}"
    assert sent.headers["Host"] == "leader.example:11435"
    assert sent.headers[FORWARDED_BY] == "follower-1"
    assert sent.headers["X-Custom"] == "kept" and sent.content == b'{"k": "v"}'
    assert "X-Hop" not in sent.headers and "Connection" not in sent.headers
    assert (answer.status_code, answer.content, answer.headers["X-Leader"]) == (
        207,
        b"as given",
        "yes",
    )
    assert answer.headers.get_list("Set-Cookie") == ["a=1", "b=2"]
    assert "X-Private" not in answer.headers


def test_a_leader_that_fails_after_the_request_was_sent_is_a_502_without_retry_after(
    database: str,
) -> None:
    def leader_dies(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    view = view_of("http://leader.example:11435")
    with (
        running_follower(database, view, httpx.MockTransport(leader_dies)) as follower,
        follower.client() as http,
    ):
        answer = http.post("/jobs", json={"model": "tiny", "messages": HELLO})
    assert answer.status_code == 502 and "Retry-After" not in answer.headers
    assert answer.json()["error"] == (
        "the leader gateway at http://leader.example:11435 failed before it answered: "
        "Server disconnected without sending a response."
    )


def test_the_query_string_reaches_the_leader(follower: Follower) -> None:
    with follower.client(ADMIN) as http:
        answer = http.post("/admin/prune?older_than_s=-1")
    assert answer.status_code == 400 and answer.json()["field"] == "query.older_than_s"


def test_a_key_the_leader_refuses_is_refused_through_the_follower_with_the_leaders_status(
    follower: Follower,
) -> None:
    with follower.client("not-a-key") as http:
        ollama_api = http.post("/api/chat", json={"model": "tiny", "messages": HELLO})
        openai_api = http.post("/v1/chat/completions", json={"model": "tiny", "messages": HELLO})
    assert ollama_api.status_code == 401 and ollama_api.json()["error"] == (
        "authorization: unknown API key"
    )
    assert ollama_api.headers["WWW-Authenticate"] == 'Bearer realm="gpulane"'
    assert openai_api.status_code == 401 and openai_api.json()["error"]["code"] == "unauthorized"
    client = openai.OpenAI(base_url=f"{follower.url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="unknown API key"):
        client.models.list()
    with follower.client(BOB) as http:
        assert http.post("/admin/pause").status_code == 403


# --- what the follower serves itself -----------------------------------------------------


def test_readyz_is_200_with_a_leader_and_a_database_and_names_what_is_missing(
    leader: Leader, follower: Follower
) -> None:
    with follower.client(None) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {
            "leader": {"ok": True, "detail": f"leader-1 at {leader.url}"},
            "store": {"ok": True, "detail": "answers"},
        }
        # It has just taken the lease itself: until its lane serves, it is not ready.
        follower.views.current = dataclasses.replace(view_of(leader.url), role=Role.LEADER)
        starting = http.get("/readyz")
        assert starting.status_code == 503 and starting.json()["not_ready"] == ["leader"]
        assert "just taken the lease" in starting.json()["checks"]["leader"]["detail"]
        follower.views.current = view_of(None)
        unready = http.get("/readyz")
        assert unready.status_code == 503 and unready.json()["not_ready"] == ["leader"]
        assert http.get("/healthz").json() == {"ok": True}
    with (
        running_follower("postgresql://r:s3cret@127.0.0.1:1/db", view_of(leader.url)) as orphan,
        orphan.client(None) as http,
    ):
        answer = http.get("/readyz")
    assert answer.status_code == 503 and answer.json()["not_ready"] == ["store"]
    assert answer.json()["checks"]["store"]["detail"] == "no answer within 2 s (StoreError)"


def test_status_is_the_leaders_with_the_followers_view_of_the_cluster(
    leader: Leader, follower: Follower
) -> None:
    view = follower.views.current
    with follower.client() as http, httpx.Client(base_url=leader.url, timeout=TIMEOUT_S) as lead:
        status = http.get("/status").json()
        theirs = lead.get("/status", headers=bearer(ALICE)).json()
        assert set(status) == {*theirs, "cluster", "leader_reachable"}
        assert status["viewer"] == theirs["viewer"] == {"caller": "alice", "admin": False}
        assert status["cluster"] == view.to_dict() and status["leader_reachable"] is True
        with follower.client(None) as browser:
            anonymous = browser.get("/status").json()
        assert anonymous["cluster"] == {**view.to_dict(), "leader_url": None}
        assert http.get("/status", headers=bearer("not-a-key")).status_code == 401
        follower.views.current = view_of(closed_port_url())
        alone = http.get("/status")
        assert alone.status_code == 200
        assert alone.json() == {
            "cluster": follower.views.current.to_dict(),
            "leader_reachable": False,
        }


def test_metrics_show_the_followers_role_the_lease_and_its_forwards(
    follower: Follower,
) -> None:
    with follower.client() as http:
        assert http.get("/api/version").status_code == 200  # one forward
    with follower.client(None) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
    assert follower.metric('gpulane_cluster_role{role="follower"}') == 1
    assert follower.metric('gpulane_cluster_role{role="leader"}') == 0
    assert follower.metric("gpulane_cluster_lease_age_seconds") == 12.5
    assert follower.metric("gpulane_cluster_lease_token") == 7
    assert follower.metric('gpulane_cluster_forwarded_total{outcome="forwarded"}') == 1
    assert follower.metric('gpulane_cluster_forwarded_total{outcome="loop"}') == 0


# --- the reader ----------------------------------------------------------------------------


def test_the_reader_reads_jobs_as_the_leaders_store_does(
    database: str, leader: Leader, follower: Follower
) -> None:
    with follower.client() as http:
        job_id = http.post("/jobs", json={"model": "tiny", "prompt": "x", "kind": "generate"})
    job_id = job_id.json()["id"]
    leader.gpu.next_call().finish("ok")
    wait_until(lambda: leader.lane.get(job_id).state.is_terminal, TIMEOUT_S, "the job's end")
    reader = follower.reader
    job = reader.get(job_id)
    assert job.to_dict() == leader.lane.get(job_id).to_dict()
    assert reader.get(job.seq).to_dict() == job.to_dict()
    for query in (ListJobs(caller="alice", limit=3), ListJobs(limit=2, oldest_first=True),
                  ListJobs(states=frozenset({JobState.SUCCEEDED}), model="tiny")):  # fmt: skip
        assert [j.to_dict() for j in reader.list_jobs(query)] == [
            j.to_dict() for j in leader.lane.list(**dataclasses.asdict(query))
        ]
    assert reader.list_jobs(ListJobs(states=frozenset())) == ()
    with pytest.raises(JobNotFoundError, match="no job 'nope'"):
        reader.get("nope")
    with pytest.raises(JobNotFoundError):
        reader.get(10**12)
    with pytest.raises(ValidationError, match="limit"):
        reader.list_jobs(ListJobs(limit=0))


def test_the_reader_replaces_a_connection_the_server_ended(database: str) -> None:
    reader = PgJobReader(database)
    try:
        reader.ping()
        with psycopg.connect(database, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,),
            ).fetchone()
        assert ended == (1,)
        reader.ping()
        assert reader.list_jobs(ListJobs(limit=1)) is not None
    finally:
        reader.close()


def test_the_reader_names_the_database_without_its_password(database: str) -> None:
    wrong = database.replace("@", "x@", 1)  # the right user with a wrong password
    password = psycopg.conninfo.conninfo_to_dict(wrong)["password"]
    reader = PgJobReader(wrong)
    with pytest.raises(StoreError) as refused:
        reader.ping()
    message = str(refused.value)
    assert "authentication failed" in message and str(password) not in message
    assert message.startswith("job database postgresql://")
