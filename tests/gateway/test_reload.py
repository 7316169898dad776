"""Reloading a running gateway's config file: SIGHUP, ``POST /admin/reload`` and
``gpulane reload``; the command line's ``--port`` is not compared with the file; a change
that cannot apply while running is a 409 naming each key, and nothing changes.

The SIGHUP and ``--port`` tests run ``gpulane serve`` as a process of its own
(tests/kits/serve_process.py); real time passes there, so waits are bounded polls.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from gateway_kit import ADMIN, running_stack
from serve_process import ServeProcess

from actors.cli import main
from actors.testing import wait_until

OPS = "ops-key-000001"
NEW = "newbie-key-0002"


def _serve_config(path: Path, *extra: str) -> Path:
    """A config for ``gpulane serve`` on the simulated backend with an admin key."""
    path.write_text(
        f'[store]\npath = "{path.parent / "jobs.sqlite3"}"\n'
        '[backend]\nkind = "simulated"\n'
        f'[[gateway.api_keys]]\nkey = "{OPS}"\ncaller = "ops"\nadmin = true\n' + "".join(extra)
    )
    return path


def _key(key: str, caller: str) -> str:
    return f'[[gateway.api_keys]]\nkey = "{key}"\ncaller = "{caller}"\n'


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_sighup_makes_gpulane_serve_reload_its_config_file(tmp_path: Path) -> None:
    config = _serve_config(tmp_path / "gpulane.toml")
    with ServeProcess(config) as serve:
        assert serve.get("/queue", headers=_as(NEW)).status_code == 401
        _serve_config(config, _key(NEW, "newbie"))
        serve.send(signal.SIGHUP)
        wait_until(lambda: serve.get("/queue", headers=_as(NEW)).status_code == 200, 30)
        # A refused reload changes nothing and says why in the log.
        config.write_text(config.read_text().replace("jobs.sqlite3", "elsewhere.sqlite3"))
        serve.send(signal.SIGHUP)
        wait_until(lambda: "config_reload_refused" in serve.log(), 30)
        assert serve.get("/queue", headers=_as(NEW)).status_code == 200
        serve.send(signal.SIGTERM)
        assert serve.wait() == 0
    log = serve.log()
    assert "config_reloaded_on_sighup" in log and "gateway.api_keys" in log
    refused = next(line for line in log.splitlines() if "config_reload_refused" in line)
    assert "store.path" in refused


def test_a_port_given_on_the_command_line_stays_through_reloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _serve_config(tmp_path / "gpulane.toml")
    with ServeProcess(config) as serve:  # --port N, and the file says nothing (11435)
        reloaded = serve.post("/admin/reload", headers=_as(OPS))
        assert reloaded.status_code == 200 and reloaded.json()["changed"] == []
        _serve_config(config, "[gateway]\nport = 18080\n", _key(NEW, "newbie"))
        reloaded = serve.post("/admin/reload", headers=_as(OPS))
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["changed"] == ["gateway.api_keys"]
        assert serve.answers("/healthz"), "still on the command line's port"
        # The file's host was not overridden: a change to it needs a restart.
        _serve_config(config, '[gateway]\nhost = "localhost"\n')
        refused = serve.post("/admin/reload", headers=_as(OPS))
        assert refused.status_code == 409
        assert refused.json()["field"] == "gateway"
        assert "gateway.host" in refused.json()["problem"]
        _serve_config(config)
        capsys.readouterr()
        assert main(["reload", "--url", serve.url, "--key", OPS]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed == {"reloaded": True, "changed": ["gateway.api_keys"], "api_keys": 1}
        assert serve.get("/queue", headers=_as(NEW)).status_code == 401


STACK_FILE = (
    '[store]\npath = "{store}"\nsynchronous = "NORMAL"\n'
    "[retry]\nbase_delay_s = 0.0\nmax_delay_s = 0.0\njitter = 0.0\n"
    '[[gateway.api_keys]]\nkey = "{admin}"\ncaller = "ops"\nadmin = true\n'
)


def test_a_reload_that_changes_the_store_or_the_backend_is_a_409_naming_each_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gpulane.toml"
    base = STACK_FILE.format(store=tmp_path / "jobs.sqlite3", admin=ADMIN)
    path.write_text(base)
    with running_stack(tmp_path, config_path=path) as stack, stack.client(ADMIN) as admin:
        burst = stack.lane.config.limits.burst
        moved = base.replace("jobs.sqlite3", "elsewhere.sqlite3")
        path.write_text(moved + "[backend]\nslots = 2\n[limits]\nburst = 99\n")
        refused = admin.post("/admin/reload")
        assert refused.status_code == 409
        body = refused.json()
        assert body["field"] == "store, backend" and body["allowed"] == "a restart"
        assert body["problem"] == "store.path, backend.slots cannot change while running"
        assert stack.lane.config.limits.burst == burst, "nothing of a refused reload applies"
        path.write_text(base + "[limits]\nburst = 99\n")
        applied = admin.post("/admin/reload")
        # The stack started with gateway_kit's four keys; the file holds one of them.
        assert applied.json()["changed"] == ["limits.burst", "gateway.api_keys"]
        assert stack.lane.config.limits.burst == 99
        path.unlink()
        missing = admin.post("/admin/reload")
        assert missing.status_code == 409 and missing.json()["field"] == "config"
