"""How long the job surface has no leader after a gateway dies: two ``gpulane serve`` on one
PostgreSQL database, against the one-gateway set-up a service manager restarts.

- gpulane, SIGKILL: the leader is killed (``kill -9``) while a client submits; the figure is
  the time from the kill until the other gateway says it leads and ``/readyz`` answers 200
  (its lane recovered what the dead one left and dispatches). The killed one is started
  again and follows, and the next round kills whoever leads. The server sees the dead
  process's sessions end, so the lease is taken without waiting for it to run out.
- gpulane, SIGSTOP: the leader is stopped, not killed, as a host that hangs or drops off the
  network is: its sessions stay open, so the other gateway waits for the lease to run out
  (``cluster.lease_s``, 3 s by default) and then takes it.
- One gateway restarted (the peer: ``gpulane serve`` on SQLite under systemd with
  ``Restart=always``, ``RestartSec=0``): the time from the kill until a new process answers
  ``/readyz`` 200. This is what a user without a second gateway waits.

All rounds drive the same simulated Ollama process (tests/kits/simulated_process.py).
Usage: bench_failover.py [--quick] [--json]   (see /work/shared/BENCHMARKS.md)
"""

from __future__ import annotations

import functools
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
from _common import goal, parse_args, percentile, report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kits"))  # the test kits

from cluster_kit import ROLE_S, Gateway, Submitter, running_cluster, takeover_after_kill
from postgres_kit import fresh_database, require_postgres
from serve_process import ServeProcess
from simulated_process import SimulatedProcess

from actors.testing import wait_until

QUICK = '{"load_seconds": 0.05, "first_token_seconds": 0.0, "tokens_per_second": 400}'
LEASE_S = 3.0  # the default


def follows(gateway: Gateway) -> bool:
    """The gateway says it follows."""
    return gateway.role() == "follower"


def kills(tmp: Path, url: str, rounds: int) -> list[float]:
    """SIGKILL the leader ``rounds`` times under a client's submits; each takeover time."""
    with running_cluster(tmp, url, QUICK, lease_s=LEASE_S) as cluster:
        submitter = Submitter(cluster).start()
        try:
            took = []
            for _ in range(rounds):
                submitter.wait_for_more(5)
                took.append(takeover_after_kill(cluster))
        finally:
            submitter.stop()
    return took


def stops(tmp: Path, url: str, rounds: int) -> list[float]:
    """SIGSTOP the leader ``rounds`` times; each takeover time (then SIGCONT: it follows)."""
    took = []
    with running_cluster(tmp, url, QUICK, lease_s=LEASE_S) as cluster:
        for _ in range(rounds):
            leader = cluster.leader()
            survivor = cluster.other(leader)
            started = time.monotonic()
            leader.process.send(signal.SIGSTOP)
            try:
                wait_until(survivor.leads, ROLE_S, "the survivor to lead")
                took.append(time.monotonic() - started)
            finally:
                leader.process.send(signal.SIGCONT)
            wait_until(functools.partial(follows, leader), ROLE_S, "the woken one to follow")
    return took


def restarts(tmp: Path, rounds: int) -> list[float]:
    """One gateway on SQLite, killed and started again at once; each time until ready."""
    took = []
    with SimulatedProcess("--profile", f"llama3.2={QUICK}") as model_server:
        config = tmp / "single.toml"
        config.write_text(
            f'[store]\npath = "{tmp / "single.sqlite3"}"\n'
            f'[backend]\nkind = "ollama"\nurl = "{model_server.url}"\n'
        )
        gateway = ServeProcess(config).start()
        try:
            wait_until(lambda: gateway.answers("/readyz"), ROLE_S, "ready")
            for _ in range(rounds):
                started = time.monotonic()
                gateway.send(signal.SIGKILL)
                gateway.wait()
                gateway = ServeProcess(config, port=gateway.port).start()
                wait_until(functools.partial(gateway.answers, "/readyz"), ROLE_S, "ready again")
                took.append(time.monotonic() - started)
        finally:
            gateway.close()
    return took


def summary(name: str, took: list[float], results: dict[str, float]) -> None:
    p50, p99 = percentile(took, 50), percentile(took, 99)
    results[f"{name}.takeover_p50_s"] = p50
    results[f"{name}.takeover_p99_s"] = p99
    results[f"{name}.takeover_max_s"] = max(took)
    print(f"{name:<28} {len(took):>6} {p50:>8.2f} {p99:>8.2f} {max(took):>8.2f}")


def main() -> None:
    args = parse_args(__doc__ or "")
    kill_rounds, stop_rounds, restart_rounds = (5, 2, 3) if args.quick else (20, 5, 10)
    results: dict[str, float] = {}
    goals = []
    print(f"{'time without a leader':<28} {'rounds':>6} {'p50 s':>8} {'p99 s':>8} {'max s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            require_postgres()
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            print(f"gpulane rows skipped: {exc.msg}")
        else:
            with fresh_database() as url:
                summary("gpulane.sigkill", kills(Path(tmp), url, kill_rounds), results)
            with fresh_database() as url:
                summary("gpulane.sigstop", stops(Path(tmp), url, stop_rounds), results)
            for name in ("gpulane.sigkill", "gpulane.sigstop"):
                p99 = results[f"{name}.takeover_p99_s"]
                goals.append(goal(f"{name}.takeover_p99_s", "<=", 5.0, p99))
        summary("one_gateway.restart", restarts(Path(tmp), restart_rounds), results)
    report("failover", results, goals, args.json)


if __name__ == "__main__":
    main()
