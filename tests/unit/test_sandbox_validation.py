"""Create-request validation of the sandbox: documented rules and messages, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from hitl_sandbox.ratelimit import FixedWindowLimiter
from hitl_sandbox.validation import (
    INVALID_CONFIG,
    VALIDATION_FAILED,
    Invalid,
    unknown_fields,
    validate_create_request,
)
from tests.support import create_body


def body(**changes: Any) -> dict[str, Any]:
    """A valid body; a change to ``_DROP`` removes that field."""
    base = create_body(request_text="Please review")
    for key, value in changes.items():
        if value is _DROP:
            base.pop(key)
        else:
            base[key] = value
    return base


_DROP = object()


def test_documented_body_is_valid() -> None:
    assert validate_create_request(body()) is None


@pytest.mark.parametrize(
    "field",
    [
        "processing_type",
        "type",
        "priority",
        "request_text",
        "response_type",
        "response_config",
        "default_response",
        "platform",
    ],
)
def test_each_required_field_missing_names_the_field(field: str) -> None:
    assert validate_create_request(body(**{field: _DROP})) == Invalid(field, "Field is required")


def test_null_required_field_counts_as_missing() -> None:
    assert validate_create_request(body(platform=None)) == Invalid("platform", "Field is required")


@pytest.mark.parametrize("raw", [[], "text", 3, None])
def test_non_object_body_is_an_invalid_request_body(raw: object) -> None:
    problem = validate_create_request(raw)
    assert problem is not None and problem.msg == "Invalid request body"


@pytest.mark.parametrize(
    ("changes", "field", "issue"),
    [
        (
            {"priority": "normal"},
            "priority",
            "priority must be one of: low, medium, high, critical",
        ),
        (
            {"processing_type": "urgent"},
            "processing_type",
            "processing_type must be one of: time-sensitive, deferred",
        ),
        ({"type": "text"}, "type", "type must be one of: markdown, image, file, video, audio"),
        (
            {"response_type": "free_text"},
            "response_type",
            "response_type must be one of: text, single_select, multi_select, rating, number, "
            "boolean, editable_text",
        ),
        ({"type": "video"}, "video_url", "video_url is required when type is video"),
        ({"type": "file"}, "file_url", "file_url is required when type is file"),
        ({"type": "audio", "audio_url": 5}, "audio_url", "audio_url must be a string"),
        (
            {"platform": "slack"},
            "platform",
            "platform must be one of: n8n, zapier, web_portal, api, mobile, webhook",
        ),
        (
            {"request_text": ""},
            "request_text",
            "request_text must be between 1 and 2000 characters",
        ),
        (
            {"request_text": "x" * 2001},
            "request_text",
            "request_text must be between 1 and 2000 characters",
        ),
        (
            {"timeout_seconds": _DROP},
            "timeout_seconds",
            "timeout_seconds is required for time-sensitive requests",
        ),
        (
            {"timeout_seconds": 59},
            "timeout_seconds",
            "timeout_seconds must be between 60 and 86400",
        ),
        (
            {"timeout_seconds": 86401},
            "timeout_seconds",
            "timeout_seconds must be between 60 and 86400",
        ),
        ({"timeout_seconds": 600.5}, "timeout_seconds", "timeout_seconds must be an integer"),
        ({"type": "image"}, "image_url", "image_url is required when type is image"),
        ({"context": ["not", "an", "object"]}, "context", "context must be an object"),
        ({"callback_url": "ftp://x"}, "callback_url", "callback_url must be a valid http(s) URL"),
    ],
)
def test_field_rules_use_documented_messages(
    changes: dict[str, Any], field: str, issue: str
) -> None:
    assert validate_create_request(body(**changes)) == Invalid(field, issue, VALIDATION_FAILED)


def test_limits_are_inclusive() -> None:
    assert validate_create_request(body(request_text="x" * 2000, timeout_seconds=60)) is None
    assert validate_create_request(body(timeout_seconds=86400)) is None


def test_deferred_needs_no_timeout_and_image_needs_url() -> None:
    assert validate_create_request(body(processing_type="deferred", timeout_seconds=_DROP)) is None
    assert validate_create_request(body(type="image", image_url="https://x/y.png")) is None


@pytest.mark.parametrize(
    ("response_type", "config", "default"),
    [
        ("single_select", {"options": ["Approve", "Reject"]}, "Reject"),
        ("single_select", {"options": [{"value": "a", "label": "Approve"}]}, "Approve"),
        ("multi_select", {"options": ["Spam", "Abuse"]}, ["Spam"]),
        (
            "multi_select",
            {
                "options": [{"value": "s", "label": "Spam"}],
                "min_selections": 0,
                "max_selections": 1,
            },
            [],
        ),
        ("rating", {"min": 1, "max": 5}, 3),
        (
            "rating",
            {"scale_min": 0, "scale_max": 10, "scale_step": 0.5, "labels": {"0": "Bad"}},
            7.5,
        ),
        ("number", {"min": 0, "max": 100}, 0),
        ("number", {"max_value": 1000, "decimal_places": 2, "prefix": "$"}, 12.5),
        ("text", {"max_length": 500}, "no answer"),
        ("editable_text", {"draft_text": "Hello", "max_length": 100}, "Hello!"),
        ("text", {"max_length": 500, "min_length": 1, "placeholder": "why?"}, "none"),
        ("boolean", {}, False),
        ("boolean", {"true_label": "Yes", "false_label": "No", "true_color": "#fff"}, True),
    ],
)
def test_simple_and_rich_response_configs_are_accepted(
    response_type: str, config: dict[str, Any], default: object
) -> None:
    problem = validate_create_request(
        body(response_type=response_type, response_config=config, default_response=default)
    )
    assert problem is None


@pytest.mark.parametrize(
    ("response_type", "config", "issue"),
    [
        ("single_select", {}, "options array required for select response type"),
        ("multi_select", {"options": []}, "options array required for select response type"),
        (
            "single_select",
            {"options": [str(n) for n in range(21)]},
            "options must contain between 1 and 20 items",
        ),
        (
            "single_select",
            {"options": [{"value": "a"}]},
            "each option must be a non-empty string or an object with value and label",
        ),
        ("single_select", {"options": ["a", "a"]}, "option values must be unique"),
        ("rating", {}, "rating requires scale_min and scale_max (or min and max)"),
        ("rating", {"min": 5, "max": 1}, "scale_max must be greater than scale_min"),
        ("number", {}, "number requires max_value (or min and max)"),
        (
            "number",
            {"max_value": 5, "decimal_places": 11},
            "decimal_places must be between 0 and 10",
        ),
        ("text", {"max_length": 0}, "max_length must be between 1 and 5000"),
        ("text", {}, "text requires max_length"),
        ("editable_text", {"max_length": 10}, "editable_text requires draft_text"),
        ("editable_text", {"draft_text": "d"}, "text requires max_length"),
        ("editable_text", {"draft_text": "long", "max_length": 2}, "draft_text exceeds max_length"),
        ("boolean", {"true_label": ""}, "true_label must be between 1 and 100 characters"),
        ("boolean", [], "response_config must be an object"),
    ],
)
def test_bad_response_config_is_an_invalid_response_configuration(
    response_type: str, config: object, issue: str
) -> None:
    default = {"rating": 1, "number": 1, "text": "", "editable_text": "", "boolean": True}.get(
        response_type, "a"
    )
    problem = validate_create_request(
        body(response_type=response_type, response_config=config, default_response=default)
    )
    assert problem == Invalid("response_config", issue, INVALID_CONFIG)


@pytest.mark.parametrize(
    ("response_type", "config", "default"),
    [
        ("single_select", {"options": ["Approve", "Reject"]}, "Maybe"),
        ("single_select", {"options": ["Approve"]}, ["Approve"]),
        ("multi_select", {"options": ["Spam"]}, "Spam"),
        ("multi_select", {"options": ["Spam"]}, ["Ham"]),
        ("rating", {"min": 1, "max": 5}, 6),
        ("rating", {"min": 1, "max": 5}, True),
        ("number", {"min": 0, "max": 10}, "5"),
        ("text", {"max_length": 3}, "toolong"),
        ("boolean", {}, "false"),
    ],
)
def test_default_response_must_fit_the_response_type(
    response_type: str, config: dict[str, Any], default: object
) -> None:
    problem = validate_create_request(
        body(response_type=response_type, response_config=config, default_response=default)
    )
    assert problem is not None
    assert (problem.field, problem.msg) == ("default_response", VALIDATION_FAILED)


def test_unknown_fields_are_listed_not_rejected() -> None:
    extra = body(tags=["x"], content="seed-style", context={"a": 1}, callback_url="https://x/cb")
    assert validate_create_request(extra) is None
    assert unknown_fields(extra) == ["tags", "content"]


def test_limiter_windows_align_to_the_epoch_so_reset_is_exact() -> None:
    now = [1_000_003.7]
    limiter = FixedWindowLimiter(2, 10, clock=lambda: now[0])
    first, second, third = (limiter.hit("k") for _ in range(3))
    assert first is not None and second is not None and third is not None
    assert (first.remaining, second.remaining, third.allowed) == (1, 0, False)
    assert first.reset == third.reset == 1_000_010
    now[0] = 1_000_009.999
    assert limiter.hit("k").allowed is False  # type: ignore[union-attr]
    now[0] = 1_000_010.0  # exactly at the announced reset: a fresh window
    fresh = limiter.hit("k")
    assert fresh is not None and fresh.allowed and fresh.remaining == 1 and fresh.reset == 1_000_020
    assert limiter.hit("other") is not None  # keys are independent
    assert FixedWindowLimiter(None, 10).hit("k") is None
