"""The sandbox reviewer's pure parts: answers per response type, payload styles, signatures,
event matching, the retry rule and the scheduler."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hitl_sandbox.answers import AnswerError, parse_answer, random_answer, shape
from hitl_sandbox.payloads import build_payload, signature_headers
from hitl_sandbox.scheduler import Scheduler
from hitl_sandbox.state import SandboxState
from hitl_sandbox.validation import validate_create_request
from hitl_sandbox.webhooks import event_matches, retriable

RICH = {"value": "approved", "label": "Approve"}, {"value": "rejected", "label": "Reject"}
CONFIGS: list[tuple[str, dict[str, Any], Any]] = [
    ("single_select", {"options": list(RICH)}, "rejected"),
    ("single_select", {"options": ["Approve", "Reject", "Needs Changes"]}, "Approve"),
    (
        "multi_select",
        {
            "options": [{"value": v, "label": v.title()} for v in ("spam", "nsfw", "ok", "pii")],
            "min_selections": 1,
            "max_selections": 2,
        },
        ["ok"],
    ),
    ("multi_select", {"options": ["A", "B", "C"]}, []),
    ("rating", {"scale_min": 1, "scale_max": 5, "scale_step": 0.5, "labels": {"4": "Good"}}, 3),
    ("rating", {"min": 1, "max": 5}, 3),
    ("number", {"min_value": 0, "max_value": 1000, "decimal_places": 2}, 10),
    ("number", {"min": -5, "max": 5}, 0),
    ("text", {"min_length": 30, "max_length": 40}, "x" * 30),
    ("text", {"max_length": 5000}, "Unable to review within time limit"),
    ("editable_text", {"draft_text": "Draft post", "max_length": 200}, "Draft post"),
    ("boolean", {"true_label": "Yes", "false_label": "No"}, False),
    ("boolean", {}, True),
]
IDS = [f"{kind}-{n}" for n, (kind, _, _) in enumerate(CONFIGS)]


def create_body(response_type: str, config: dict[str, Any], default: Any) -> dict[str, Any]:
    return {
        "processing_type": "time-sensitive",
        "type": "markdown",
        "priority": "high",
        "request_text": "Is this OK?",
        "timeout_seconds": 600,
        "response_type": response_type,
        "response_config": config,
        "default_response": default,
        "platform": "api",
    }


@pytest.mark.parametrize(("response_type", "config", "default"), CONFIGS, ids=IDS)
@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_random_answers_are_valid_answers_and_valid_defaults(
    response_type: str, config: dict[str, Any], default: Any, seed: int
) -> None:
    answer = random_answer(response_type, config, {}, random.Random(seed))
    assert parse_answer(response_type, config, answer) == answer
    # A valid answer is also a valid default_response for the same config.
    assert validate_create_request(create_body(response_type, config, answer)) is None


@pytest.mark.parametrize(("response_type", "config", "default"), CONFIGS, ids=IDS)
def test_structured_answers_parse_back_to_the_raw_answer(
    response_type: str, config: dict[str, Any], default: Any
) -> None:
    answer = random_answer(response_type, config, {}, random.Random(1))
    structured = shape(response_type, config, answer, "structured")
    assert parse_answer(response_type, config, structured) == answer
    assert shape(response_type, config, answer, "raw") == answer


def test_structured_shapes_per_type() -> None:
    single = {"options": list(RICH)}
    assert shape("single_select", single, "approved", "structured") == {
        "selected_value": "approved",
        "selected_label": "Approve",
    }
    multi = {"options": ["A", "B"]}
    assert shape("multi_select", multi, ["A", "B"], "structured") == {
        "selected_values": ["A", "B"],
        "selected_labels": ["A", "B"],
    }
    rating = {"scale_min": 1, "scale_max": 5, "labels": {"4": "Good"}}
    assert shape("rating", rating, 4, "structured") == {"rating": 4, "rating_label": "Good"}
    assert shape("rating", rating, 2, "structured") == {"rating": 2}
    assert shape("number", {"min": 0, "max": 9}, 7, "structured") == {"number": 7}
    assert shape("boolean", {}, True, "structured") == {"boolean": True, "boolean_label": "True"}
    assert shape("boolean", {"false_label": "Nope"}, False, "structured") == {
        "boolean": False,
        "boolean_label": "Nope",
    }
    assert shape("text", {}, "fine", "structured") == "fine"


def test_answer_mix_weights_select_answers_by_value_or_label() -> None:
    rng = random.Random(3)
    config = {"options": list(RICH)}
    counts = Counter(
        random_answer("single_select", config, {"approved": 3, "Reject": 1}, rng)
        for _ in range(4000)
    )
    assert 0.70 < counts["approved"] / 4000 < 0.80
    assert set(counts) == {"approved", "rejected"}


def test_answer_mix_applies_to_other_types_and_ignores_invalid_keys() -> None:
    rng = random.Random(4)
    mix = {"true": 1, "5": 1, "approved": 0, "way too long for this": 1}
    assert {random_answer("boolean", {}, mix, rng) for _ in range(50)} == {True}
    assert {random_answer("rating", {"min": 1, "max": 5}, mix, rng) for _ in range(50)} == {5}
    texts = {random_answer("text", {"max_length": 10}, mix, rng) for _ in range(50)}
    assert "way too long for this" not in texts
    multi = {"options": ["A", "B", "C"], "min_selections": 1, "max_selections": 1}
    picks = Counter(random_answer("multi_select", multi, {"B": 1}, rng)[0] for _ in range(50))
    assert picks == {"B": 50}


@pytest.mark.parametrize(
    ("response_type", "config", "value", "message"),
    [
        ("single_select", {"options": list(RICH)}, "maybe", "one of the option values"),
        ("single_select", {"options": list(RICH)}, 1, "one of the option values"),
        ("multi_select", {"options": ["A", "B"], "max_selections": 1}, ["A", "B"], "between"),
        ("multi_select", {"options": ["A", "B"]}, ["A", "A"], "distinct"),
        ("multi_select", {"options": ["A", "B"]}, "A", "list of option values"),
        ("rating", {"min": 1, "max": 5}, 6, "between 1 and 5"),
        ("rating", {"min": 1, "max": 5}, True, "between 1 and 5"),
        ("number", {"min_value": 0, "max_value": 10}, "3", "between 0 and 10"),
        ("text", {"min_length": 2, "max_length": 5}, "too long text", "2 to 5"),
        ("boolean", {}, "yes", "true or false"),
    ],
)
def test_invalid_hand_answers_say_what_is_expected(
    response_type: str, config: dict[str, Any], value: Any, message: str
) -> None:
    with pytest.raises(AnswerError, match=message):
        parse_answer(response_type, config, value)


def test_labels_are_accepted_and_stored_as_values() -> None:
    config = {"options": list(RICH)}
    assert parse_answer("single_select", config, "Approve") == "approved"
    assert parse_answer("single_select", config, {"selected_value": "rejected"}) == "rejected"


# ---- payloads and signatures ------------------------------------------------------------------


def completed_record() -> tuple[Any, Any]:
    state = SandboxState(loop_members=2, call_log_size=0)
    loop = state.add_loop(1_700_000_000.0, loop_id="l" * 24, name="Moderators")
    body = create_body("single_select", {"options": list(RICH)}, "rejected")
    body["callback_url"] = "http://127.0.0.1/cb"
    record = state.add_request(
        1_700_000_000.0, key_id="k", loop=loop, body=body, idempotency_key=None
    )
    member = loop.members[0]
    record.reviewer = {"user_id": member["user_id"], "name": "R 1", "email": member["email"]}
    record.status, record.answer = "completed", "approved"
    record.response_data = {"selected_value": "approved", "selected_label": "Approve"}
    record.response_by = member["user_id"]
    record.response_at = record.updated_at = 1_700_000_030.5
    return record, loop


def test_nested_payload_is_p1() -> None:
    record, loop = completed_record()
    payload = build_payload("nested", "request.completed", record, loop, 1_700_000_031.0)
    assert payload["event"] == "request.completed"
    assert payload["timestamp"] == "2023-11-14T22:13:51.000Z"
    request = payload["data"]["request"]
    assert request["id"] == record.id and request["status"] == "completed"
    assert request["response_data"] == record.response_data
    assert request["response_by"] == record.response_by
    assert request["response_time_seconds"] == 30.5
    assert payload["data"]["loop"] == {
        "id": loop.id,
        "name": "Moderators",
        "creator_id": loop.creator_id,
    }
    assert payload["data"]["reviewer"] == {
        "user_id": record.response_by,
        "email": record.reviewer["email"],
    }


def test_flat_seed_and_data_response_payloads() -> None:
    record, loop = completed_record()
    flat = build_payload("flat", "request.completed", record, loop, 0.0)
    assert flat == {
        "event": "request.completed",
        "request_id": record.id,
        "loop_id": loop.id,
        "status": "completed",
        "response_data": record.response_data,
        "response_by": record.reviewer,
        "response_at": "2023-11-14T22:13:50.500Z",
        "response_time_seconds": 30.5,
        "created_at": "2023-11-14T22:13:20.000Z",
    }
    seed = build_payload("seed", "request.completed", record, loop, 0.0)
    assert seed["data"] == {
        "request_id": record.id,
        "decision": "approved",
        "reviewer_id": record.response_by,
        "completed_at": "2023-11-14T22:13:50.500Z",
    }
    p5 = build_payload("data_response", "request.completed", record, loop, 0.0)
    assert p5["data"]["response_data"] == record.response_data
    assert p5["data"]["response_by_user"]["name"] == "R 1"


def test_timeout_and_cancel_payloads_carry_their_extra_fields() -> None:
    record, loop = completed_record()
    record.previous_status, record.status = "pending", "timeout"
    record.answer = record.response_data = "rejected"
    record.response_by = record.response_at = record.reviewer = None
    nested = build_payload("nested", "request.timeout", record, loop, 0.0)["data"]
    assert nested["request"]["default_response"] == "rejected"
    assert nested["request"]["previous_status"] == "pending"
    assert "reviewer" not in nested
    flat = build_payload("flat", "request.timeout", record, loop, 0.0)
    assert flat["response_by"] is None and flat["response_data"] == "rejected"
    record.status, record.cancelled_at = "cancelled", 1_700_000_010.0
    cancelled = build_payload("nested", "request.cancelled", record, loop, 0.0)["data"]
    assert cancelled["request"]["status"] == "cancelled"
    assert cancelled["refund_info"] == {"refunded": False, "reason": "Pending request cancelled"}


def test_signature_headers_match_both_documented_formats() -> None:
    body = b'{"event":"request.completed"}'
    digest = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature_headers(body, "s3cret", "sha256") == {
        "X-HITL-Signature-256": f"sha256={digest}"
    }
    assert signature_headers(body, "s3cret", "plain") == {"X-HITL-Signature": digest}
    assert signature_headers(body, "s3cret", "none") == {}
    assert signature_headers(body, None, "sha256") == {}


@pytest.mark.parametrize(
    ("patterns", "event", "expected"),
    [
        (["*"], "request.completed", True),
        (["request.*"], "request.timeout", True),
        (["request.completed", "request.escalated"], "request.escalated", True),
        (["request.completed"], "request.claimed", False),
        (["*", "!request.claimed"], "request.claimed", False),
        (["loop.L1.*"], "request.completed", True),
        (["loop.L2.*"], "request.completed", False),
        (["loop.*"], "request.completed", False),
    ],
)
def test_event_patterns(patterns: list[str], event: str, expected: bool) -> None:
    assert event_matches(patterns, event, "L1") is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [(None, True), (500, True), (503, True), (408, True), (429, True), (400, False), (404, False)],
)
def test_retry_rule(status: int | None, expected: bool) -> None:
    assert retriable(status) is expected


async def test_scheduler_runs_callbacks_in_due_order_and_clear_forgets() -> None:
    scheduler = Scheduler(time.time, "test")
    scheduler.start()
    ran: list[str] = []
    now = time.time()
    scheduler.at(now + 0.06, lambda: ran.append("c"))
    scheduler.at(now + 0.02, lambda: ran.append("a"))
    scheduler.at(now + 0.04, lambda: ran.append("b"))
    scheduler.at(now + 0.03, lambda: 1 / 0)  # a failing callback does not stop the others
    await asyncio.sleep(0.12)
    assert ran == ["a", "b", "c"] and scheduler.errors == 1
    scheduler.at(time.time() + 0.02, lambda: ran.append("never"))
    scheduler.clear()
    await asyncio.sleep(0.05)
    assert ran == ["a", "b", "c"]
    await scheduler.stop()
    await scheduler.stop()
