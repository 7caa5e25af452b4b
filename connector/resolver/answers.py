"""Turning a request's final answer into the decision record's fields (design §3).

Owns: reading ``response_data`` in every documented form (raw scalar/list, or structured
``selected_value(s)``/``rating``/``number``/``boolean``/``revised_text``; the seed's ``decision``
string), matching select answers to the configured options (by value, then label,
case-insensitively), applying ``default_response`` on timeout, and who decided. Never raises:
an answer it cannot read comes back with ``decision`` ``None`` and ``response`` as sent.
Does not own: payload shapes (``hitl.payloads``), joining callbacks to requests, or producing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

DecidedBy = Literal["human", "timeout_default", "cancelled"]

# Bounded work on a hostile multi-select answer; real ones have at most 20 options.
_MAX_ITEMS: Final = 1000
_MAX_NUMBER_CHARS: Final = 64
_TRUE: Final = frozenset({"true", "yes"})
_FALSE: Final = frozenset({"false", "no"})
_SELECT_KEYS: Final = ("selected_value", "selected_label", "decision", "value", "label")


@dataclass(frozen=True, slots=True)
class Answer:
    """The decision record's ``decision``, ``response``, ``raw_response`` and ``decided_by``."""

    decision: str | None
    response: Any
    raw_response: Any
    decided_by: DecidedBy
    unmatched: int = 0  # select choices that match no option sent (kept in ``response``)


class _Options:
    """Lookup of option values by value and by label: exact first, then trimmed/casefolded."""

    def __init__(self, options: Any) -> None:
        self.count = 0
        self._maps: tuple[dict[str, str], ...] = ({}, {}, {}, {})
        if not isinstance(options, list | tuple):
            return
        by_value, by_value_folded, by_label, by_label_folded = self._maps
        for option in options[:_MAX_ITEMS]:
            if isinstance(option, str):  # the simple form: plain option strings
                value, label = option, option
            elif isinstance(option, dict) and isinstance(option.get("value"), str):
                value = option["value"]
                raw_label = option.get("label")
                label = raw_label if isinstance(raw_label, str) else value
            else:
                continue
            self.count += 1
            by_value.setdefault(value, value)
            by_value_folded.setdefault(_fold(value), value)
            by_label.setdefault(label, value)
            by_label_folded.setdefault(_fold(label), value)

    def match(self, text: str) -> str | None:
        by_value, by_value_folded, by_label, by_label_folded = self._maps
        folded = _fold(text)
        for table, key in (
            (by_value, text),
            (by_value_folded, folded),
            (by_label, text),
            (by_label_folded, folded),
        ):
            if key in table:
                return table[key]
        return None


def _fold(text: str) -> str:
    return text.strip().casefold()


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**64:
        return str(value)
    return None


def _select_candidates(value: Any) -> list[str]:
    """Strings that may name the chosen option, most authoritative first."""
    if isinstance(value, dict):
        found = (_as_text(value.get(key)) for key in _SELECT_KEYS)
        return [text for text in found if text is not None]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    text = _as_text(value)
    return [] if text is None else [text]


def _single(value: Any, options: _Options) -> tuple[str | None, Any]:
    candidates = _select_candidates(value)
    for text in candidates:
        matched = options.match(text)
        if matched is not None:
            return matched, matched
    # Unmatched: the string the reviewer's answer carried, else the value as sent.
    return None, candidates[0] if candidates and isinstance(value, dict) else value


def _items(value: Any) -> list[Any] | None:
    if isinstance(value, dict):
        for key in ("selected_values", "selected_labels", "values"):
            if isinstance(value.get(key), list):
                return list(value[key][:_MAX_ITEMS])
        single = _select_candidates(value)
        return single[:1] if single else None
    if isinstance(value, list):
        return list(value[:_MAX_ITEMS])
    text = _as_text(value)
    return None if text is None else [text]


def _multi(value: Any, options: _Options) -> tuple[Any, int]:
    """The chosen option values, in the reviewer's order; a choice that matches no option
    is kept as sent (never dropped) and counted."""
    items = _items(value)
    if items is None:
        return value, 0
    texts = [text for text in map(_as_text, items) if text is not None]
    if options.count == 0:  # nothing to match against: keep what the reviewer sent
        return texts, 0
    chosen: list[str] = []
    unmatched = 0
    for text in texts:
        option = options.match(text)
        if option is None:
            unmatched += 1
            option = text
        if option not in chosen:
            chosen.append(option)
    return chosen, unmatched


def _number(value: Any, keys: Iterable[str]) -> float | None:
    if isinstance(value, dict):
        for key in keys:
            if key in value:
                return _number(value[key], ())
        return None
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str) and len(value) <= _MAX_NUMBER_CHARS:
            number = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _boolean(value: Any) -> bool | None:
    if isinstance(value, dict):
        value = value.get("boolean")
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = _fold(value)
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


def _text(value: Any) -> Any:
    if isinstance(value, dict):
        for key in ("revised_text", "text"):
            if isinstance(value.get(key), str):
                return value[key]
    return value


def _response(response_type: Any, options: _Options, value: Any) -> tuple[str | None, Any, int]:
    """``(decision, response, unmatched choices)`` for one answer value of ``response_type``."""
    if value is None:
        return None, None, 0
    if response_type == "single_select":
        decision, response = _single(value, options)
        return decision, response, int(decision is None and options.count > 0)
    if response_type == "multi_select":
        return (None, *_multi(value, options))
    decision, response = _scalar(response_type, value)
    return decision, response, 0


def _scalar(response_type: Any, value: Any) -> tuple[str | None, Any]:
    if response_type in ("rating", "number"):
        keys = ("rating", "number") if response_type == "rating" else ("number", "rating")
        number = _number(value, (*keys, "value"))
        return None, value if number is None else number
    if response_type == "boolean":
        flag = _boolean(value)
        return None, value if flag is None else flag
    if response_type in ("text", "editable_text"):
        return None, _text(value)
    return None, value


def interpret(
    response_type: str,
    options: list[dict[str, str]],
    status: str,
    response_data: Any,
    default_response: Any,
) -> Answer:
    """The decision fields for a request that ended with ``status``.

    ``cancelled`` → no decision. ``timeout`` → the answer HITL.sh sent, else the request's
    ``default_response``, as ``timeout_default``. Anything else is a human's answer.
    ``decision`` is set only for ``single_select`` answers that match a configured option.
    """
    raw = {} if response_data is None else response_data
    word = status.strip().lower() if isinstance(status, str) else ""
    if word in ("cancelled", "canceled"):
        return Answer(None, None, raw, "cancelled")
    lookup = _Options(options)
    if word in ("timeout", "timed_out"):
        value = default_response if response_data is None else response_data
        decision, response, unmatched = _response(response_type, lookup, value)
        return Answer(decision, response, raw, "timeout_default", unmatched)
    decision, response, unmatched = _response(response_type, lookup, response_data)
    return Answer(decision, response, raw, "human", unmatched)
