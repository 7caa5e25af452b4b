"""Answer interpretation: every documented response_data form per response type, timeouts,
cancellations, and a never-raises property."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.resolver.answers import Answer, interpret

OPTIONS = [
    {"value": "approved", "label": "Approve"},
    {"value": "rejected", "label": "Reject"},
    {"value": "needs_changes", "label": "Needs changes"},
]


def single(data: Any, status: str = "completed", default: Any = "rejected") -> Answer:
    return interpret("single_select", OPTIONS, status, data, default)


@pytest.mark.parametrize(
    ("data", "decision"),
    [
        ("approved", "approved"),  # P4 seed decision / option value
        ("Approve", "approved"),  # raw label (get-request page)
        ("  needs CHANGES ", "needs_changes"),  # label, trimmed and case-insensitive
        ("REJECTED", "rejected"),
        ({"selected_value": "approved", "selected_label": "Approve"}, "approved"),
        ({"selected_value": "Approve"}, "approved"),  # flat callback: label in selected_value
        ({"selected_value": "nope", "selected_label": "Reject"}, "rejected"),
        ({"decision": "needs_changes"}, "needs_changes"),
        (["Reject"], "rejected"),
    ],
)
def test_single_select_matches_value_then_label(data: Any, decision: str) -> None:
    answer = single(data)
    assert answer == Answer(decision, decision, data, "human")


def test_value_match_beats_a_label_that_names_another_option() -> None:
    options = [{"value": "a", "label": "b"}, {"value": "b", "label": "Bee"}]
    assert interpret("single_select", options, "completed", "b", None).decision == "b"


def test_simple_string_options_are_understood() -> None:
    simple: Any = ["Approve", "Reject"]
    answer = interpret("single_select", simple, "completed", "reject", None)
    assert answer.decision == "Reject"


def test_unmatched_single_select_keeps_the_raw_string() -> None:
    assert single("Escalate") == Answer(None, "Escalate", "Escalate", "human", unmatched=1)
    assert (
        single({"selected_value": "escalate", "selected_label": "Escalate"}).response == "escalate"
    )
    assert single(7) == Answer(None, 7, 7, "human", unmatched=1)


def test_multi_select_gives_matched_option_values() -> None:
    options = [{"value": "spam", "label": "Spam"}, {"value": "policy", "label": "Policy Violation"}]
    for data in (
        ["Policy Violation", "Spam"],
        {"selected_values": ["policy", "spam"], "selected_labels": ["Policy Violation", "Spam"]},
        {"selected_labels": ["policy violation", "SPAM", "Spam"]},
    ):
        answer = interpret("multi_select", options, "completed", data, [])
        assert answer == Answer(None, ["policy", "spam"], data, "human")
    assert interpret("multi_select", options, "completed", "Spam", []).response == ["spam"]
    # A choice that matches no option sent is kept as sent, and counted: never lost.
    kept = interpret("multi_select", options, "completed", ["Spam", "Other", "spam"], [])
    assert (kept.response, kept.unmatched) == (["spam", "Other"], 1)
    structured = {"selected_values": ["grammar_issues"], "selected_labels": ["Grammar Issues"]}
    kept = interpret("multi_select", options, "completed", structured, [])
    assert (kept.response, kept.unmatched) == (["grammar_issues"], 1)


def test_multi_select_without_configured_options_keeps_the_strings() -> None:
    assert interpret("multi_select", [], "completed", ["x", 3, None], []).response == ["x", "3"]


@pytest.mark.parametrize(
    ("kind", "data", "value"),
    [
        ("rating", 4, 4.0),
        ("rating", {"rating": 4.5, "rating_label": "Good"}, 4.5),
        ("rating", {"rating": 4.0}, 4.0),
        ("rating", " 3.5 ", 3.5),
        ("number", {"number": 129.99, "formatted_value": "$129.99 USD"}, 129.99),
        ("number", {"number": 42.5}, 42.5),
        ("number", -7, -7.0),
        ("number", "1e3", 1000.0),
    ],
)
def test_rating_and_number_become_floats(kind: str, data: Any, value: float) -> None:
    answer = interpret(kind, [], "completed", data, None)
    assert answer == Answer(None, value, data, "human")
    assert isinstance(answer.response, float)


@pytest.mark.parametrize("data", ["lots", float("inf"), "nan", True, {"rating": "x"}, 10**400])
def test_unreadable_numbers_are_passed_through(data: Any) -> None:
    answer = interpret("rating", [], "completed", data, None)
    assert (answer.decision, answer.response) == (None, data)


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (True, True),
        (False, False),
        ({"boolean": True, "boolean_label": "✅ Approve Post"}, True),
        ("Yes", True),
        (" false ", False),
        ("NO", False),
        ("TRUE", True),
    ],
)
def test_boolean(data: Any, value: bool) -> None:
    assert interpret("boolean", [], "completed", data, None) == Answer(None, value, data, "human")


def test_boolean_garbage_passes_through() -> None:
    assert interpret("boolean", [], "completed", "maybe", None).response == "maybe"
    assert interpret("boolean", [], "completed", 1, None).response == 1


def test_text_and_editable_text() -> None:
    assert interpret("text", [], "completed", "Looks fine", None).response == "Looks fine"
    edited = {"revised_text": "Better", "was_edited": True}
    assert interpret("text", [], "completed", edited, None) == Answer(
        None, "Better", edited, "human"
    )
    assert interpret("editable_text", [], "completed", edited, None).response == "Better"


def test_timeout_uses_the_default_response_when_nothing_was_sent() -> None:
    assert single(None, "timeout", "rejected") == Answer(
        "rejected", "rejected", {}, "timeout_default"
    )
    assert single(None, "timed_out", "Reject").decision == "rejected"
    rating = interpret("rating", [], "timeout", None, 3)
    assert rating == Answer(None, 3.0, {}, "timeout_default")


def test_timeout_with_response_data_uses_what_hitl_applied() -> None:
    answer = single("Approve", "timeout", "rejected")
    assert answer == Answer("approved", "approved", "Approve", "timeout_default")


def test_timeout_default_outside_the_options_has_no_decision() -> None:
    answer = single(None, "timeout", "Unable to review within time limit")
    assert answer == Answer(
        None, "Unable to review within time limit", {}, "timeout_default", unmatched=1
    )


def test_cancelled_has_no_decision_or_response() -> None:
    assert single(None, "cancelled") == Answer(None, None, {}, "cancelled")
    assert single("Approve", "cancelled") == Answer(None, None, "Approve", "cancelled")


def test_completed_without_an_answer_has_no_decision() -> None:
    assert single(None) == Answer(None, None, {}, "human")


def test_unknown_response_type_passes_the_answer_through() -> None:
    assert interpret("sketch", OPTIONS, "completed", {"svg": "…"}, None) == Answer(
        None, {"svg": "…"}, {"svg": "…"}, "human"
    )


# --- property -------------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["approved", "Approve", " yes ", "4.5", "true"])
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "selected_value",
                    "selected_values",
                    "selected_labels",
                    "rating",
                    "number",
                    "boolean",
                    "revised_text",
                    "decision",
                    "value",
                    "label",
                ]
            )
            | st.text(max_size=6),
            inner,
            max_size=4,
        )
    ),
    max_leaves=8,
)
_options = (
    st.just(OPTIONS)
    | st.lists(st.fixed_dictionaries({"value": _scalars, "label": _scalars}) | _scalars, max_size=4)
    | _scalars
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    response_type=st.sampled_from(
        ["single_select", "multi_select", "rating", "number", "boolean", "text", "editable_text"]
    )
    | _scalars,
    options=_options,
    status=st.sampled_from(["completed", "timeout", "timed_out", "cancelled", "claimed"])
    | _scalars,
    response_data=_json,
    default_response=_json,
)
def test_property_interpret_never_raises(
    response_type: Any, options: Any, status: Any, response_data: Any, default_response: Any
) -> None:
    answer = interpret(response_type, options, status, response_data, default_response)
    assert answer.decided_by in ("human", "timeout_default", "cancelled")
    assert answer.decision is None or isinstance(answer.decision, str)
    assert answer.raw_response is (
        response_data if response_data is not None else answer.raw_response
    )
    if answer.decision is not None:
        assert response_type == "single_select" and answer.response == answer.decision
