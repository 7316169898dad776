"""Two ``gpulane serve`` processes on one PostgreSQL database, for the failover tests and the
takeover benchmark (docs/architecture.md section 14).

Both gateways drive the same model server: the simulated Ollama in a process of its own.
An audit trigger, installed by the test on the test's own database (never by gpulane),
records every write to ``jobs`` with the writing session's ``application_name``
(``gpulane store <holder>``) and the database's clock, so a test can say which gateway
wrote what, and when, against the lease's ``acquired_at``.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from serve_process import ServeProcess, free_port
from simulated_process import SimulatedProcess

from actors.testing import wait_until

__all__ = ["AUDIT", "Cluster", "Gateway", "Submitter", "running_cluster"]

# How long a role change may take before a test calls it broken (never a pause).
ROLE_S = 30.0

AUDIT = """
CREATE TABLE IF NOT EXISTS test_audit (
    n BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,
    app TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL
);
CREATE OR REPLACE FUNCTION test_audit_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO test_audit (job_id, state, app, at)
        VALUES (NEW.id, NEW.state, current_setting('application_name'), clock_timestamp());
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS test_audit_jobs ON jobs;
CREATE TRIGGER test_audit_jobs AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION test_audit_job();
"""


@dataclass
class Gateway:
    """One gateway of the cluster: its node name, config file and (current) process."""

    node: str
    config: Path
    port: int
    process: ServeProcess

    @property
    def url(self) -> str:
        return self.process.url

    def role(self) -> str | None:
        """What its ``/metrics`` says it is now (None: it does not answer). Not ``/status``:
        a follower's asks the leader's, which waits out a stopped leader."""
        try:
            answer = httpx.get(self.url + "/metrics", timeout=2)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        for role in ("leader", "follower"):
            if f'gpulane_cluster_role{{role="{role}"}} 1.0' in answer.text:
                return role
        return None

    def leads(self) -> bool:
        """It says it leads and is ready to dispatch."""
        return self.role() == "leader" and self.process.answers("/readyz")


class Cluster:
    """Two gateways on one database and one model server; start, kill and restart them."""

    def __init__(self, tmp_path: Path, url: str, model_server: str, *, lease_s: float) -> None:
        self.url = url
        self.gateways = [
            self._gateway(tmp_path, node, model_server, lease_s) for node in ("gw-a", "gw-b")
        ]

    def _gateway(self, tmp_path: Path, node: str, model_server: str, lease_s: float) -> Gateway:
        config = tmp_path / f"{node}.toml"
        config.write_text(
            f'[store]\nurl = "{self.url}"\n'
            f'[backend]\nkind = "ollama"\nurl = "{model_server}"\n'
            "[limits]\nrequests_per_minute = 0\nmax_queued_per_caller = 0\n"
            "max_external_queue = 0\n"
            f'[cluster]\nnode = "{node}"\nlease_s = {lease_s}\npoll_s = 0.1\n'
            "[residency]\npoll_interval_s = 0.5\n"
        )
        port = free_port()
        return Gateway(node, config, port, ServeProcess(config, port=port))

    def leader(self) -> Gateway:
        """The gateway that leads now (waits for one)."""
        found: list[Gateway] = []

        def one_leads() -> bool:
            found[:] = [g for g in self.gateways if g.leads()]
            return len(found) == 1

        wait_until(one_leads, ROLE_S, "one gateway to lead")
        return found[0]

    def other(self, gateway: Gateway) -> Gateway:
        return next(g for g in self.gateways if g is not gateway)

    def kill(self, gateway: Gateway) -> None:
        """SIGKILL the gateway's process (nothing cleaned up, as in a crash)."""
        gateway.process.send(signal.SIGKILL)
        gateway.process.wait()

    def restart(self, gateway: Gateway) -> None:
        """Start the gateway again on its port (it comes back as a follower)."""
        gateway.process = ServeProcess(gateway.config, port=gateway.port).start()

    def install_audit(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(AUDIT)

    def audit(self) -> list[tuple[str, str, str, Any]]:
        """Every audited write: (job id, state, session name, when), in order."""
        with psycopg.connect(self.url) as conn:
            rows = conn.execute("SELECT job_id, state, app, at FROM test_audit ORDER BY n")
            return [tuple(row) for row in rows]  # type: ignore[misc]

    def states(self) -> dict[str, str]:
        """Every job's state in the database, by id."""
        with psycopg.connect(self.url) as conn:
            return dict(conn.execute("SELECT id, state FROM jobs").fetchall())

    def lease(self) -> tuple[str, int, Any]:
        """(holder, token, acquired_at) of the lease now."""
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT holder, token, acquired_at FROM gpulane_lease WHERE id = 1"
            ).fetchone()
        assert row is not None
        return str(row[0]), int(row[1]), row[2]

    def close(self) -> None:
        for gateway in self.gateways:
            gateway.process.close()


@contextmanager
def running_cluster(tmp_path: Path, url: str, profile: str, *, lease_s: float) -> Iterator[Cluster]:
    """A model server and two gateways on ``url``, the first started first (it leads), the
    audit installed once the schema exists."""
    with SimulatedProcess("--profile", f"llama3.2={profile}") as model_server:
        cluster = Cluster(tmp_path, url, model_server.url, lease_s=lease_s)
        try:
            first, second = cluster.gateways
            first.process.start()
            wait_until(first.leads, ROLE_S, "the first gateway to lead")
            cluster.install_audit()
            second.process.start()
            wait_until(lambda: second.role() == "follower", ROLE_S, "the second to follow")
            yield cluster
        finally:
            cluster.close()


class Submitter:
    """A client thread posting jobs to the gateways in turn, as a user's would: a job counts
    as accepted when a gateway answers 202 with its id; any other answer (a 503 while the
    gateways fail over, a connection refused by a killed one) is retried after a short
    back-off, as ``Retry-After`` asks."""

    BACKOFF_S = 0.05

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self.accepted: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="submitter")
        self._lock = threading.Lock()

    def start(self) -> Submitter:
        self._thread.start()
        return self

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def wait_for_more(self, more: int) -> None:
        """Return once ``more`` jobs beyond those accepted so far are accepted."""
        wanted = self.count() + more
        wait_until(lambda: self.count() >= wanted, ROLE_S, f"{more} more jobs to be accepted")

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        return list(self.accepted)

    def _run(self) -> None:
        for n in itertools.count():
            if self._stop.is_set():
                return
            gateway = self._cluster.gateways[n % 2]
            body = {"model": "llama3.2", "messages": [{"role": "user", "content": f"job {n}"}]}
            try:
                answer = httpx.post(gateway.url + "/jobs", json=body, timeout=10)
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.status_code == 202:
                with self._lock:
                    self.accepted.append(answer.json()["id"])
            else:
                self.refused += 1
                self._stop.wait(self.BACKOFF_S)


def takeover_after_kill(cluster: Cluster) -> float:
    """Kill the leader with SIGKILL; the seconds until the other gateway leads and is ready
    (measured, polled every few milliseconds)."""
    leader = cluster.leader()
    survivor = cluster.other(leader)
    started = time.monotonic()
    cluster.kill(leader)
    wait_until(survivor.leads, ROLE_S, "the survivor to lead")
    took = time.monotonic() - started
    cluster.restart(leader)
    return took
