"""Configuration: sources and precedence, secrets, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import load_settings
from connector.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(
            ("HITL_CONNECTOR_", "HITL_API_KEY", "HITL_WEBHOOK_SECRET", "HITL_CALLBACK_TOKEN")
        ):
            monkeypatch.delenv(name)


def test_defaults_match_the_documented_contract() -> None:
    s = load_settings()
    t = s.topics
    assert (t.input, t.output, t.dlq, t.requests, t.callbacks, t.unmatched) == (
        "content.events",
        "content.decisions",
        "content.events.dlq",
        "hitl.requests",
        "hitl.callbacks",
        "hitl.callbacks.unmatched",
    )
    assert s.hitl.base_url == "https://api.hitl.sh/v1" and s.hitl.path_prefix == "api/"
    assert s.hitl.rate_limit_calls == 100 and s.hitl.rate_limit_window_seconds == 3600


def test_env_beats_yaml_and_nested_names_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "kafka:\n  bootstrap_servers: yaml:9092\n  group_id: g-yaml\nloops:\n  default: L-yaml\n"
    )
    monkeypatch.setenv("HITL_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    monkeypatch.setenv("HITL_CONNECTOR_TOPICS__INPUT", "in.x")
    monkeypatch.setenv("HITL_CONNECTOR_HITL__PATH_PREFIX", "")
    s = load_settings(cfg)
    assert s.kafka.bootstrap_servers == "env:9092"
    assert s.kafka.group_id == "g-yaml" and s.loops.default == "L-yaml"
    assert s.topics.input == "in.x" and s.hitl.path_prefix == ""


def test_secrets_from_env_and_files_never_print(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("hitl_live_secret\n")
    monkeypatch.setenv("HITL_API_KEY_FILE", str(key_file))
    monkeypatch.setenv("HITL_WEBHOOK_SECRET", "old-s, new-s")
    s = load_settings()
    assert s.hitl.api_key is not None and s.hitl.api_key.get_secret_value() == "hitl_live_secret"
    assert [x.get_secret_value() for x in s.gateway.secrets] == ["old-s", "new-s"]
    assert "hitl_live_secret" not in repr(s) and "old-s" not in str(s.model_dump())


def test_kafka_sasl_password_from_a_file_or_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("scram-pass\n")
    monkeypatch.setenv("HITL_KAFKA_SASL_PASSWORD_FILE", str(secret))
    s = load_settings()
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == "scram-pass"
    assert "scram-pass" not in repr(s)
    monkeypatch.setenv("HITL_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"HITL_KAFKA_SASL_PASSWORD_FILE=.*cannot read"):
        load_settings()


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("kafka:\n  bootstrapservers: x\n", "kafka.bootstrapservers: unknown key"),
        ("nonsense: 1\n", "nonsense: unknown key"),
        ("batch:\n  max_records: 0\n", "batch.max_records"),
        ("hitl:\n  base_url: ftp://x\n", "hitl.base_url"),
        ("review:\n  default_response: maybe\n", "review.default_response"),
        ("review:\n  timeout_seconds: {high: 5}\n", "timeout_seconds.high"),
        ("kafka:\n  security_protocol: SASL_SSL\n", "kafka.sasl_mechanism"),
        ("- a list\n", "mapping"),
        ("kafka: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_yaml_fails_naming_the_key(tmp_path: Path, yaml_text: str, needle: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert needle in str(info.value)


def test_unknown_env_keys_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITL_CONNECTOR_TOPICZ__INPUT", "x")
    with pytest.raises(ConfigError, match="HITL_CONNECTOR_TOPICZ__INPUT: unknown key"):
        load_settings()
    monkeypatch.delenv("HITL_CONNECTOR_TOPICZ__INPUT")
    monkeypatch.setenv("HITL_CONNECTOR_KAFKA__NOPE", "x")
    with pytest.raises(ConfigError, match=r"kafka\.nope: unknown key"):
        load_settings()


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


def test_signature_required_by_default_and_old_mode_names_explain_the_rename(
    tmp_path: Path,
) -> None:
    s = load_settings()
    assert s.gateway.signature == "required" and s.gateway.callback_signature == "token"
    for old, new in (("if-present", "accept-unsigned"), ("off", "accept-any")):
        cfg = tmp_path / f"{old}.yaml"
        cfg.write_text(f"gateway:\n  signature: {old}\n")
        with pytest.raises(ConfigError, match=f"renamed {new}"):
            load_settings(cfg)


def test_token_secrets_rotate_from_env_and_the_old_single_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HITL_CALLBACK_TOKEN_SECRET", "new-t, old-t")
    s = load_settings()
    assert [x.get_secret_value() for x in s.gateway.token_secrets] == ["new-t", "old-t"]
    monkeypatch.delenv("HITL_CALLBACK_TOKEN_SECRET")
    s = load_settings(overrides={"gateway": {"token_secret": "only"}})
    assert [x.get_secret_value() for x in s.gateway.token_secrets] == ["only"]
    assert "new-t" not in str(s.model_dump())


@pytest.mark.parametrize(
    ("review", "needle"),
    [
        ({"response_type": "rating", "default_response": "rejected"}, "not a number from 1 to 5"),
        ({"response_type": "rating", "default_response": 9}, "not a number from 1 to 5"),
        ({"response_type": "boolean", "default_response": "rejected"}, "not true or false"),
        ({"response_type": "multi_select", "default_response": ["nope"]}, "list of option"),
        ({"response_type": "text", "default_response": 3}, "not a string"),
        ({"response_type": "number", "response_config": {"min": 0}}, "needs max_value"),
        ({"response_type": "text", "response_config": {}}, "needs max_length"),
        ({"response_type": "single_select", "response_config": {"options": []}}, "needs options"),
        ({"default_response": "maybe"}, "not one of the option values"),
    ],
)
def test_default_response_and_required_config_are_checked_per_type_at_start(
    review: dict[str, object], needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"review": review})
    assert needle in str(info.value) and "review." in str(info.value)


def test_each_type_has_a_valid_documented_default_config() -> None:
    from connector.submitter.translate import response_config

    defaults = {"rating": 3, "number": 0, "text": "", "boolean": False, "editable_text": ""}
    for kind, default in defaults.items():
        s = load_settings(
            overrides={"review": {"response_type": kind, "default_response": default}}
        )
        assert response_config(s.review), kind
