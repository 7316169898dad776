"""The ``[gateway]`` config section: TOML tables, environment overrides, refusals naming keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.config import ApiKey, Config, GatewaySettings
from protocol import ValidationError

TOML = """
[gateway]
host = "127.0.0.1"
port = 8080
max_messages = 10

[[gateway.api_keys]]
key = "sk-bot-12345"
caller = "bot"
allow_internal = true

[[gateway.api_keys]]
key = "sk-ops-12345"
caller = "ops"
admin = true
"""


def test_the_gateway_section_reads_keys_and_limits_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "gpulane.toml"
    path.write_text(TOML)
    gateway = Config.load(path, env={}).gateway
    assert (gateway.port, gateway.max_messages, gateway.log_prompts) == (8080, 10, False)
    assert gateway.api_keys == (
        ApiKey("sk-bot-12345", "bot", allow_internal=True),
        ApiKey("sk-ops-12345", "ops", admin=True),
    )


def test_environment_overrides_set_keys_ports_and_prompt_logging(tmp_path: Path) -> None:
    env = {
        "GPULANE_GATEWAY_API_KEYS": "bot:sk-bot-12345:internal, ops:sk-ops-12345:admin",
        "GPULANE_GATEWAY_PORT": "9000",
        "GPULANE_GATEWAY_LOG_PROMPTS": "true",
    }
    gateway = Config.from_mapping({}, env=env).gateway
    assert gateway.port == 9000 and gateway.log_prompts is True
    assert [(k.caller, k.allow_internal, k.admin) for k in gateway.api_keys] == [
        ("bot", True, False),
        ("ops", False, True),
    ]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"host": "0.0.0.0"}, "gateway.api_keys"),
        ({"port": 70000}, "gateway.port"),
        ({"max_body_bytes": 0}, "gateway.max_body_bytes"),
        ({"api_keys": [{"key": "short", "caller": "x"}]}, "gateway.api_keys.key"),
        ({"api_keys": [{"key": "long-enough-key"}]}, "gateway.api_keys.caller"),
        (
            {"api_keys": [{"key": "long-enough-key", "caller": "x", "root": True}]},
            "gateway.api_keys.root",
        ),
        ({"api_keys": "x:long-enough-key:superuser"}, "gateway.api_keys"),
        ({"bind": "127.0.0.1"}, "gateway.bind"),
    ],
)
def test_a_bad_gateway_setting_is_refused_naming_it(
    settings: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Config.from_mapping({"gateway": settings}, env={})
    assert caught.value.field == field


def test_an_open_gateway_is_allowed_on_loopback_only() -> None:
    assert GatewaySettings(host="::1").is_loopback and GatewaySettings(host="localhost").is_loopback
    assert GatewaySettings(host="10.0.0.5", api_keys=(ApiKey("long-enough-key", "x"),)).api_keys
