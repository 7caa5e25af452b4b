"""The gateway refuses to start when nothing would authenticate decisions, and warns about the
modes that accept unsigned deliveries."""

from __future__ import annotations

import logging

import pytest

from connector.app import check_runnable
from connector.config import Settings
from connector.errors import ConfigError


def settings(**gateway: object) -> Settings:
    return Settings(gateway=gateway, hitl={"api_key": "k"})  # type: ignore[arg-type]


def test_no_webhook_secret_and_no_token_secret_refuses_naming_the_settings() -> None:
    for mode in ("required", "accept-unsigned", "accept-any"):
        with pytest.raises(ConfigError) as info:
            check_runnable(settings(signature=mode), ["gateway"])
        text = str(info.value)
        assert "HITL_WEBHOOK_SECRET" in text and "HITL_CALLBACK_TOKEN_SECRET" in text
    check_runnable(settings(), ["submitter", "resolver"])  # no gateway role: nothing to refuse


def test_either_secret_is_enough(caplog: pytest.LogCaptureFixture) -> None:
    check_runnable(settings(secrets=["w"]), ["gateway"])
    with caplog.at_level(logging.INFO):
        check_runnable(settings(token_secrets=["t"]), ["gateway"])
    assert "refuses every delivery" in caplog.text


@pytest.mark.parametrize("mode", ["accept-unsigned", "accept-any"])
def test_modes_accepting_unsigned_deliveries_are_warned_about(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        check_runnable(settings(signature=mode, secrets=["w"]), ["gateway"])
    assert f"gateway.signature={mode}" in caplog.text and "anyone" in caplog.text
