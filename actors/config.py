"""gpulane's configuration: TOML file, environment overrides, validated into frozen values.

Every section maps onto a dataclass; an unknown key or a bad value is a ValidationError
that names ``section.key``. ``GPULANE_<SECTION>_<KEY>`` environment variables override
the file (e.g. ``GPULANE_STORE_PATH=/var/lib/gpulane.sqlite3``). Several model servers
are a ``[[backends]]`` array of tables instead of the one ``[backend]``; its errors name
``backends.<name>.<key>``, and no environment variable overrides it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from actors.backends.anthropic import ANTHROPIC_URL, ThinkingMode
from actors.backends.openai_compat import RESUME_MODES, SCHEMA_FORMS
from actors.cloud import CloudPolicy
from protocol import (
    LOCAL_BACKEND,
    ActiveHours,
    Limits,
    ResidencySettings,
    RetryPolicy,
    SchedulingPolicy,
    StoreSettings,
    ValidationError,
)
from protocol.cluster import ClusterSettings
from protocol.config import AlertSettings, WebhookSettings
from protocol.webhook import check_secret, parse_hosts

__all__ = [
    "CLOUD_BACKEND",
    "ApiKey",
    "BackendSettings",
    "CloudSettings",
    "Config",
    "GatewaySettings",
    "ReloadRefusedError",
    "check_reload",
    "config_changes",
]

BACKEND_KINDS = ("ollama", "simulated", "openai")
THINKING_MODES: tuple[str, ...] = get_args(ThinkingMode)  # cloud.thinking_mode
BACKEND_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # a backend's name: in child ids and labels
_NAME_RULE = "lower-case letters, digits, '_' and '-', starting with a letter or digit"
CLOUD_BACKEND = "cloud"  # where the cloud fallback's slots run: no model server's name


@dataclasses.dataclass(frozen=True, slots=True)
class BackendSettings:
    """One model server the GPU slots drive: ``[backend]`` (named ``local``), or one table
    of ``[[backends]]``. ``models`` is its catalog when given; otherwise the server's."""

    name: str = LOCAL_BACKEND
    labels: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None
    kind: str = "ollama"
    url: str = "http://127.0.0.1:11434"
    slots: int = 1
    request_timeout_s: float = 300.0
    # openai only: how a preempted chat resumes, and the form of response_format a JSON
    # schema goes in (actors.backends.openai_compat, docs/backends.md)
    resume: str = "prefill"
    schema_form: str = "json_schema"
    embed_workers: int = 4  # concurrent embedding calls, which bypass the GPU queue

    def __post_init__(self) -> None:
        _check_backend_name("backend.name", self.name)
        at = self.section
        object.__setattr__(self, "labels", _names(f"{at}.labels", self.labels, "label"))
        if self.models is not None:
            models = _names(f"{at}.models", self.models, "model name")
            if not models:
                raise ValidationError(
                    f"{at}.models", "is empty", allowed="model names, or no key: the server's"
                )
            object.__setattr__(self, "models", models)
        if self.kind not in BACKEND_KINDS:
            raise ValidationError(f"{at}.kind", f"unknown backend {self.kind!r}", BACKEND_KINDS)
        if not isinstance(self.slots, int) or self.slots < 1:
            raise ValidationError(
                f"{at}.slots", f"must be an integer of 1 or more, got {self.slots!r}"
            )
        if not self.url.startswith(("http://", "https://")):
            raise ValidationError(f"{at}.url", f"not an http(s) URL: {self.url!r}")
        if self.resume not in RESUME_MODES:
            raise ValidationError(f"{at}.resume", f"unknown mode {self.resume!r}", RESUME_MODES)
        if self.schema_form not in SCHEMA_FORMS:
            raise ValidationError(
                f"{at}.schema_form", f"unknown form {self.schema_form!r}", SCHEMA_FORMS
            )
        if not isinstance(self.embed_workers, int) or self.embed_workers < 1:
            raise ValidationError(f"{at}.embed_workers", "must be an integer of 1 or more")

    @property
    def section(self) -> str:
        """Where its errors point: ``backend`` for the one local backend, else
        ``backends.<name>``."""
        return "backend" if self.name == LOCAL_BACKEND else f"backends.{self.name}"


def _check_backend_name(field: str, name: object) -> None:
    """ValidationError at ``field`` unless ``name`` is a well-formed backend name."""
    if not isinstance(name, str) or not BACKEND_NAME.fullmatch(name):
        raise ValidationError(field, f"not a backend name: {name!r}", allowed=_NAME_RULE)
    if name == CLOUD_BACKEND:
        raise ValidationError(field, f"{name!r} is the cloud fallback's", allowed=_NAME_RULE)


def _names(field: str, values: object, what: str) -> tuple[str, ...]:
    """``values`` as a tuple of distinct non-empty strings; ValidationError at ``field``."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise ValidationError(field, f"must be a list of strings, got {values!r}")
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(field, f"each {what} must be a non-empty string, got {value!r}")
    if len(set(values)) != len(values):
        repeated = next(v for v in values if values.count(v) > 1)
        raise ValidationError(field, f"{what} {repeated!r} is listed twice")
    return tuple(values)


@dataclasses.dataclass(frozen=True, slots=True)
class CloudSettings:
    """Cloud fallback (docs/backends.md): cloud slots on the Anthropic Messages API for jobs
    with ``allow_cloud``, when the local wait would exceed ``max_local_wait_s`` or the local
    backend is down. The key is read from the environment variable ``api_key_env``."""

    enabled: bool = False
    url: str = ANTHROPIC_URL
    model: str = "claude-3-5-haiku-latest"
    api_key_env: str = "ANTHROPIC_API_KEY"
    slots: int = 2
    max_local_wait_s: float = 60.0
    assumed_run_s: float = 20.0
    max_tokens: int = 1024
    request_timeout_s: float = 600.0
    # How ``think`` reaches Claude: token budgets, or adaptive thinking, which Claude 4.6
    # and later expect (docs/backends.md, "Anthropic").
    thinking_mode: str = "budget"

    def __post_init__(self) -> None:
        if not isinstance(self.slots, int) or self.slots < 1:
            raise ValidationError(
                "cloud.slots", f"must be an integer of 1 or more, got {self.slots!r}"
            )
        if self.thinking_mode not in THINKING_MODES:
            raise ValidationError(
                "cloud.thinking_mode", f"unknown mode {self.thinking_mode!r}", THINKING_MODES
            )
        if not self.url.startswith(("http://", "https://")):
            raise ValidationError("cloud.url", f"not an http(s) URL: {self.url!r}")
        CloudPolicy(self.max_local_wait_s, self.assumed_run_s)  # raises on a bad bound

    @property
    def policy(self) -> CloudPolicy:
        """The routing bounds the arbiter applies."""
        return CloudPolicy(self.max_local_wait_s, self.assumed_run_s)


_KEY_FLAGS = ("internal", "admin", "cloud")  # the environment form's flags


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    """One gateway API key: the caller identity it stands for and what that caller may do.

    The caller identity comes from the key alone (never from a request field), so rate
    limits and job visibility cannot be spoofed by a client. ``allow_cloud``: the key's
    jobs may go to the cloud fallback (docs/gateway.md, "Cloud fallback").
    ``webhook_hosts``: the hosts the caller's jobs may name a webhook on, signed with
    ``webhook_secret`` (docs/operations.md, "Webhooks").
    """

    key: str
    caller: str
    allow_internal: bool = False
    admin: bool = False
    allow_cloud: bool = False
    webhook_hosts: tuple[str, ...] = ()
    webhook_secret: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or len(self.key) < 8:
            raise ValidationError(
                "gateway.api_keys.key", "must be a string of 8 characters or more"
            )
        if not isinstance(self.caller, str) or not self.caller.strip():
            raise ValidationError("gateway.api_keys.caller", "must be a non-empty string")
        for name in ("allow_internal", "admin", "allow_cloud"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(f"gateway.api_keys.{name}", "must be true or false")
        hosts = parse_hosts("gateway.api_keys.webhook_hosts", self.webhook_hosts)
        object.__setattr__(self, "webhook_hosts", hosts)
        check_secret("gateway.api_keys.webhook_secret", self.webhook_secret, needed=bool(hosts))

    @classmethod
    def parse(cls, value: ApiKey | Mapping[str, Any] | str) -> ApiKey:
        """From a TOML table, or the environment form
        ``caller:key[:internal][:admin][:cloud]``."""
        if isinstance(value, ApiKey):
            return value
        if isinstance(value, str):
            caller, _, rest = value.partition(":")
            key, *flags = rest.split(":")
            unknown = sorted(set(flags) - set(_KEY_FLAGS))
            if unknown:
                raise ValidationError(
                    "gateway.api_keys", f"unknown flag {unknown[0]!r}", allowed=_KEY_FLAGS
                )
            return cls(key, caller, "internal" in flags, "admin" in flags, "cloud" in flags)
        if not isinstance(value, Mapping):
            raise ValidationError("gateway.api_keys", "each key must be a table")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(value) - known)
        if extra:
            raise ValidationError(
                f"gateway.api_keys.{extra[0]}", "unknown setting", allowed=sorted(known)
            )
        missing = sorted({"key", "caller"} - set(value))
        if missing:
            raise ValidationError(f"gateway.api_keys.{missing[0]}", "is required")
        return cls(**dict(value))


@dataclasses.dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The HTTP gateway (``gpulane serve``): where it listens, who may call it, how much.

    With no ``api_keys`` the gateway is open to anyone who can reach it, as the local
    caller ``local`` with admin rights; that is allowed on a loopback address only.
    The body and image limits are sized for images (docs/gateway.md, "Size limits"):
    32 MiB holds one image at OpenAI's 20 MB limit base64-encoded, or several phone
    photos, and is about the Anthropic Messages API's own request limit (32 MB).
    """

    host: str = "127.0.0.1"
    port: int = 11435
    api_keys: tuple[ApiKey, ...] = ()
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024  # one image, decoded
    max_messages: int = 200
    max_prompt_chars: int = 200_000
    log_prompts: bool = False
    heartbeat_s: float = 15.0  # tell a waiting client it waits after this long idle; 0: off
    # After the supervision tree gives up, ``gpulane serve`` answers /readyz 503 this
    # long (so a load balancer sees it leave), then exits non-zero; 0: at once.
    exit_delay_s: float = 2.0

    def __post_init__(self) -> None:
        keys = self.api_keys
        if isinstance(keys, str):
            keys = tuple(part for part in keys.split(",") if part.strip())
        if not isinstance(keys, (list, tuple)):
            raise ValidationError("gateway.api_keys", "must be a list of key tables")
        parsed = tuple(ApiKey.parse(k.strip() if isinstance(k, str) else k) for k in keys)
        seen: set[str] = set()
        signers: dict[str, ApiKey] = {}  # a caller's jobs are signed with one secret
        for entry in parsed:
            if entry.key in seen:
                raise ValidationError(
                    "gateway.api_keys", f"key for {entry.caller!r} is listed twice"
                )
            seen.add(entry.key)
            first = signers.setdefault(entry.caller, entry)
            for name in ("webhook_hosts", "webhook_secret"):
                if getattr(first, name) != getattr(entry, name):
                    raise ValidationError(
                        f"gateway.api_keys.{name}",
                        f"the keys of caller {entry.caller!r} differ",
                        "the same webhook_hosts and webhook_secret on every key of a caller",
                    )
        object.__setattr__(self, "api_keys", parsed)
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValidationError("gateway.port", f"must be 0 to 65535, got {self.port!r}")
        for name in ("max_body_bytes", "max_image_bytes", "max_messages", "max_prompt_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValidationError(
                    f"gateway.{name}", f"must be an integer of 1 or more, got {value!r}"
                )
        if not isinstance(self.log_prompts, bool):
            raise ValidationError("gateway.log_prompts", "must be true or false")
        zero_means = {"heartbeat_s": "turns heartbeats off", "exit_delay_s": "exits at once"}
        for name, zero in zero_means.items():
            seconds = getattr(self, name)
            if (
                not isinstance(seconds, (int, float))
                or isinstance(seconds, bool)
                or not 0 <= seconds < math.inf
            ):
                raise ValidationError(
                    f"gateway.{name}",
                    f"must be a number of seconds, 0 or more, got {seconds!r}",
                    allowed=f"0 {zero}",
                )
        if not parsed and not self.is_loopback:
            raise ValidationError(
                "gateway.api_keys",
                f"are required when listening on {self.host!r}",
                allowed="a loopback host (127.0.0.1, ::1, localhost) for an open gateway",
            )

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can reach the gateway."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


_SECTIONS: dict[str, type[Any]] = {
    "store": StoreSettings,
    "scheduling": SchedulingPolicy,
    "retry": RetryPolicy,
    "backend": BackendSettings,
    "limits": Limits,
    "residency": ResidencySettings,
    "gateway": GatewaySettings,
    "cloud": CloudSettings,
    "webhooks": WebhookSettings,
    "alerts": AlertSettings,
    "cluster": ClusterSettings,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """Everything a GpuLane needs to start; hot-reloadable parts go through ``reload_config``."""

    store: StoreSettings = StoreSettings()
    scheduling: SchedulingPolicy = SchedulingPolicy()
    retry: RetryPolicy = RetryPolicy()
    backend: BackendSettings = BackendSettings()
    limits: Limits = Limits()
    residency: ResidencySettings = ResidencySettings()
    gateway: GatewaySettings = GatewaySettings()
    cloud: CloudSettings = CloudSettings()
    webhooks: WebhookSettings = WebhookSettings()
    alerts: AlertSettings = AlertSettings()
    cluster: ClusterSettings = ClusterSettings()  # several gateways on PostgreSQL (#18)
    backends: tuple[BackendSettings, ...] = ()  # ``[[backends]]``: several servers, by name

    def __post_init__(self) -> None:
        if not all(isinstance(host, BackendSettings) for host in self.backends):
            raise ValidationError("backends", "must be BackendSettings, one per backend")
        object.__setattr__(self, "backends", tuple(self.backends))
        if not self.backends:
            if self.backend.name != LOCAL_BACKEND:
                raise ValidationError(
                    "backend.name", f"is {self.backend.name!r}", allowed=f"{LOCAL_BACKEND!r}"
                )
            return
        if self.backend != BackendSettings():
            raise ValidationError(
                "backend, backends",
                "both are set",
                allowed="[backend] for one model server or [[backends]] for several, not both",
            )
        seen: set[str] = set()
        for index, host in enumerate(self.backends):
            if host.name in seen:
                raise ValidationError(f"backends[{index}].name", f"{host.name!r} is listed twice")
            seen.add(host.name)

    @property
    def hosts(self) -> tuple[BackendSettings, ...]:
        """The backends the lane drives, in order: ``[[backends]]``, or the one ``[backend]``."""
        return self.backends or (self.backend,)

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
        """Read a TOML file, then apply ``GPULANE_*`` environment overrides."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValidationError(str(path), f"not valid TOML: {exc}") from None
        return cls.from_mapping(data, env=env)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
        """Build from nested mappings (``{"store": {"path": ...}}``) plus environment overrides."""
        merged = {name: dict(data.get(name, {})) for name in _SECTIONS}
        unknown = sorted(set(data) - {*_SECTIONS, "backends"})
        if unknown:
            raise ValidationError(
                unknown[0], "unknown config section", allowed=sorted({*_SECTIONS, "backends"})
            )
        tables = data.get("backends", ())
        if tables and "backend" in data:
            raise ValidationError(
                "backend, backends",
                "both are set",
                allowed="[backend] for one model server or [[backends]] for several, not both",
            )
        _apply_env(merged, os.environ if env is None else env, several=bool(tables))
        sections = {name: _build(name, section) for name, section in merged.items()}
        return cls(**sections, backends=_build_backends(tables))

    def replace(self, **changes: Any) -> Config:
        """A copy with whole sections replaced."""
        return dataclasses.replace(self, **changes)


class ReloadRefusedError(ValidationError):
    """A reload that changes settings which cannot change while running: names each key
    (``section.key``) and nothing is applied."""

    def __init__(self, keys: Sequence[str], why: str = "cannot change while running") -> None:
        self.keys = tuple(keys)
        sections = ", ".join(dict.fromkeys(key.partition(".")[0] for key in self.keys))
        super().__init__(sections, f"{', '.join(self.keys)} {why}", allowed="a restart")


# What a reload applies while running (``GpuLane.reload_config``): these whole sections,
# and these keys of ``[cloud]``; a change to anything else is refused by name.
RELOADED_SECTIONS = frozenset(
    {"scheduling", "retry", "limits", "residency", "gateway", "alerts", "webhooks"}
)
CLOUD_BOUNDS_KEYS = frozenset({"cloud.max_local_wait_s", "cloud.assumed_run_s"})
#: The store's upkeep, which a running store takes (``ApplyStoreUpkeep``); its file and
#: its durability need a restart.
STORE_UPKEEP_KEYS = frozenset(
    f"store.{key}" for key in ("prune_after_s", "prune_interval_s", "prune_batch")
)
LIVE_KEYS = CLOUD_BOUNDS_KEYS | STORE_UPKEEP_KEYS  # keys that apply, outside whole sections
CLOUD_CLIENT_KEYS = frozenset(
    f"cloud.{key}"
    for key in ("url", "model", "api_key_env", "max_tokens", "request_timeout_s", "thinking_mode")
)


def check_reload(changes: Sequence[str], cloud_slots: bool, cloud_rebuilt: bool) -> None:
    """ReloadRefusedError naming every changed key a running lane cannot apply: with
    ``cloud_slots`` their number, and the client settings unless ``cloud_rebuilt`` (the
    lane built the client from ``[cloud]``, so it can build another); ``cloud.enabled``."""

    def applies(key: str) -> bool:
        if key.partition(".")[0] in RELOADED_SECTIONS or key in LIVE_KEYS:
            return True
        if key in CLOUD_CLIENT_KEYS:
            return cloud_rebuilt or not cloud_slots
        return key == "cloud.slots" and not cloud_slots

    refused = [key for key in changes if not applies(key)]
    if refused:
        raise ReloadRefusedError(refused)


def config_changes(old: Config, new: Config) -> tuple[str, ...]:
    """The keys (``section.key``) whose values differ between ``old`` and ``new``; in
    ``[[backends]]``, ``backends.<name>.<key>`` for a backend in both, ``backends.<name>``
    for one added or removed, and ``backends`` when the same backends come in another order."""
    changed = [
        f"{section}.{field.name}"
        for section in _SECTIONS
        for field in dataclasses.fields(getattr(old, section))
        if getattr(getattr(old, section), field.name) != getattr(getattr(new, section), field.name)
    ]
    before = {host.name: host for host in old.backends}
    after = {host.name: host for host in new.backends}
    for name in dict.fromkeys([*before, *after]):
        if name not in before or name not in after:
            changed.append(f"backends.{name}")
            continue
        changed.extend(
            f"backends.{name}.{field.name}"
            for field in dataclasses.fields(BackendSettings)
            if getattr(before[name], field.name) != getattr(after[name], field.name)
        )
    if not any(key.startswith("backends") for key in changed) and old.backends != new.backends:
        changed.append("backends")  # the same backends, in another order (the slots' order)
    return tuple(changed)


def _build(section: str, values: Mapping[str, Any]) -> Any:
    kind = _SECTIONS[section]
    fields = {f.name: f for f in dataclasses.fields(kind)}
    for key in values:
        if key not in fields:
            raise ValidationError(f"{section}.{key}", "unknown setting", allowed=sorted(fields))
    values = dict(values)
    if section == "scheduling" and isinstance(values.get("active_hours"), str):
        values["active_hours"] = ActiveHours.parse(values["active_hours"])
    if section == "backend" and values.get("name", LOCAL_BACKEND) != LOCAL_BACKEND:
        raise ValidationError(
            "backend.name",
            f"the one [backend] is named {LOCAL_BACKEND!r}, not {values['name']!r}",
            allowed="[[backends]] tables to name several backends",
        )
    try:
        return kind(**values)
    except TypeError as exc:
        raise ValidationError(section, str(exc)) from None


def _build_backends(tables: object) -> tuple[BackendSettings, ...]:
    """``[[backends]]``: each table's name first (``backends[<index>].name`` when it is
    missing or bad), then its keys, whose errors name ``backends.<name>.<key>``."""
    if not isinstance(tables, (list, tuple)):
        raise ValidationError("backends", "must be an array of tables ([[backends]])")
    known = sorted(f.name for f in dataclasses.fields(BackendSettings))
    hosts = []
    for index, table in enumerate(tables):
        if not isinstance(table, Mapping):
            raise ValidationError(f"backends[{index}]", "must be a table ([[backends]])")
        if "name" not in table:
            raise ValidationError(f"backends[{index}].name", "is required", allowed=_NAME_RULE)
        _check_backend_name(f"backends[{index}].name", table["name"])
        at = f"backends.{table['name']}"
        extra = sorted(set(table) - set(known))
        if extra:
            raise ValidationError(f"{at}.{extra[0]}", "unknown setting", allowed=known)
        try:
            hosts.append(BackendSettings(**dict(table)))
        except ValidationError as error:
            if not error.field.startswith("backend."):
                raise
            # one named "local" speaks as [backend] does: say which table it is
            field = f"{at}.{error.field.removeprefix('backend.')}"
            raise ValidationError(field, error.problem, error.allowed) from None
    return tuple(hosts)


def _apply_env(merged: dict[str, dict[str, Any]], env: Mapping[str, str], *, several: bool) -> None:
    """``GPULANE_<SECTION>_<KEY>`` into ``merged``; ``[backend]``'s are refused by name when
    the file has ``[[backends]]``, which takes no environment overrides."""
    for name, raw in env.items():
        if not name.startswith("GPULANE_"):
            continue
        rest = name[len("GPULANE_") :].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            continue
        field_types = {f.name: f.type for f in dataclasses.fields(_SECTIONS[section])}
        if key not in field_types:
            raise ValidationError(name, "unknown setting", allowed=sorted(field_types))
        if section == "backend" and several:
            raise ValidationError(
                name,
                "overrides [backend], but the file configures [[backends]]",
                allowed="set each backend in its [[backends]] table",
            )
        merged[section][key] = _coerce(name, raw, str(field_types[key]))


def _coerce(name: str, raw: str, type_name: str) -> Any:
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if type_name.startswith("bool"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if type_name.startswith("tuple[str"):  # a list: comma-separated
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValidationError(name, f"not a number: {raw!r}") from None
    return raw
