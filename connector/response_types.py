"""The documented response types: the ``response_config`` each needs, and what fits it.

Owns: the configuration sent for each ``response_type`` when the operator gives none (with the
fields hitl-api.md §3.2 calls required: options, scale bounds, max value, max length, draft
text), the check that a given configuration has those fields, the check that
``default_response`` fits the type and configuration (at start), and the option list as sent
(what answers are matched against). Pure; used by the settings model and the submitter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

RESPONSE_TYPES: Final = (
    "single_select",
    "multi_select",
    "rating",
    "number",
    "text",
    "boolean",
    "editable_text",
)
# Sent when review.response_config is unset (selects get review.options; editable_text gets
# the request text as its draft_text, per request).
DEFAULT_CONFIGS: Final[Mapping[str, Mapping[str, Any]]] = {
    "rating": {"scale_min": 1, "scale_max": 5, "scale_step": 1},
    "number": {"min_value": 0, "max_value": 100, "decimal_places": 0},
    "text": {"max_length": 5000},
    "boolean": {"true_label": "Approve", "false_label": "Reject"},
    "editable_text": {"max_length": 5000},
}
MAX_TEXT: Final = 5000


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _bounds(config: Mapping[str, Any], low_key: str, high_key: str) -> tuple[Any, Any]:
    """Bounds from the rich keys, else the simple ``min``/``max`` form."""
    if low_key in config or high_key in config:
        return config.get(low_key, 0 if low_key == "min_value" else None), config.get(high_key)
    return config.get("min"), config.get("max")


def option_values(config: Mapping[str, Any]) -> list[str]:
    return [o["value"] for o in sent_options(config)]


def sent_options(config: Mapping[str, Any]) -> list[dict[str, str]]:
    """``config["options"]`` as ``{value, label}`` objects (plain strings are both)."""
    out: list[dict[str, str]] = []
    options = config.get("options")
    for option in options if isinstance(options, list) else ():
        if isinstance(option, str):
            out.append({"value": option, "label": option})
        elif isinstance(option, dict) and isinstance(option.get("value"), str):
            label = option.get("label")
            out.append(
                {
                    "value": option["value"],
                    "label": label if isinstance(label, str) else option["value"],
                }
            )
    return out


def check_config(response_type: str, config: Mapping[str, Any]) -> str | None:
    """The documented required field ``config`` lacks for ``response_type``, or None."""
    if response_type in ("single_select", "multi_select"):
        if not sent_options(config):
            return f"{response_type} needs options (1 to 20 {{value, label}})"
        if len(config["options"]) > 20:
            return f"{response_type} takes at most 20 options"
    elif response_type == "rating":
        low, high = _bounds(config, "scale_min", "scale_max")
        if not (_number(low) and _number(high) and high > low):
            return "rating needs scale_min < scale_max"
    elif response_type == "number":
        low, high = _bounds(config, "min_value", "max_value")
        if not (_number(low) and _number(high) and high >= low):
            return "number needs max_value (>= min_value)"
    elif response_type in ("text", "editable_text"):
        high = config.get("max_length")
        if not (isinstance(high, int) and not isinstance(high, bool) and 1 <= high <= MAX_TEXT):
            return f"{response_type} needs max_length between 1 and {MAX_TEXT}"
    return None


def check_default(response_type: str, config: Mapping[str, Any], default: Any) -> str | None:
    """Why ``default`` does not fit ``response_type`` with ``config``, or None."""
    if response_type == "single_select":
        values = option_values(config)
        if default not in values:
            return f"{default!r} is not one of the option values {values}"
    elif response_type == "multi_select":
        values = option_values(config)
        if not isinstance(default, list) or any(v not in values for v in default):
            return f"{default!r} is not a list of option values {values}"
    elif response_type in ("rating", "number"):
        keys = (
            ("scale_min", "scale_max") if response_type == "rating" else ("min_value", "max_value")
        )
        low, high = _bounds(config, *keys)
        if not _number(default) or not low <= default <= high:
            return f"{default!r} is not a number from {low} to {high}"
    elif response_type in ("text", "editable_text"):
        if not isinstance(default, str) or len(default) > int(config.get("max_length") or MAX_TEXT):
            return f"{default!r} is not a string within max_length"
    elif response_type == "boolean" and not isinstance(default, bool):
        return f"{default!r} is not true or false"
    return None


def effective_config(
    response_type: str, response_config: Mapping[str, Any] | None, options: Sequence[Any]
) -> dict[str, Any]:
    """The ``response_config`` sent: the operator's, else the documented default for the
    type (selects: ``options``, objects with ``value`` and ``label``)."""
    if response_config is not None:
        return dict(response_config)
    if response_type in ("single_select", "multi_select"):
        return {"options": [{"value": o.value, "label": o.label} for o in options]}
    return dict(DEFAULT_CONFIGS.get(response_type, {}))
