"""``[[backends]]``: several model servers by name, each with every ``[backend]`` key plus
``name``, ``labels`` and ``models``; every bad value names ``backends.<name>.<key>`` (or
``backends[<index>].name`` while the name itself is wrong), and the one ``[backend]``
stays the one-server case, named ``local``."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from actors.config import BackendSettings, Config
from protocol import LOCAL_BACKEND, ValidationError

THREE_HOSTS = """
[[backends]]
name = "a100"
url = "http://10.0.0.1:11434"
slots = 2
labels = ["big", "fast"]
models = ["llama3.3:70b", "qwen2.5:32b"]

[[backends]]
name = "rtx-4090"
url = "http://10.0.0.2:11434"
models = ["llama3.2", "qwen2.5:7b"]

[[backends]]
name = "mac_studio"
kind = "openai"
url = "http://10.0.0.3:8080"
resume = "regenerate"
"""


def parse(data: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    return Config.from_mapping(data, env=env or {})


def refused(data: dict[str, Any], env: dict[str, str] | None = None) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        parse(data, env)
    return caught.value


def test_three_hosts_from_a_file_keep_their_order_names_labels_and_catalogs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gpulane.toml"
    path.write_text(THREE_HOSTS, encoding="utf-8")
    config = Config.load(path, env={})
    assert [host.name for host in config.hosts] == ["a100", "rtx-4090", "mac_studio"]
    a100, rtx, mac = config.backends
    assert (a100.slots, a100.labels, a100.models) == (
        2, ("big", "fast"), ("llama3.3:70b", "qwen2.5:32b"),
    )  # fmt: skip
    assert (rtx.labels, rtx.models, rtx.kind) == ((), ("llama3.2", "qwen2.5:7b"), "ollama")
    assert (mac.kind, mac.resume, mac.models) == ("openai", "regenerate", None), "read from it"
    assert config.backend == BackendSettings(), "[backend] is not set"


def test_the_one_backend_is_named_local_and_is_all_the_hosts() -> None:
    config = parse({"backend": {"url": "http://gpu:11434", "models": ["llama3.2"]}})
    assert config.backends == ()
    assert config.hosts == (config.backend,)
    assert config.backend.name == LOCAL_BACKEND
    assert config.backend.models == ("llama3.2",)
    assert Config().hosts == (BackendSettings(),)


def test_backend_and_backends_together_are_refused_naming_both() -> None:
    error = refused({"backend": {"slots": 2}, "backends": [{"name": "a100"}]})
    assert error.field == "backend, backends"
    assert "[backend]" in str(error) and "[[backends]]" in str(error)
    with pytest.raises(ValidationError, match="backend, backends"):
        Config(backend=BackendSettings(slots=2), backends=(BackendSettings(name="a100"),))


@pytest.mark.parametrize(
    ("table", "field", "says"),
    [
        ({"name": "a100", "slots": 0}, "backends.a100.slots", "integer of 1 or more"),
        ({"name": "a100", "kind": "vllm"}, "backends.a100.kind", "unknown backend"),
        ({"name": "a100", "url": "gpu:11434"}, "backends.a100.url", "http(s) URL"),
        ({"name": "a100", "resume": "again"}, "backends.a100.resume", "unknown mode"),
        ({"name": "a100", "schema_form": "x"}, "backends.a100.schema_form", "unknown form"),
        ({"name": "a100", "embed_workers": 0}, "backends.a100.embed_workers", "1 or more"),
        ({"name": "a100", "gpus": 2}, "backends.a100.gpus", "unknown setting"),
        ({"name": "a100", "labels": "big"}, "backends.a100.labels", "list of strings"),
        ({"name": "a100", "labels": ["big", ""]}, "backends.a100.labels", "non-empty"),
        ({"name": "a100", "labels": ["big", "big"]}, "backends.a100.labels", "listed twice"),
        ({"name": "a100", "models": []}, "backends.a100.models", "is empty"),
        ({"name": "a100", "models": [3]}, "backends.a100.models", "non-empty string"),
        ({"name": "local", "slots": 0}, "backends.local.slots", "integer of 1 or more"),
        ({"slots": 2}, "backends[0].name", "is required"),
        ({"name": "A100"}, "backends[0].name", "not a backend name"),
        ({"name": "-a"}, "backends[0].name", "not a backend name"),
        ({"name": "a.b"}, "backends[0].name", "not a backend name"),
        ({"name": 7}, "backends[0].name", "not a backend name"),
        ({"name": "cloud"}, "backends[0].name", "cloud fallback"),
    ],
)  # fmt: skip
def test_a_bad_backends_table_is_refused_naming_the_backend_and_the_key(
    table: dict[str, Any], field: str, says: str
) -> None:
    error = refused({"backends": [table]})
    assert error.field == field
    assert says in str(error)


def test_a_backend_listed_twice_is_refused_at_its_index() -> None:
    error = refused({"backends": [{"name": "a100"}, {"name": "rtx"}, {"name": "a100"}]})
    assert error.field == "backends[2].name"
    assert "'a100' is listed twice" in str(error)


def test_backends_must_be_an_array_of_tables() -> None:
    assert refused({"backends": {"name": "a100"}}).field == "backends"
    assert refused({"backends": ["a100"]}).field == "backends[0]"
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads('[backends]\nname = "a"\n[[backends]]\nname = "b"\n')


def test_the_one_backend_cannot_be_renamed() -> None:
    error = refused({"backend": {"name": "a100"}})
    assert error.field == "backend.name"
    assert "[[backends]]" in str(error)
    assert refused({}, {"GPULANE_BACKEND_NAME": "a100"}).field == "backend.name"


def test_environment_overrides_set_the_one_backend_only() -> None:
    env = {"GPULANE_BACKEND_SLOTS": "2", "GPULANE_BACKEND_MODELS": "llama3.2, qwen2.5:7b"}
    config = parse({}, env)
    assert config.backend.slots == 2
    assert config.backend.models == ("llama3.2", "qwen2.5:7b")
    error = refused({"backends": [{"name": "a100"}]}, {"GPULANE_BACKEND_URL": "http://x:1"})
    assert error.field == "GPULANE_BACKEND_URL"
    assert "[[backends]]" in str(error)


def test_backends_given_in_code_are_kept_as_a_tuple_of_settings() -> None:
    config = Config(backends=[BackendSettings(name="a100")])  # type: ignore[arg-type]
    assert config.backends == (BackendSettings(name="a100"),)
    with pytest.raises(ValidationError) as caught:
        Config(backends=({"name": "a100"},))  # type: ignore[arg-type]
    assert caught.value.field == "backends"
