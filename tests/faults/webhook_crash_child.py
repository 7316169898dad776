"""Child process for the webhook kill -9 test: a GpuLane whose job ends with a webhook pending.

Usage: python webhook_crash_child.py DB_PATH WEBHOOK_URL SECRET. Submits one job naming
WEBHOOK_URL, which the fake GPU answers at once, and prints ``ENDED <job id>`` (flushed)
once its end is committed. Its webhook delivery actor posts through a transport that
prints ``POSTING <job id>`` and then never sends anything, so when the parent kills this
process the delivery has been committed and picked up, and nothing has left the process.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[2])]

import httpx  # noqa: E402 (after the sys.path line)
import pykka  # noqa: E402

from actors import Config, GpuLane  # noqa: E402
from actors.logs import configure_logging  # noqa: E402
from actors.runtime import SystemClock  # noqa: E402
from actors.testing import FakeCall, FakeGpu  # noqa: E402
from actors.tree import LaneWiring  # noqa: E402
from actors.webhooks import WebhookDelivery  # noqa: E402
from protocol import JobSpec, StoreSettings  # noqa: E402
from protocol.config import WebhookSettings  # noqa: E402
from protocol.webhook import DELIVERY_HEADER  # noqa: E402


class NeverSent(httpx.BaseTransport):
    """Says which delivery it was handed, then holds it for good."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sys.stdout.write(f"POSTING {request.headers[DELIVERY_HEADER]}\n")
        sys.stdout.flush()
        threading.Event().wait()
        raise AssertionError("unreachable")


def held_webhooks(wiring: LaneWiring) -> pykka.ActorRef[Any]:
    return WebhookDelivery.start(
        store=wiring.refs.ref_for("store"),
        config=wiring.config,
        clock=wiring.clock,
        timers=wiring.timers,
        transport=NeverSent(),
    )


def answer(call: FakeCall) -> None:
    call.finish("done")


def main(path: str, url: str, secret: str) -> None:
    configure_logging("warning")  # to stderr: stdout carries only the lines the parent reads
    clock = SystemClock()
    webhooks = WebhookSettings(secret=secret, allowed_hosts=("127.0.0.1",))
    lane = GpuLane.start(
        Config(store=StoreSettings(path=path), webhooks=webhooks),
        gpu=FakeGpu(clock, script=answer),
        clock=clock,
        factories={"webhooks": held_webhooks},
    )
    spec = JobSpec.chat(model="m", messages=[{"role": "user", "content": "hi"}], webhook=url)
    ticket = lane.submit(spec, detach=True)
    lane.wait(ticket.job_id, timeout=30)
    sys.stdout.write(f"ENDED {ticket.job_id}\n")
    sys.stdout.flush()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
