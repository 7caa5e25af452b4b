"""Pure validation of a create-request body, with HITL.sh's documented messages.

``validate_create_request`` returns None for a valid body, else an ``Invalid`` that the app
renders as ``400 {"error": true, "msg": msg, "data": {"field": field, "issue": issue}}``.
Issue strings are the documented ones where the docs give one (hitl-api.md §1.4, §2.2, §3.2).
Both the simple and the rich ``response_config`` forms are accepted; unknown top-level fields
are allowed (``unknown_fields`` lists them so the app can count them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROCESSING_TYPES = ("time-sensitive", "deferred")
CONTENT_TYPES = ("markdown", "image", "file", "video", "audio")
# The newer content types and the URL field each requires (hitl-api.md appendix A.2).
MEDIA_URL_FIELDS = {
    "image": "image_url",
    "file": "file_url",
    "video": "video_url",
    "audio": "audio_url",
}
PRIORITIES = ("low", "medium", "high", "critical")
RESPONSE_TYPES = (
    "text",
    "single_select",
    "multi_select",
    "rating",
    "number",
    "boolean",
    "editable_text",
)
PLATFORMS = ("n8n", "zapier", "web_portal", "api", "mobile", "webhook")
REQUIRED_FIELDS = (
    "processing_type",
    "type",
    "priority",
    "request_text",
    "response_type",
    "response_config",
    "default_response",
    "platform",
)
OPTIONAL_FIELDS = (
    "image_url",
    "file_url",
    "file_type",
    "file_name",
    "video_url",
    "audio_url",
    "context",
    "timeout_seconds",
    "callback_url",
    "platform_version",
)
DOCUMENTED_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)
MIN_TIMEOUT, MAX_TIMEOUT = 60, 86_400

VALIDATION_FAILED = "Validation failed"
INVALID_CONFIG = "Invalid response configuration"


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a body was rejected: envelope ``msg`` plus the offending field and issue."""

    field: str
    issue: str
    msg: str = VALIDATION_FAILED


def unknown_fields(body: Mapping[str, Any]) -> list[str]:
    return [name for name in body if name not in DOCUMENTED_FIELDS]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _enum(body: Mapping[str, Any], field: str, allowed: tuple[str, ...]) -> Invalid | None:
    if body[field] not in allowed:
        return Invalid(field, f"{field} must be one of: {', '.join(allowed)}")
    return None


def validate_create_request(body: object) -> Invalid | None:
    """Check a create-request body; the first problem found wins."""
    if not isinstance(body, dict):
        return Invalid("body", "Request body must be a JSON object", "Invalid request body")
    for field in REQUIRED_FIELDS:
        if body.get(field) is None:
            return Invalid(field, "Field is required")
    enums: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("processing_type", PROCESSING_TYPES),
        ("type", CONTENT_TYPES),
        ("priority", PRIORITIES),
    )
    for field, allowed in enums:
        if (bad := _enum(body, field, allowed)) is not None:
            return bad
    text = body["request_text"]
    if not isinstance(text, str) or not 1 <= len(text) <= 2000:
        return Invalid("request_text", "request_text must be between 1 and 2000 characters")
    for content_type, url_field in MEDIA_URL_FIELDS.items():
        url = body.get(url_field)
        if url is not None and not isinstance(url, str):
            return Invalid(url_field, f"{url_field} must be a string")
        if body["type"] == content_type and not url:
            return Invalid(url_field, f"{url_field} is required when type is {content_type}")
    for name in ("file_type", "file_name"):
        if body.get(name) is not None and not isinstance(body[name], str):
            return Invalid(name, f"{name} must be a string")
    if (bad := _check_timeout(body)) is not None:
        return bad
    enums = (("response_type", RESPONSE_TYPES), ("platform", PLATFORMS))
    for field, allowed in enums:
        if (bad := _enum(body, field, allowed)) is not None:
            return bad
    if (bad := _check_optionals(body)) is not None:
        return bad
    config = body["response_config"]
    if not isinstance(config, dict):
        return Invalid("response_config", "response_config must be an object", INVALID_CONFIG)
    checker = _CONFIG_CHECKS[body["response_type"]]
    return checker(config, body["default_response"])


def _check_timeout(body: Mapping[str, Any]) -> Invalid | None:
    timeout = body.get("timeout_seconds")
    if timeout is None:
        if body["processing_type"] == "time-sensitive":
            return Invalid(
                "timeout_seconds", "timeout_seconds is required for time-sensitive requests"
            )
        return None
    if not isinstance(timeout, int) or isinstance(timeout, bool):
        return Invalid("timeout_seconds", "timeout_seconds must be an integer")
    if not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
        return Invalid("timeout_seconds", "timeout_seconds must be between 60 and 86400")
    return None


def _check_optionals(body: Mapping[str, Any]) -> Invalid | None:
    context = body.get("context")
    if context is not None and not isinstance(context, dict):
        return Invalid("context", "context must be an object")
    callback = body.get("callback_url")
    if callback is not None and (
        not isinstance(callback, str) or not callback.startswith(("http://", "https://"))
    ):
        return Invalid("callback_url", "callback_url must be a valid http(s) URL")
    version = body.get("platform_version")
    if version is not None and not isinstance(version, str):
        return Invalid("platform_version", "platform_version must be a string")
    return None


def _config_error(issue: str) -> Invalid:
    return Invalid("response_config", issue, INVALID_CONFIG)


def _default_error(issue: str) -> Invalid:
    return Invalid("default_response", issue)


def option_choices(options: list[Any]) -> set[str]:
    """Strings a select answer may name: option strings, or values and labels of objects."""
    choices: set[str] = set()
    for option in options:
        if isinstance(option, str):
            choices.add(option)
        else:
            choices.update((option["value"], option["label"]))
    return choices


def _check_options(config: Mapping[str, Any]) -> Invalid | None:
    options = config.get("options")
    if not isinstance(options, list) or not options:
        return _config_error("options array required for select response type")
    if len(options) > 20:
        return _config_error("options must contain between 1 and 20 items")
    values: set[str] = set()
    for option in options:
        value: Any
        if isinstance(option, str):
            value = option
            ok = 1 <= len(option) <= 200
        elif isinstance(option, dict):
            value, label = option.get("value"), option.get("label")
            ok = (
                isinstance(value, str)
                and isinstance(label, str)
                and 1 <= len(value) <= 100
                and 1 <= len(label) <= 200
            )
        else:
            ok = False
        if not ok:
            return _config_error(
                "each option must be a non-empty string or an object with value and label"
            )
        if value in values:
            return _config_error("option values must be unique")
        values.add(str(value))
    return None


def _check_single(config: Mapping[str, Any], default: object) -> Invalid | None:
    if (bad := _check_options(config)) is not None:
        return bad
    if not isinstance(default, str) or default not in option_choices(config["options"]):
        return _default_error("default_response must be one of the option values")
    return None


def _check_multi(config: Mapping[str, Any], default: object) -> Invalid | None:
    if (bad := _check_options(config)) is not None:
        return bad
    low, high = config.get("min_selections", 0), config.get("max_selections")
    if not isinstance(low, int) or isinstance(low, bool) or low < 0:
        return _config_error("min_selections must be a non-negative integer")
    if high is not None and (
        not isinstance(high, int) or isinstance(high, bool) or not max(low, 1) <= high
    ):
        return _config_error("max_selections must be an integer >= max(min_selections, 1)")
    choices = option_choices(config["options"])
    if not isinstance(default, list) or not all(
        isinstance(item, str) and item in choices for item in default
    ):
        return _default_error("default_response must be a list of option values")
    return None


def _bounds(config: Mapping[str, Any], rich: tuple[str, str]) -> tuple[Any, Any, bool]:
    """(low, high, rich_form) from either the rich keys or the simple ``min``/``max``."""
    if rich[0] in config or rich[1] in config:
        return config.get(rich[0]), config.get(rich[1]), True
    return config.get("min"), config.get("max"), False


def _check_rating(config: Mapping[str, Any], default: object) -> Invalid | None:
    low, high, _ = _bounds(config, ("scale_min", "scale_max"))
    if not _is_number(low) or not _is_number(high):
        return _config_error("rating requires scale_min and scale_max (or min and max)")
    if high <= low:
        return _config_error("scale_max must be greater than scale_min")
    step = config.get("scale_step", 1)
    if not _is_number(step) or step <= 0:
        return _config_error("scale_step must be a positive number")
    labels = config.get("labels")
    if labels is not None and not isinstance(labels, dict):
        return _config_error("labels must be an object")
    if not _is_number(default) or not low <= default <= high:
        return _default_error("default_response must be a number within the rating scale")
    return None


def _check_number(config: Mapping[str, Any], default: object) -> Invalid | None:
    low, high, rich = _bounds(config, ("min_value", "max_value"))
    if rich and low is None:
        low = 0
    if not _is_number(high) or not _is_number(low):
        return _config_error("number requires max_value (or min and max)")
    if high < low:
        return _config_error("max_value must be >= min_value")
    places = config.get("decimal_places", 0)
    if not isinstance(places, int) or isinstance(places, bool) or not 0 <= places <= 10:
        return _config_error("decimal_places must be between 0 and 10")
    if not _is_number(default) or not low <= default <= high:
        return _default_error("default_response must be a number within the configured range")
    return None


def _check_text(config: Mapping[str, Any], default: object) -> Invalid | None:
    high, low = config.get("max_length"), config.get("min_length", 0)
    if high is None:
        return _config_error("text requires max_length")
    if not isinstance(high, int) or isinstance(high, bool) or not 1 <= high <= 5000:
        return _config_error("max_length must be between 1 and 5000")
    if not isinstance(low, int) or isinstance(low, bool) or low < 0:
        return _config_error("min_length must be a non-negative integer")
    if high is not None and low > high:
        return _config_error("min_length must not exceed max_length")
    if not isinstance(default, str):
        return _default_error("default_response must be a string")
    if high is not None and len(default) > high:
        return _default_error("default_response exceeds max_length")
    return None


def _check_boolean(config: Mapping[str, Any], default: object) -> Invalid | None:
    for key in ("true_label", "false_label"):
        label = config.get(key)
        if label is not None and (not isinstance(label, str) or not 1 <= len(label) <= 100):
            return _config_error(f"{key} must be between 1 and 100 characters")
    if not isinstance(default, bool):
        return _default_error("default_response must be true or false")
    return None


def _check_editable(config: Mapping[str, Any], default: object) -> Invalid | None:
    draft = config.get("draft_text")
    if not isinstance(draft, str) or not draft:
        return _config_error("editable_text requires draft_text")
    if (bad := _check_text(config, default)) is not None:
        return bad
    if len(draft) > config["max_length"]:
        return _config_error("draft_text exceeds max_length")
    return None


_CONFIG_CHECKS = {
    "single_select": _check_single,
    "multi_select": _check_multi,
    "rating": _check_rating,
    "number": _check_number,
    "text": _check_text,
    "boolean": _check_boolean,
    "editable_text": _check_editable,
}
