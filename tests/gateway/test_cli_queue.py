"""``gpulane queue ...`` against a running gateway, and ``--help`` for each command."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from gateway_kit import ADMIN, ALICE, HELLO, running_stack

from actors.cli import main
from actors.testing import wait_until
from protocol import JobNotFoundError, JobState

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d")


def printed(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed, without the in-process gateway's log lines."""
    lines = capsys.readouterr().out.splitlines()
    return "\n".join(line for line in lines if not _LOG_LINE.match(line))


def printed_json(capsys: pytest.CaptureFixture[str]) -> Any:
    """The JSON document the command printed."""
    return json.loads(printed(capsys))


def test_queue_commands_list_show_cancel_and_retry_a_callers_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_stack(tmp_path) as stack:
        stack.lane.pause()
        with stack.client() as http:
            job = http.post("/jobs", json={"model": "tiny", "messages": HELLO}).json()
        base = ["--url", stack.url, "--key", ALICE]
        assert main(["queue", "ls", *base]) == 0
        listing = printed(capsys)
        assert job["id"] in listing and "queued" in listing and "alice" in listing
        assert main(["queue", "show", str(job["seq"]), *base]) == 0
        assert printed_json(capsys)["id"] == job["id"]
        assert main(["queue", "cancel", job["id"], *base]) == 0
        assert printed_json(capsys)["outcome"] == "queued"
        assert main(["queue", "retry", job["id"], *base]) == 0
        retried = printed_json(capsys)
        assert retried["state"] == "queued"
        with pytest.raises(SystemExit, match="403"):
            main(["queue", "resume", *base])
        capsys.readouterr()
        assert main(["queue", "resume", "--url", stack.url, "--key", ADMIN]) == 0
        assert printed_json(capsys) == {"paused": False}
        assert main(["queue", "stats", *base]) == 0
        stats = printed_json(capsys)
        assert stats["paused"] is False and set(stats["slots"]) == {"gpu0"}
        assert stats["slots"]["gpu0"]["backend"] == "local"
        wait_until(lambda: stack.lane.get(retried["id"]).state is JobState.SUCCEEDED)
        assert main(["queue", "ls", *base]) == 0
        lines = {line.split()[1]: line for line in printed(capsys).splitlines()[1:]}
        assert re.search(r"succeeded .* alice\s+local\s+gpu0\s+tiny$", lines[retried["id"]])
        assert re.search(r"cancelled .* alice\s+-\s+-\s+tiny$", lines[job["id"]]), "never ran"
        assert main(["queue", "show", retried["id"], *base]) == 0
        shown = printed_json(capsys)
        assert (shown["backend"], shown["slot"]) == ("local", "gpu0")


def test_queue_clear_and_top_once_work_against_a_running_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_stack(tmp_path) as stack:
        stack.lane.pause()
        with stack.client() as http:
            for _ in range(2):
                http.post("/jobs", json={"model": "tiny", "messages": HELLO, "priority": "high"})
        capsys.readouterr()
        assert main(["top", "--once", "--url", stack.url, "--key", ADMIN]) == 0
        frame = printed(capsys)
        assert "queued 2" in frame and "alice" in frame and "PAUSED" in frame
        assert main(["queue", "clear", "--url", stack.url, "--key", ALICE]) == 0
        assert printed_json(capsys) == {"cancelled": 2, "started_meanwhile": 0, "caller": "alice"}
        assert stack.lane.status()["queued"] == 0


def test_queue_prune_deletes_old_ended_jobs_for_an_admin_and_keeps_the_queued_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_stack(tmp_path) as stack, stack.client(ALICE) as alice:
        ended = alice.post("/jobs", json={"model": "tiny", "messages": HELLO}).json()["id"]
        wait_until(lambda: stack.lane.get(ended).state is JobState.SUCCEEDED)
        stack.lane.pause()
        queued = alice.post("/jobs", json={"model": "tiny", "messages": HELLO}).json()["id"]
        refused = alice.post("/admin/prune", params={"older_than_s": 0})
        assert refused.status_code == 403 and refused.json()["field"] == "authorization"
        with stack.client(ADMIN) as admin:
            kept = admin.post("/admin/prune").json()  # the default age: a week
            assert kept == {"deleted": 0, "older_than_s": stack.lane.config.store.prune_after_s}
            bad = admin.post("/admin/prune", params={"older_than_s": -1})
            assert bad.status_code == 400 and bad.json()["field"] == "query.older_than_s"
        capsys.readouterr()
        prune = ["queue", "prune", "--older-than", "0"]
        assert main([*prune, "--url", stack.url, "--key", ADMIN]) == 0
        assert printed_json(capsys) == {"deleted": 1, "older_than_s": 0.0}
        with pytest.raises(JobNotFoundError):
            stack.lane.get(ended)
        assert stack.lane.get(queued).state is JobState.QUEUED


def test_top_says_when_it_cannot_reach_the_gateway(tmp_path: Path) -> None:
    with running_stack(tmp_path) as stack:
        url = stack.url
    with pytest.raises(SystemExit, match="cannot reach the gateway"):
        main(["top", "--once", "--url", url])


def test_queue_commands_say_when_the_key_is_wrong(tmp_path: Path) -> None:
    with running_stack(tmp_path) as stack, pytest.raises(SystemExit, match="401"):
        main(["queue", "ls", "--url", stack.url, "--key", "wrong-key-0000"])


@pytest.mark.parametrize("command", [[], ["serve"], ["queue"], ["top"], ["reload"]])
def test_help_explains_each_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gpulane")
    expected = {
        (): "queue",
        ("serve",): "--config",
        ("queue",): "sequence number",
        ("top",): "preemptions",
        ("reload",): "SIGHUP",
    }[tuple(command)]
    assert expected in out
