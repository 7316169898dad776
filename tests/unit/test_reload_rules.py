"""What a reload may change while running (``actors.config.check_reload``), the keys a
config change names (``[[backends]]`` by backend name), the cloud client a reload
replaces, and the ``[gateway]`` keys of issue #16 (``allow_cloud`` per key,
``max_image_bytes``, ``exit_delay_s``)."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from actors.backend_factory import BuiltBackend, ReplaceableBackend
from actors.backends.base import CancelToken
from actors.config import (
    ApiKey,
    BackendSettings,
    CloudSettings,
    Config,
    GatewaySettings,
    ReloadRefusedError,
    check_reload,
    config_changes,
)
from actors.testing import FakeBackend, ManualClock
from protocol import BackendRequest, JobSpec, Limits, StoreSettings, ValidationError


def test_config_changes_name_each_changed_key_by_section() -> None:
    old = Config()
    new = old.replace(
        store=StoreSettings(path="elsewhere.sqlite3"),
        limits=Limits(burst=99),
        cloud=CloudSettings(model="claude-b", slots=3),
    )
    assert config_changes(old, old) == ()
    assert config_changes(old, new) == ("store.path", "limits.burst", "cloud.model", "cloud.slots")


@pytest.mark.parametrize(
    ("changes", "cloud_slots", "rebuilt", "refused"),
    [
        (("scheduling.max_preemptions", "limits.burst", "gateway.api_keys"), True, True, ()),
        (("cloud.max_local_wait_s", "cloud.assumed_run_s"), True, False, ()),
        (("cloud.model", "cloud.url"), True, True, ()),  # the lane builds another client
        (("cloud.model",), False, False, ()),  # no cloud slots: nothing uses it yet
        (("cloud.model", "cloud.thinking_mode"), True, False,
         ("cloud.model", "cloud.thinking_mode")),  # the host's own client
        (("cloud.slots",), False, False, ()),
        (("cloud.slots",), True, True, ("cloud.slots",)),
        (("cloud.enabled",), False, True, ("cloud.enabled",)),
        (("store.path", "limits.burst", "backend.url"), True, True, ("store.path", "backend.url")),
        (("store.prune_after_s", "store.prune_interval_s", "store.prune_batch"), False, False, ()),
        (("store.prune_batch", "store.synchronous"), False, False, ("store.synchronous",)),
    ],
)  # fmt: skip
def test_a_reload_refuses_exactly_the_keys_that_cannot_change_while_running(
    changes: tuple[str, ...], cloud_slots: bool, rebuilt: bool, refused: tuple[str, ...]
) -> None:
    if not refused:
        check_reload(changes, cloud_slots, rebuilt)
        return
    with pytest.raises(ReloadRefusedError) as caught:
        check_reload(changes, cloud_slots, rebuilt)
    assert caught.value.keys == refused
    sections = ", ".join(dict.fromkeys(key.split(".")[0] for key in refused))
    assert caught.value.field == sections and caught.value.allowed == "a restart"
    assert isinstance(caught.value, ValidationError)


def _built(backend: FakeBackend, closed: list[str], label: str) -> BuiltBackend:
    return BuiltBackend(backend, "http://fake", (lambda: closed.append(label),))


def test_a_replaced_client_takes_the_next_calls_and_every_client_is_closed_at_the_end() -> None:
    clock = ManualClock()
    first, second = FakeBackend(clock), FakeBackend(clock)
    closed: list[str] = []
    client = ReplaceableBackend(_built(first, closed, "first"))
    request = BackendRequest.for_spec(
        JobSpec.chat(model="m", messages=[{"role": "user", "content": "hi"}])
    )

    def call() -> None:
        client.complete(request, lambda piece: None, CancelToken())

    running = threading.Thread(target=call)
    running.start()
    in_flight = first.next_call()
    client.replace(_built(second, closed, "second"))
    assert client.current is second and closed == []
    in_flight.finish("on the first client")  # a call in flight ends where it began
    running.join()
    after = threading.Thread(target=call)
    after.start()
    second.next_call().finish("on the second")
    after.join()
    assert client.carries == first.carries and client.name == "fake"
    client.close()
    assert closed == ["second", "first"]


def test_a_key_may_allow_the_cloud_in_a_table_or_the_environment_form() -> None:
    assert ApiKey.parse({"key": "sk-bot-12345", "caller": "bot", "allow_cloud": True}).allow_cloud
    assert ApiKey.parse("bot:sk-bot-12345:cloud") == ApiKey("sk-bot-12345", "bot", allow_cloud=True)
    assert not ApiKey.parse("bot:sk-bot-12345:admin").allow_cloud
    with pytest.raises(ValidationError, match="allowed: internal, admin, cloud"):
        ApiKey.parse("bot:sk-bot-12345:clouds")
    with pytest.raises(ValidationError, match=r"gateway\.api_keys\.allow_cloud"):
        ApiKey("sk-bot-12345", "bot", allow_cloud="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_image_bytes": 0}, "gateway.max_image_bytes"),
        ({"exit_delay_s": -1.0}, "gateway.exit_delay_s"),
        ({"exit_delay_s": float("inf")}, "gateway.exit_delay_s"),
    ],
)
def test_the_image_limit_and_the_exit_delay_refuse_bad_values_by_name(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(**changes)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_the_exit_delay_and_the_image_limit_come_from_the_environment() -> None:
    env = {"GPULANE_GATEWAY_EXIT_DELAY_S": "0", "GPULANE_GATEWAY_MAX_IMAGE_BYTES": "5000000"}
    gateway = Config.from_mapping({}, env=env).gateway
    assert (gateway.exit_delay_s, gateway.max_image_bytes) == (0.0, 5_000_000)


A100 = BackendSettings(name="a100", slots=2, models=("llama3.2",))
RTX = BackendSettings(name="rtx", url="http://10.0.0.2:11434")


@pytest.mark.parametrize(
    ("before", "after", "keys"),
    [
        ((A100, RTX), (A100, RTX), ()),
        ((A100, RTX), (dataclasses.replace(A100, slots=3, labels=("big",)), RTX),
         ("backends.a100.labels", "backends.a100.slots")),
        ((A100, RTX), (A100, dataclasses.replace(RTX, models=("qwen2.5:7b",))),
         ("backends.rtx.models",)),
        ((A100, RTX), (A100,), ("backends.rtx",)),
        ((A100,), (A100, RTX), ("backends.rtx",)),
        ((A100, RTX), (RTX, A100), ("backends",)),  # the same backends, the slots reordered
    ],
)  # fmt: skip
def test_config_changes_name_a_backend_and_its_key(
    before: tuple[BackendSettings, ...], after: tuple[BackendSettings, ...], keys: tuple[str, ...]
) -> None:
    changes = config_changes(Config(backends=before), Config(backends=after))
    assert sorted(changes) == sorted(keys)


def test_a_reload_that_changes_a_backend_is_refused_by_name() -> None:
    old = Config(backends=(A100, RTX))
    new = old.replace(backends=(A100, dataclasses.replace(RTX, slots=2)), limits=Limits(burst=99))
    changes = config_changes(old, new)
    assert changes == ("limits.burst", "backends.rtx.slots")
    with pytest.raises(ReloadRefusedError) as caught:
        check_reload(changes, cloud_slots=False, cloud_rebuilt=False)
    assert caught.value.keys == ("backends.rtx.slots",)
    assert caught.value.field == "backends"
    one = Config()
    moved = config_changes(one, Config(backends=(A100,)))
    with pytest.raises(ReloadRefusedError) as caught:
        check_reload(moved, cloud_slots=False, cloud_rebuilt=False)
    assert caught.value.keys == ("backends.a100",)
