"""Payload normalization: every documented webhook shape (hitl-api.md §4.3), polled objects,
what is ignored, what is malformed, and properties over arbitrary JSON."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from connector.hitl.payloads import (
    MAX_VALUE_DEPTH,
    Ignored,
    MalformedPayload,
    NormalizedCallback,
    UnknownEvent,
    UnknownStatus,
    normalize_request_object,
    normalize_webhook,
    request_id_hint,
)

RID = "65f1234567890abcdef12348"
LOOP = "65f1234567890abcdef12345"
USER = "65f1234567890abcdef12350"


def webhook(payload: Any) -> NormalizedCallback:
    result = normalize_webhook(payload)
    assert isinstance(result, NormalizedCallback), result
    return result


# --- P1: nested under data.request, one case per documented event ------------------------------


def test_p1_completed() -> None:
    cb = webhook(
        {
            "event": "request.completed",
            "timestamp": "2024-03-15T14:30:00Z",
            "data": {
                "request": {
                    "id": RID,
                    "loop_id": LOOP,
                    "processing_type": "time-sensitive",
                    "type": "markdown",
                    "priority": "high",
                    "request_text": "Review this",
                    "response_type": "single_select",
                    "status": "completed",
                    "response_data": "Approve",
                    "response_by": USER,
                    "response_at": "2024-03-15T10:45:00Z",
                    "response_time_seconds": 1800.5,
                    "timeout_at": "2024-03-15T11:30:00Z",
                    "created_at": "2024-03-15T10:15:00Z",
                    "updated_at": "2024-03-15T10:45:00Z",
                },
                "loop": {"id": LOOP, "name": "Content Moderation Team", "creator_id": "c"},
                "reviewer": {"user_id": USER, "email": "reviewer@example.com"},
            },
        }
    )
    assert cb == NormalizedCallback(
        request_id=RID,
        event="request.completed",
        status="completed",
        response_data="Approve",
        reviewer={"id": USER, "email": "reviewer@example.com"},
        occurred_at="2024-03-15T14:30:00Z",
        response_time_seconds=1800.5,
    )
    assert cb.terminal


def test_p1_claimed_is_progress_with_the_claiming_reviewer() -> None:
    cb = webhook(
        {
            "event": "request.claimed",
            "timestamp": "2024-03-15T10:20:00Z",
            "data": {
                "request": {
                    "id": RID,
                    "loop_id": LOOP,
                    "status": "claimed",
                    "claimed_by": USER,
                    "claimed_at": "2024-03-15T10:20:00Z",
                },
                "reviewer": {"user_id": USER, "email": "reviewer@example.com"},
                "estimated_completion": "2024-03-15T10:50:00Z",
            },
        }
    )
    assert (cb.event, cb.status, cb.terminal) == ("request.claimed", "claimed", False)
    assert cb.reviewer == {"id": USER, "email": "reviewer@example.com"}
    assert cb.response_data is None


def test_p1_cancelled() -> None:
    cb = webhook(
        {
            "event": "request.cancelled",
            "timestamp": "2024-03-15T10:30:00Z",
            "data": {
                "request": {
                    "id": RID,
                    "loop_id": LOOP,
                    "status": "cancelled",
                    "previous_status": "pending",
                    "cancelled_at": "2024-03-15T10:29:00Z",
                    "created_at": "…",
                    "updated_at": "…",
                },
                "loop": {"id": LOOP, "name": "Team"},
                "refund_info": {"refunded": True, "reason": "pending"},
            },
        }
    )
    assert (cb.status, cb.terminal, cb.response_data, cb.reviewer) == (
        "cancelled",
        True,
        None,
        None,
    )


def test_p1_timeout_carries_the_default_response() -> None:
    cb = webhook(
        {
            "event": "request.timeout",
            "data": {
                "request": {
                    "id": RID,
                    "loop_id": LOOP,
                    "status": "timeout",
                    "previous_status": "pending",
                    "timeout_at": "2024-03-15T11:30:00Z",
                    "default_response": "Unable to review within time limit",
                },
                "loop": {"id": LOOP},
            },
        }
    )
    assert (cb.status, cb.terminal) == ("timeout", True)
    assert cb.default_response == "Unable to review within time limit"
    assert cb.occurred_at == "2024-03-15T11:30:00Z"  # the deadline is when it timed out


def test_p1_loop_member_joined_is_ignored() -> None:
    result = normalize_webhook(
        {
            "event": "loop.member_joined",
            "data": {
                "loop": {"id": LOOP, "name": "T", "member_count": 3},
                "member": {"user_id": USER, "email": "a@b.c", "status": "active"},
            },
        }
    )
    assert isinstance(result, Ignored) and result.event == "loop.member_joined"


# --- P2 .. P6 ------------------------------------------------------------------------------------


def test_p2_flat_callback_with_structured_answer_and_reviewer_object() -> None:
    cb = webhook(
        {
            "event": "request.completed",
            "request_id": RID,
            "loop_id": LOOP,
            "status": "completed",
            "response_data": {"selected_value": "Approve"},
            "response_by": {
                "user_id": "65f1234567890abcdef12346",
                "name": "John Doe",
                "email": "john@example.com",
            },
            "response_at": "2024-03-15T10:45:00Z",
            "response_time_seconds": 245.5,
            "created_at": "2024-03-15T10:41:00Z",
        }
    )
    assert cb.response_data == {"selected_value": "Approve"}
    assert cb.reviewer == {
        "id": "65f1234567890abcdef12346",
        "name": "John Doe",
        "email": "john@example.com",
    }
    assert (cb.occurred_at, cb.response_time_seconds) == ("2024-03-15T10:45:00Z", 245.5)


def test_p2_timed_out_callback_has_nulls() -> None:
    cb = webhook(
        {
            "event": "request.timeout",
            "request_id": RID,
            "status": "timeout",
            "response_data": None,
            "response_by": None,
            "response_at": None,
            "response_time_seconds": None,
        }
    )
    assert (cb.status, cb.response_data, cb.reviewer, cb.response_time_seconds) == (
        "timeout",
        None,
        None,
        None,
    )


def test_p3_flat_mini_with_reviewer_email() -> None:
    cb = webhook(
        {
            "event": "request.completed",
            "request_id": RID,
            "status": "completed",
            "response_data": "Approve",
            "response_by": "reviewer@example.com",
            "completed_at": "2024-03-15T10:45:00Z",
        }
    )
    assert (cb.response_data, cb.reviewer, cb.occurred_at) == (
        "Approve",
        {"email": "reviewer@example.com"},
        "2024-03-15T10:45:00Z",
    )


def test_p4_seed_decision_counts_as_the_answer() -> None:
    cb = webhook(
        {
            "event": "request.completed",
            "timestamp": "2024-03-15T10:46:00Z",
            "data": {
                "request_id": "req_abc123",
                "decision": "approved",
                "reviewer_id": "reviewer_def456",
                "completed_at": "2024-03-15T10:45:00Z",
            },
        }
    )
    assert (cb.request_id, cb.status, cb.response_data) == ("req_abc123", "completed", "approved")
    assert cb.reviewer == {"id": "reviewer_def456"}
    assert cb.occurred_at == "2024-03-15T10:46:00Z"


def test_p4_created_is_a_pending_request() -> None:
    cb = webhook(
        {
            "event": "request.created",
            "data": {
                "request_id": "req_abc123",
                "loop_id": LOOP,
                "content_type": "text",
                "priority": "normal",
                "created_at": "2024-03-15T10:00:00Z",
            },
        }
    )
    assert (cb.event, cb.status, cb.terminal, cb.occurred_at) == (
        "request.created",
        "pending",
        False,
        "2024-03-15T10:00:00Z",
    )


def test_p4_assigned() -> None:
    cb = webhook(
        {
            "event": "request.assigned",
            "data": {
                "request_id": "req_abc123",
                "reviewer_id": "rev_1",
                "assigned_at": "2024-03-15T10:05:00Z",
            },
        }
    )
    assert (cb.status, cb.reviewer, cb.occurred_at) == (
        "assigned",
        {"id": "rev_1"},
        "2024-03-15T10:05:00Z",
    )


def test_p4_response_data_wins_over_decision() -> None:
    cb = webhook(
        {
            "event": "request.completed",
            "data": {"request_id": "r", "decision": "approved", "response_data": "Reject"},
        }
    )
    assert cb.response_data == "Reject"


def test_p5_data_with_response_data_and_response_by_user() -> None:
    cb = webhook(
        {
            "event": "request.completed",
            "data": {
                "request_id": RID,
                "response_data": {"rating": 4.5, "rating_label": "Good"},
                "response_by_user": {"name": "Jane"},
            },
        }
    )
    assert (cb.status, cb.response_data, cb.reviewer) == (
        "completed",
        {"rating": 4.5, "rating_label": "Good"},
        {"name": "Jane"},
    )


def test_p6_handoff_flat_id_and_nested_request() -> None:
    cb = webhook(
        {
            "event": "request.completed",
            "request_id": "5b0c6f1e-uuid",
            "timestamp": "2025-01-01T00:00:00Z",
            "data": {
                "request": {
                    "id": "5b0c6f1e-uuid",
                    "status": "completed",
                    "response_data": {"selected_value": "approve", "selected_label": "Approve"},
                    "response_by": {"user_id": "u1", "name": "Ann"},
                }
            },
        }
    )
    assert (cb.request_id, cb.status) == ("5b0c6f1e-uuid", "completed")
    assert cb.reviewer == {"id": "u1", "name": "Ann"}


@pytest.mark.parametrize(
    "event",
    [
        "loop.created",
        "loop.updated",
        "loop.deleted",
        "loop.member_left",
        "loop.archived",
        "user.invited",
        "user.joined",
        "system.performance",
        "system.error",
        "api_key.limit_exceeded",
        "api_key.quota_warning",
    ],
)
def test_documented_non_request_events_are_ignored(event: str) -> None:
    result = normalize_webhook({"event": event, "data": {"request_id": RID}})
    assert isinstance(result, Ignored)
    assert len(result.reason) < 200


@pytest.mark.parametrize(
    "event", ["turn.resolved", "review.completed", "request.reassigned_somewhere", "", "x" * 10_000]
)
def test_unknown_events_raise_unknown_event_to_be_kept(event: str) -> None:
    with pytest.raises(UnknownEvent) as caught:
        normalize_webhook({"event": event, "data": {"request_id": RID}})
    assert caught.value.reason == "unknown_event"
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("status", ["answered", "resolved", "failed", "pending", "claimed"])
def test_terminal_event_with_unknown_or_progress_status_is_unknown_status(status: str) -> None:
    payload = {"event": "request.completed", "data": {"request_id": RID, "status": status}}
    with pytest.raises(UnknownStatus) as caught:
        normalize_webhook(payload)
    assert caught.value.reason == "unknown_status"
    assert status in str(caught.value)


def test_unknown_status_without_event_is_unknown_status_not_progress() -> None:
    with pytest.raises(UnknownStatus):
        normalize_webhook({"request_id": RID, "status": "answered"})


def test_request_id_with_control_characters_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="control characters"):
        normalize_webhook({"event": "request.completed", "request_id": "r\r\nX: y"})
    assert request_id_hint({"request_id": "r\nx"}) is None
    assert request_id_hint({"data": {"request": {"id": 42}}}) == "42"


def test_escalated_event_shows_as_status_unless_already_terminal() -> None:
    assert webhook({"event": "request.escalated", "request_id": "r"}).status == "escalated"
    pending = {"event": "request.escalated", "request_id": "r", "status": "pending"}
    assert webhook(pending).status == "escalated"
    done = {"event": "request.escalated", "request_id": "r", "status": "completed"}
    assert webhook(done).status == "completed"


def test_status_precedence_top_level_then_data_then_request() -> None:
    payload = {
        "event": "request.completed",
        "status": "timeout",
        "data": {"status": "cancelled", "request": {"id": "r", "status": "completed"}},
    }
    assert webhook(payload).status == "timeout"
    del payload["status"]
    assert webhook(payload).status == "cancelled"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("timed_out", "timeout"),
        ("Completed", "completed"),
        ("canceled", "cancelled"),
        (" TIMEOUT ", "timeout"),
    ],
)
def test_status_spellings_are_normalized(raw: str, status: str) -> None:
    assert (
        webhook({"event": "request.completed", "request_id": "r", "status": raw}).status == status
    )


def test_event_derived_from_status_when_absent_and_integer_ids_accepted() -> None:
    cb = webhook({"request_id": 42, "status": "timed_out"})
    assert (cb.request_id, cb.event, cb.status) == ("42", "request.timeout", "timeout")


def test_reviewer_sources_naming_different_people_are_not_mixed() -> None:
    cb = webhook(
        {
            "event": "request.completed",
            "request_id": "r",
            "response_by": {"user_id": "u1", "name": "Ann"},
            "data": {"reviewer": {"user_id": "u2", "email": "bob@x"}},
        }
    )
    assert cb.reviewer == {"id": "u1", "name": "Ann"}


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ([1, 2], "JSON object"),
        ("request.completed", "JSON object"),
        ({"event": "request.completed"}, "no request id"),
        ({"event": "request.completed", "data": {"decision": "approved"}}, "no request id"),
        ({"event": "request.completed", "request_id": ["r"]}, "string or integer"),
        ({"event": "request.completed", "request_id": True}, "string or integer"),
        ({"event": "request.completed", "request_id": 1.5}, "string or integer"),
        ({"event": "request.completed", "request_id": "  "}, "empty"),
        ({"event": "request.completed", "request_id": "r" * 257}, "longer than 256"),
        ({"event": "request.completed", "data": [RID]}, "data must be an object"),
        ({"event": "request.completed", "data": {"request": "r"}}, "data.request must be"),
        ({"event": "request.completed", "request_id": "r", "status": 3}, "status must be"),
        ({"event": "request.completed", "request_id": "r", "status": "¿?"}, "not a request status"),
        ({"event": 7, "request_id": "r"}, "event must be a string"),
        ({"request_id": "r"}, "no event and no status"),
    ],
)
def test_malformed_request_payloads_name_the_problem(payload: Any, problem: str) -> None:
    with pytest.raises(MalformedPayload, match=problem):
        normalize_webhook(payload)


def _deep(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def test_too_deep_answers_are_malformed_and_just_deep_enough_pass() -> None:
    ok = webhook(
        {"event": "request.completed", "request_id": "r", "response_data": _deep(MAX_VALUE_DEPTH)}
    )
    orjson.dumps(ok.to_json())
    with pytest.raises(MalformedPayload, match="deeper"):
        normalize_webhook(
            {
                "event": "request.completed",
                "request_id": "r",
                "response_data": _deep(MAX_VALUE_DEPTH + 1),
            }
        )


def test_very_deep_payload_anywhere_does_not_recurse() -> None:
    deep = _deep(100_000)
    for payload in (
        {"event": "request.completed", "request_id": "r", "data": {"loop": deep}},
        {"event": "request.completed", "request_id": "r", "default_response": deep},
        deep,
    ):
        with contextlib.suppress(MalformedPayload):
            normalize_webhook(payload)


# --- polled request objects ----------------------------------------------------------------------


GET_REQUEST: dict[str, Any] = {
    "error": False,
    "msg": "Request retrieved successfully",
    "data": {
        "request": {
            "id": RID,
            "loop_id": LOOP,
            "response_type": "single_select",
            "response_config": {"options": ["Approve", "Reject", "Needs Changes"]},
            "default_response": "Approve",
            "timeout_at": "2024-03-15T11:30:00Z",
            "status": "completed",
            "response_by": USER,
            "response_at": "2024-03-15T10:45:00Z",
            "response_data": "Approve",
            "response_time_seconds": 900.5,
            "response_by_user": {"name": "Jane"},
            "created_at": "…",
            "updated_at": "…",
        }
    },
}


@pytest.mark.parametrize("obj", [GET_REQUEST, GET_REQUEST["data"], GET_REQUEST["data"]["request"]])
def test_get_request_envelope_data_or_request(obj: Any) -> None:
    cb = normalize_request_object(obj)
    assert cb == NormalizedCallback(
        request_id=RID,
        event="request.completed",
        status="completed",
        response_data="Approve",
        reviewer={"id": USER, "name": "Jane"},
        occurred_at="2024-03-15T10:45:00Z",
        response_time_seconds=900.5,
        default_response="Approve",
    )


def test_first_loop_flat_data_with_timed_out() -> None:
    cb = normalize_request_object(
        {
            "data": {
                "id": RID,
                "status": "timed_out",
                "timeout_at": "2024-03-15T11:30:00Z",
                "default_response": "rejected",
            }
        }
    )
    assert (cb.status, cb.event, cb.occurred_at, cb.default_response) == (
        "timeout",
        "request.timeout",
        "2024-03-15T11:30:00Z",
        "rejected",
    )


def test_list_item_pending_is_not_terminal_and_deadline_is_not_an_occurrence() -> None:
    item = {
        "id": RID,
        "status": "pending",
        "response_data": None,
        "response_by": None,
        "timeout_at": "2024-03-15T11:30:00Z",
        "updated_at": "2024-03-15T10:00:00Z",
    }
    cb = normalize_request_object(item)
    assert (cb.terminal, cb.occurred_at) == (False, "2024-03-15T10:00:00Z")


def test_cancel_response_shape_is_read_too() -> None:
    cb = normalize_request_object(
        {"request_id": RID, "status": "cancelled", "cancelled_at": "2024-03-15T10:29:00Z"}
    )
    assert (cb.status, cb.occurred_at) == ("cancelled", "2024-03-15T10:29:00Z")


@pytest.mark.parametrize(
    "obj", [None, [], {"data": {"requests": []}}, {"id": RID}, {"status": "x"}]
)
def test_unusable_request_objects_are_malformed(obj: Any) -> None:
    with pytest.raises(MalformedPayload):
        normalize_request_object(obj)


def test_json_round_trip() -> None:
    cb = webhook(
        {
            "event": "request.completed",
            "request_id": "r",
            "response_data": {"selected_values": ["a", "b"]},
            "response_by": {"id": "u", "email": "e@x"},
            "response_time_seconds": 3,
        }
    )
    assert NormalizedCallback.from_json(orjson.loads(orjson.dumps(cb.to_json()))) == cb


@pytest.mark.parametrize(
    "bad", [None, [], {}, {"request_id": "r"}, {"request_id": "r", "status": "completed"}]
)
def test_from_json_rejects_what_to_json_never_writes(bad: Any) -> None:
    with pytest.raises(MalformedPayload):
        NormalizedCallback.from_json(bad)


# --- properties -----------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(
        ["request.completed", "request.timeout", "completed", "timed_out", RID, "Approve"]
    )
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
_KEYS = [
    "event",
    "request_id",
    "id",
    "status",
    "data",
    "request",
    "response_data",
    "decision",
    "response_by",
    "response_by_user",
    "reviewer",
    "reviewer_id",
    "claimed_by",
    "timestamp",
    "response_at",
    "completed_at",
    "response_time_seconds",
    "default_response",
]
_shaped = st.recursive(
    _scalars,
    lambda inner: (
        st.dictionaries(st.sampled_from(_KEYS), inner, max_size=6) | st.lists(inner, max_size=2)
    ),
    max_leaves=14,
)


_maybe = st.one_of(st.just(None), _scalars, _json)


def _mostly(draw: st.DrawFn, valid: list[Any], junk: st.SearchStrategy[Any] = _scalars) -> Any:
    """A documented value four times in five, else junk."""
    return draw(st.sampled_from(valid)) if draw(st.integers(0, 4)) else draw(junk)


@st.composite
def _documented_shapes(draw: st.DrawFn) -> Any:
    """P1..P6 and polled objects with every field fuzzed (valid values most of the time)."""
    rid = _mostly(draw, [RID, "req_abc123", 42])
    status = _mostly(draw, ["completed", "timeout", "timed_out", "claimed", None])
    event = _mostly(
        draw,
        [
            "request.completed",
            "request.timeout",
            "request.claimed",
            "request.escalated",
            "request.created",
            None,
        ],
    )
    fields = {
        "status": status,
        "response_data": draw(_maybe),
        "response_by": _mostly(draw, [USER, "a@b.c", {"user_id": USER, "name": "N"}], _maybe),
        "response_at": _mostly(draw, ["2024-03-15T10:45:00Z"], _maybe),
        "response_time_seconds": _mostly(draw, [1.5, -1, float("inf")], _maybe),
        "default_response": draw(_maybe),
        "claimed_by": draw(_maybe),
    }
    shape = draw(st.integers(0, 5))
    if shape == 0:  # P1 / P6
        body: dict[str, Any] = {
            "event": event,
            "data": {"request": {"id": rid, **fields}, "reviewer": draw(_maybe)},
        }
        if draw(st.booleans()):
            body["request_id"] = rid
    elif shape == 1:  # P2 / P3
        body = {"event": event, "request_id": rid, **fields}
    elif shape in (2, 3):  # P4 / P5
        body = {
            "event": event,
            "data": {
                "request_id": rid,
                "decision": draw(_maybe),
                "reviewer_id": draw(_maybe),
                **fields,
            },
        }
    elif shape == 4:  # GET envelope
        body = {"error": False, "data": {"request": {"id": rid, **fields}}}
    else:  # list item
        body = {"id": rid, "response_by_user": draw(_maybe), **fields}
    return {k: v for k, v in body.items() if v is not None or draw(st.booleans())}


def _check(value: Any) -> None:
    try:
        result = normalize_webhook(value)
    except MalformedPayload as exc:
        assert str(exc)
        event("malformed")
    else:
        event(type(result).__name__)
        assert isinstance(result, NormalizedCallback | Ignored)
        if isinstance(result, NormalizedCallback):
            assert 0 < len(result.request_id) <= 256
            assert NormalizedCallback.from_json(result.to_json()) == result
    try:
        polled = normalize_request_object(value)
    except MalformedPayload:
        pass
    else:
        assert polled.event == f"request.{polled.status}"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_json, _shaped, _documented_shapes()))
def test_property_normalizers_return_or_raise_malformed_only(value: Any) -> None:
    _check(value)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depth=st.integers(0, 400), leaf=_scalars, key=st.sampled_from(_KEYS))
def test_property_deep_nesting_is_handled(depth: int, leaf: Any, key: str) -> None:
    value: Any = leaf
    for i in range(depth):
        value = {key: value} if i % 3 else [value]
    _check({"event": "request.completed", "request_id": "r", key: value})
    _check({"data": {"request": {"id": "r", "status": "completed", key: value}}})
