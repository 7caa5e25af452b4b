"""Reviewer answers per response type: draw a random valid one, check a hand-given one, shape it.

An *answer* is canonical and raw: the option value (single select), a list of option values
(multi select), a number (rating, number), a bool (boolean) or a string (text, and the revised
text of editable_text). ``shape``
turns it into ``response_data`` in the raw or the structured style of hitl-api §3.2. Works on
both the simple and the rich ``response_config`` forms. Pure: no I/O, no clock; the caller
passes the random generator.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

TEXTS = (
    "Looks good to me.",
    "Approved after review.",
    "Needs changes: please clarify the wording.",
    "Rejected: this violates the content policy.",
)


class AnswerError(ValueError):
    """A hand-given answer that does not fit the request's response type."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tidy(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(x, 6)


def options_of(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(value, label) per option; a plain-string option is its own value and label."""
    out = []
    for option in config.get("options") or ():
        if isinstance(option, str):
            out.append((option, option))
        else:
            out.append((option["value"], option["label"]))
    return out


def _option_value(config: Mapping[str, Any], name: str) -> str | None:
    for value, label in options_of(config):
        if name in (value, label):
            return value
    return None


def _range(response_type: str, config: Mapping[str, Any]) -> tuple[float, float]:
    rich = ("scale_min", "scale_max") if response_type == "rating" else ("min_value", "max_value")
    if rich[0] in config or rich[1] in config:
        low = config.get(rich[0])
        return (0 if low is None else low), config[rich[1]]
    return config["min"], config["max"]


def _text_bounds(config: Mapping[str, Any]) -> tuple[int, int]:
    return int(config.get("min_length") or 0), int(config.get("max_length") or 5000)


def _fit_text(text: str, config: Mapping[str, Any]) -> str:
    low, high = _text_bounds(config)
    return text.ljust(low, ".")[:high]


def _weighted(rng: random.Random, items: list[Any], weights: list[float]) -> Any:
    if not any(w > 0 for w in weights):
        return rng.choice(items)
    return rng.choices(items, weights)[0]


def _mix_candidates(
    response_type: str, config: Mapping[str, Any], mix: Mapping[str, float]
) -> tuple[list[Any], list[float]]:
    """Mix keys that are valid answers for this request, as canonical answers."""
    items: list[Any] = []
    weights: list[float] = []
    for key, weight in mix.items():
        if weight <= 0:
            continue
        try:
            answer = parse_answer(response_type, config, _mix_key(response_type, config, key))
        except AnswerError:
            continue
        items.append(answer)
        weights.append(weight)
    return items, weights


def _mix_key(response_type: str, config: Mapping[str, Any], key: str) -> Any:
    if response_type == "boolean":
        if key.lower() in ("true", str(config.get("true_label", "")).lower()):
            return True
        if key.lower() in ("false", str(config.get("false_label", "")).lower()):
            return False
        return key
    if response_type in ("rating", "number"):
        try:
            return float(key)
        except ValueError:
            return key
    return key


def random_answer(
    response_type: str, config: Mapping[str, Any], mix: Mapping[str, float], rng: random.Random
) -> Any:
    """A valid answer, weighted by the ``mix`` keys that are valid for this request."""
    if response_type == "multi_select":
        return _random_multi(config, mix, rng)
    items, weights = _mix_candidates(response_type, config, mix)
    if items:
        return _weighted(rng, items, weights)
    if response_type == "single_select":
        return rng.choice(options_of(config))[0]
    if response_type == "boolean":
        return rng.random() < 0.5
    if response_type == "text":
        return _fit_text(rng.choice(TEXTS), config)
    if response_type == "editable_text":
        draft = str(config.get("draft_text") or "")
        return draft if rng.random() < 0.5 else _fit_text(draft + " (edited)", config)
    low, high = _range(response_type, config)
    if response_type == "rating":
        step = config.get("scale_step", 1)
        steps = math.floor((high - low) / step + 1e-9)
        return _tidy(low + rng.randint(0, steps) * step)
    places = int(config.get("decimal_places", 0))
    value = min(max(round(rng.uniform(low, high), places), low), high)
    return int(value) if places == 0 else value


def _random_multi(
    config: Mapping[str, Any], mix: Mapping[str, float], rng: random.Random
) -> list[str]:
    values = [value for value, _ in options_of(config)]
    low = max(int(config.get("min_selections") or 0), 1)
    high = min(int(config.get("max_selections") or len(values)), len(values))
    count = rng.randint(min(low, high), high)
    weight = dict.fromkeys(values, 0.0)
    for key, w in mix.items():
        value = _option_value(config, key)
        if value is not None and w > 0:
            weight[value] += w
    chosen: list[str] = []
    remaining = list(values)
    for _ in range(count):
        pick = _weighted(rng, remaining, [weight[v] for v in remaining])
        chosen.append(pick)
        remaining.remove(pick)
    return [v for v in values if v in chosen]  # option order, like a form would submit


def _unwrap(value: Any) -> Any:
    """Accept the structured shapes too: take the raw answer out of them."""
    if isinstance(value, dict):
        for key in (
            "selected_value",
            "selected_values",
            "rating",
            "number",
            "boolean",
            "revised_text",
        ):
            if key in value:
                return value[key]
    return value


def parse_answer(response_type: str, config: Mapping[str, Any], value: Any) -> Any:
    """The canonical answer for a hand-given ``response_data``; ``AnswerError`` if invalid."""
    value = _unwrap(value)
    if response_type == "single_select":
        found = _option_value(config, value) if isinstance(value, str) else None
        if found is None:
            raise AnswerError("response_data must be one of the option values")
        return found
    if response_type == "multi_select":
        return _parse_multi(config, value)
    if response_type == "boolean":
        if not isinstance(value, bool):
            raise AnswerError("response_data must be true or false")
        return value
    if response_type in ("text", "editable_text"):
        low, high = _text_bounds(config)
        if not isinstance(value, str) or not low <= len(value) <= high:
            raise AnswerError(f"response_data must be a string of {low} to {high} characters")
        return value
    bottom, top = _range(response_type, config)
    if not _is_number(value) or not bottom <= value <= top:
        raise AnswerError(f"response_data must be a number between {bottom} and {top}")
    return _tidy(value)


def _parse_multi(config: Mapping[str, Any], value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AnswerError("response_data must be a list of option values")
    found = [_option_value(config, v) for v in value]
    if None in found or len(set(found)) != len(found):
        raise AnswerError("response_data must be a list of distinct option values")
    low = int(config.get("min_selections") or 0)
    high = config.get("max_selections") or len(options_of(config))
    if not low <= len(found) <= high:
        raise AnswerError(f"response_data must select between {low} and {high} options")
    return [v for v in found if v is not None]


def shape(response_type: str, config: Mapping[str, Any], answer: Any, style: str) -> Any:
    """``response_data`` for an answer: the answer itself (raw) or the structured object."""
    if style == "raw" or response_type == "text":
        return answer
    if response_type == "editable_text":
        return {"revised_text": answer, "was_edited": answer != config.get("draft_text")}
    labels = dict(options_of(config))
    if response_type == "single_select":
        return {"selected_value": answer, "selected_label": labels.get(answer, answer)}
    if response_type == "multi_select":
        return {"selected_values": answer, "selected_labels": [labels.get(v, v) for v in answer]}
    if response_type == "boolean":
        key, default = ("true_label", "True") if answer else ("false_label", "False")
        return {"boolean": answer, "boolean_label": config.get(key) or default}
    if response_type == "rating":
        out: dict[str, Any] = {"rating": answer}
        label = (config.get("labels") or {}).get(str(answer))
        if label is not None:
            out["rating_label"] = label
        return out
    return {"number": answer}
