"""``gpulane serve`` after its supervision tree gives up: unready, then a non-zero exit.

The fault is real, not a hook: the test lowers the running child's file-size limit
(``RLIMIT_FSIZE``, with ``prlimit``) to one byte, so every write to the SQLite file
fails as on a full disk (Python ignores SIGXFSZ, so the write returns EFBIG and SQLite
reports a disk I/O error). The next write a GPU slot tells the store crashes it; each
restarted store crashes again, the root spends its restart budget and gives up
(docs/supervision.md). ``/healthz`` keeps answering 200 (the process lives), ``/readyz``
answers 503 naming the tree, and the process exits with status 1 (``EXIT_FAILED``), at
once on SIGTERM or by itself after ``gateway.exit_delay_s``, so systemd's
``Restart=on-failure`` starts it again. Real time passes here, so waits are bounded
polls (``wait_until``).
"""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import pytest
from serve_process import ServeProcess

from actors.gateway.server import EXIT_FAILED
from actors.testing import wait_until

QUESTION = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}]}


def _config(tmp_path: Path, exit_delay_s: float) -> Path:
    path = tmp_path / "gpulane.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / "jobs.sqlite3"}"\n'
        '[backend]\nkind = "simulated"\n'
        f"[gateway]\nexit_delay_s = {exit_delay_s}\n"
    )
    return path


def _break_the_disk(serve: ServeProcess) -> None:
    """Queue a job while paused, make every file write of the child fail, then resume:
    the slot's first report about the job is a write the store cannot make."""
    assert serve.post("/admin/pause").status_code == 200
    assert serve.post("/jobs", json=QUESTION).status_code == 202
    resource.prlimit(serve.pid, resource.RLIMIT_FSIZE, (1, 1))
    assert serve.post("/admin/resume").status_code == 200


def _gave_up(serve: ServeProcess) -> bool:
    """Whether /readyz says the tree gave up (before, it says which children restart)."""
    response = serve.get("/readyz")
    return response.status_code == 503 and "gave up" in response.json()["checks"]["tree"]["detail"]


@pytest.mark.timeout(180)
def test_readyz_turns_503_after_the_tree_gives_up_and_sigterm_exits_with_status_1(
    tmp_path: Path,
) -> None:
    with ServeProcess(_config(tmp_path, exit_delay_s=600)) as serve:
        wait_until(lambda: serve.answers("/readyz"), 30, "never ready")
        ready = serve.get("/readyz").json()
        assert ready["ready"] is True and ready["not_ready"] == []
        assert set(ready["checks"]) == {"tree", "store", "backend"}
        _break_the_disk(serve)
        wait_until(lambda: _gave_up(serve), 60, "/readyz never said the tree gave up")
        body = serve.get("/readyz").json()
        assert body["ready"] is False and "tree" in body["not_ready"]
        assert serve.answers("/healthz"), "the process lives until it exits"
        refused = serve.post("/jobs", json=QUESTION)
        assert refused.status_code == 503
        serve.send(signal.SIGTERM)
        assert serve.wait() == EXIT_FAILED
    log = serve.log()
    assert "supervisor_escalated" in log and "gateway_unready" in log


@pytest.mark.timeout(180)
def test_after_the_tree_gives_up_gpulane_serve_exits_with_status_1_on_its_own(
    tmp_path: Path,
) -> None:
    with ServeProcess(_config(tmp_path, exit_delay_s=0)) as serve:
        wait_until(lambda: serve.answers("/readyz"), 30, "never ready")
        _break_the_disk(serve)
        assert serve.wait(60) == EXIT_FAILED
    assert "gateway_unready" in serve.log()


def test_sigterm_stops_a_healthy_gpulane_serve_with_status_0(tmp_path: Path) -> None:
    with ServeProcess(_config(tmp_path, exit_delay_s=600)) as serve:
        serve.send(signal.SIGTERM)
        assert serve.wait() == 0
    assert "gpulane_stopped" in serve.log()
