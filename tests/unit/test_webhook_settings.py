"""Webhook URLs, allowed hosts, secrets and who signs what: each bad value is refused by name
(docs/operations.md, "Webhooks")."""

from __future__ import annotations

import pytest
from webhook_receiver import documented_verifier

from actors.config import ApiKey, Config, GatewaySettings
from actors.webhooks import check_webhook, signer_for
from protocol import Job, JobSpec, JobState, ValidationError
from protocol.config import WebhookSettings
from protocol.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookState,
    WebhookStatus,
    check_webhook_url,
    host_allowed,
    parse_hosts,
    sign,
    webhook_host,
)

SECRET = "0123456789abcdef-secret"
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://hooks.example.com/gpulane", "hooks.example.com"),
        ("http://127.0.0.1:8080/hook?job=1#end", "127.0.0.1"),
        ("http://[::1]:9000/x", "::1"),
        ("HTTPS://Hooks.Example.COM./a%20b", "hooks.example.com"),
        ("https://xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_an_http_url_with_a_host_is_taken_and_its_host_read_in_lower_case(
    url: str, host: str
) -> None:
    assert check_webhook_url(url) == url
    assert webhook_host(url) == host


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/x", "unsupported scheme 'ftp'"),
        ("example.com/hook", "is not a URL"),
        ("https://", "has no host"),
        ("https:///path", "has no host"),
        ("https://user:pw@example.com/", "must not carry credentials"),
        ("https://exa mple.com/", "printable ASCII"),
        ("https://bücher.example/", "printable ASCII"),
        ("https://example.com:70000/", "port 70000 is out of range"),
        ("https://example.com:http/", "bad host or port"),
        ("https://exa_mple.com/", "bad host name"),
        ("https://[::zz]/", "bad IPv6 address"),
        ("https://example.com" + "/a" * 1100, "the limit is 2048"),
    ],
)
def test_a_bad_webhook_url_is_refused_naming_the_field_and_what_is_wrong(
    url: str, problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem) as raised:
        JobSpec.chat(model="m", messages=HI, webhook=url)
    assert raised.value.field == "webhook"


def test_a_webhook_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be a URL string, got int"):
        JobSpec.chat(model="m", messages=HI, webhook=5)


def test_the_spec_keeps_its_webhook_through_its_stored_form_and_leaves_it_out_when_unset() -> None:
    spec = JobSpec.chat(model="m", messages=HI, webhook="https://example.com/h")
    assert spec.to_dict()["webhook"] == "https://example.com/h"
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert "webhook" not in JobSpec.chat(model="m", messages=HI).to_dict()


def test_a_job_shows_its_webhook_waiting_until_it_ends_and_nothing_without_one() -> None:
    spec = JobSpec.chat(model="m", messages=HI, webhook="https://example.com/h")
    job = Job(id="j", seq=1, spec=spec, state=JobState.QUEUED, created_at=1.0, updated_at=1.0)
    assert job.to_dict()["webhook"] == {
        "url": "https://example.com/h", "state": "waiting", "deliveries": [],
        "next_attempt_at": None, "ended_at": None,
    }  # fmt: skip
    ended = job.replace(webhook=WebhookStatus("https://example.com/h", WebhookState.PENDING))
    assert ended.to_dict()["webhook"]["state"] == "pending"
    plain = job.replace(spec=spec.replace(webhook=None))
    assert "webhook" not in plain.to_dict()


def test_allowed_hosts_are_read_in_lower_case_from_a_list_or_a_comma_separated_string() -> None:
    assert parse_hosts("f", ["Hooks.Example.com", "*.Acme.example", "::1", "*"]) == (
        "hooks.example.com", "*.acme.example", "::1", "*",
    )  # fmt: skip
    assert parse_hosts("f", "a.example, b.example,") == ("a.example", "b.example")


@pytest.mark.parametrize(
    ("value", "field", "problem"),
    [
        (["ok.example", "not a host"], "f[1]", "bad host name"),
        (["example.com:8080"], "f[0]", "bad IPv6 address"),
        ([""], "f[0]", "must be a non-empty host name"),
        (3, "f", "must be a list of host names"),
    ],
)
def test_a_bad_allowed_host_is_refused_naming_its_place(
    value: object, field: str, problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem) as raised:
        parse_hosts("f", value)
    assert raised.value.field == field


def test_a_host_is_allowed_when_listed_under_a_wildcard_domain_or_by_a_star() -> None:
    assert host_allowed("hooks.example.com", ("hooks.example.com",))
    assert host_allowed("a.b.acme.example", ("*.acme.example",))
    assert not host_allowed("acme.example", ("*.acme.example",)), "the wildcard is subdomains"
    assert not host_allowed("evilacme.example", ("*.acme.example",))
    assert host_allowed("anything.example", ("*",))
    assert not host_allowed("other.example", ("hooks.example.com",))
    assert not host_allowed("hooks.example.com", ())


def test_allowed_hosts_need_a_secret_of_sixteen_characters_on_a_key_and_in_webhooks() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters when webhook hosts") as e:
        ApiKey("key-00000001", "acme", webhook_hosts=("hooks.example.com",))
    assert e.value.field == "gateway.api_keys.webhook_secret"
    with pytest.raises(ValidationError, match="at least 16 characters") as e:
        WebhookSettings(allowed_hosts=("127.0.0.1",), secret="short")
    assert e.value.field == "webhooks.secret"
    key = ApiKey(
        "key-00000001", "acme", webhook_hosts=("Hooks.Example.com",), webhook_secret=SECRET
    )
    assert key.webhook_hosts == ("hooks.example.com",)


def test_the_keys_of_one_caller_must_agree_on_its_webhook_settings() -> None:
    first = ApiKey("key-00000001", "acme", webhook_hosts=("a.example",), webhook_secret=SECRET)
    other = ApiKey("key-00000002", "acme", webhook_hosts=("b.example",), webhook_secret=SECRET)
    with pytest.raises(ValidationError, match="the keys of caller 'acme' differ") as raised:
        GatewaySettings(api_keys=(first, other))
    assert raised.value.field == "gateway.api_keys.webhook_hosts"
    twin = ApiKey("key-00000003", "acme", webhook_hosts=("a.example",), webhook_secret=SECRET)
    assert len(GatewaySettings(api_keys=(first, twin)).api_keys) == 2


def test_webhook_settings_come_from_the_file_and_the_environment() -> None:
    config = Config.from_mapping(
        {"webhooks": {"retry_for_s": 60, "workers": 2}},
        env={
            "GPULANE_WEBHOOKS_SECRET": SECRET,
            "GPULANE_WEBHOOKS_ALLOWED_HOSTS": "hooks.example.com, 127.0.0.1",
        },
    )
    assert config.webhooks == WebhookSettings(
        secret=SECRET, allowed_hosts=("hooks.example.com", "127.0.0.1"), retry_for_s=60, workers=2
    )
    with pytest.raises(ValidationError, match=r"webhooks\.workers"):
        Config.from_mapping({"webhooks": {"workers": 0}})
    with pytest.raises(ValidationError, match=r"webhooks\.max_delay_s"):
        Config.from_mapping({"webhooks": {"base_delay_s": 10, "max_delay_s": 5}})
    with pytest.raises(ValidationError, match=r"webhooks\.tries"):
        Config.from_mapping({"webhooks": {"tries": 3}})


def test_a_retry_waits_the_capped_doubling_back_off_less_up_to_the_jitter() -> None:
    settings = WebhookSettings(base_delay_s=5, max_delay_s=600, jitter=0.5)
    assert [settings.retry_delay(n, 0.0) for n in (1, 2, 3, 8, 9, 20)] == [
        5, 10, 20, 600, 600, 600,
    ]  # fmt: skip
    assert settings.retry_delay(2, 0.999) == pytest.approx(10 * (1 - 0.5 * 0.999))


CONFIG = Config(
    gateway=GatewaySettings(
        api_keys=(
            ApiKey(
                "key-00000001", "acme", webhook_hosts=("*.acme.example",), webhook_secret=SECRET
            ),
            ApiKey("key-00000002", "plain"),
        )
    ),
    webhooks=WebhookSettings(secret="in-process-secret-0001", allowed_hosts=("127.0.0.1",)),
)


def test_a_callers_key_signs_its_webhooks_and_webhooks_signs_callers_without_a_key() -> None:
    assert signer_for(CONFIG, "acme").secret == SECRET
    assert signer_for(CONFIG, "acme").hosts == ("*.acme.example",)
    assert signer_for(CONFIG, "bot").secret == "in-process-secret-0001"
    assert signer_for(CONFIG, "bot").hosts == ("127.0.0.1",)
    assert signer_for(CONFIG, "plain").hosts == (), "a key without webhook_hosts allows none"


def test_a_webhook_host_the_caller_may_not_use_is_refused_naming_the_hosts_it_may() -> None:
    def spec(caller: str, url: str) -> JobSpec:
        return JobSpec.chat(model="m", messages=HI, caller=caller, webhook=url)

    check_webhook(spec("acme", "https://hooks.acme.example/x"), CONFIG)
    check_webhook(spec("bot", "http://127.0.0.1:9/x"), CONFIG)
    with pytest.raises(ValidationError) as raised:
        check_webhook(spec("acme", "http://127.0.0.1:9/x"), CONFIG)
    assert raised.value.field == "webhook"
    assert raised.value.allowed == ("*.acme.example",)
    assert "host '127.0.0.1' is not allowed for caller 'acme'" in str(raised.value)
    with pytest.raises(ValidationError, match="no host yet: list it in webhook_hosts"):
        check_webhook(spec("plain", "https://hooks.acme.example/x"), CONFIG)
    with pytest.raises(ValidationError, match=r"no host yet: list it in webhooks\.allowed_hosts"):
        check_webhook(spec("bot", "https://x.example/"), Config())


def test_the_documented_verifier_accepts_what_gpulane_signs() -> None:
    body = b'{"event":"job.succeeded"}'
    headers = {TIMESTAMP_HEADER: "1767610800", SIGNATURE_HEADER: sign(SECRET, 1767610800, body)}
    assert headers[SIGNATURE_HEADER].startswith("v1=")
    assert documented_verifier()(SECRET, headers, body, now=1767610800)
