"""``/readyz`` against a running stack, and the body and image limits sized for images.

The limits (docs/gateway.md, "Size limits"): a body of 32 MiB and an image of 20 MiB
decoded. Ollama takes a body of any size on ``/api/chat`` (server/routes.go binds the
JSON with no MaxBytesReader; only a zstd-compressed body is capped, at 20 MiB
decompressed, middleware/openai.go), OpenAI takes images up to 20 MB, and a phone photo
is 3 to 8 MB once base64-encoded: such a photo goes through with the defaults, and an
image over ``max_image_bytes`` is a 413 naming its place in the request.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

from fields_kit import SEER, fields_stack
from gateway_kit import ALICE, KEYS, running_stack

from actors.config import GatewaySettings
from actors.testing import wait_until
from protocol import JobState

LIMIT = 1000  # bytes of decoded image in the tight stack


def image(size: int) -> str:
    """``size`` bytes of (incompressible) image data, base64-encoded."""
    return base64.b64encode(random.Random(size).randbytes(size)).decode()


def test_readyz_is_200_when_ready_and_503_naming_the_backend_while_it_is_down(
    tmp_path: Path,
) -> None:
    with running_stack(tmp_path) as stack, stack.client(key=None) as anyone:
        ready = anyone.get("/readyz")  # probes send no key
        assert ready.status_code == 200
        assert ready.json() == {
            "ready": True,
            "not_ready": [],
            "checks": {
                "tree": {"ok": True, "detail": "up"},
                "store": {"ok": True, "detail": "answers"},
                "backend": {"ok": True, "detail": "local up"},
            },
        }
        stack.sim.refuse_connections()
        with stack.client(ALICE) as alice:
            alice.post("/jobs", json={"model": "tiny", "prompt": "hi", "kind": "generate"})
        wait_until(lambda: anyone.get("/readyz").status_code == 503, 15, "never unready")
        down = anyone.get("/readyz").json()
        assert down["not_ready"] == ["backend"]
        assert down["checks"]["backend"] == {"ok": False, "detail": "local down"}
        assert anyone.get("/healthz").json() == {"ok": True}
        stack.sim.accept_connections()
        wait_until(lambda: anyone.get("/readyz").status_code == 200, 15, "never ready again")


def test_the_default_limits_take_a_phone_photo(tmp_path: Path) -> None:
    settings = GatewaySettings()
    assert settings.max_body_bytes == 32 * 1024 * 1024
    assert settings.max_image_bytes == 20 * 1024 * 1024
    photo = image(4_500_000)  # a 4.5 MB JPEG: 6 MB of base64, six times the old body limit
    with fields_stack(tmp_path) as stack, stack.client() as alice:
        question = {"role": "user", "content": "what is this?", "images": [photo]}
        answer = alice.post(
            "/api/chat", json={"model": SEER, "messages": [question], "stream": False}
        )
        assert answer.status_code == 200, answer.text[:300]
        job = stack.wait_for_job(lambda job: job.state is JobState.SUCCEEDED)
        assert job.spec.messages[0].images == (photo,)


def test_an_image_over_the_limit_is_a_413_naming_its_place_on_every_route(
    tmp_path: Path,
) -> None:
    small, large = image(LIMIT), image(LIMIT + 1)
    allowed = f"gateway.max_image_bytes = {LIMIT}"
    settings = GatewaySettings(api_keys=KEYS, max_image_bytes=LIMIT)
    with running_stack(tmp_path, settings) as stack, stack.client() as alice:
        cases = [
            ("/api/chat", {"messages": [{"role": "user", "content": "?", "images": [large]}]},
             "messages[0].images[0]"),
            ("/api/generate", {"prompt": "?", "images": [small, large]}, "images[1]"),
            ("/jobs", {"messages": [{"role": "user", "content": "?", "images": [large]}]},
             "messages[0].images[0]"),
            ("/jobs", {"kind": "generate", "prompt": "?", "images": [large]}, "images[0]"),
        ]  # fmt: skip
        for path, body, field in cases:
            refused = alice.post(path, json={"model": "tiny", **body})
            assert refused.status_code == 413, (path, refused.text)
            error = refused.json()
            assert error["field"] == field and error["allowed"] == allowed
            assert f"is an image of {LIMIT + 1} bytes; the limit is {LIMIT}" in error["problem"]
        parts = [
            {"type": "text", "text": "?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{large}"}},
        ]
        refused = alice.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": parts}]},
        )
        assert refused.status_code == 413
        assert refused.json()["error"]["param"] == "messages[0].content[1].image_url"
        assert refused.json()["error"]["allowed"] == allowed
        # An image at the limit is taken.
        at_limit = {"model": "tiny", "kind": "generate", "prompt": "?", "images": [small]}
        taken = alice.post("/jobs", json=at_limit)
        assert taken.status_code == 202
        assert stack.lane.get(taken.json()["id"]).spec.images == (small,)
