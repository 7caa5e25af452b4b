"""Request bodies as documented, routing order, and the auto-decision policy."""

from __future__ import annotations

import orjson

from connector.config import LoopSettings, PolicySettings, ReviewSettings, RouteRule
from connector.records import SourceRef
from connector.submitter.events import parse_event
from connector.submitter.routing import Policy, choose_loop
from connector.submitter.translate import build_create_body
from hitl_sandbox.validation import DOCUMENTED_FIELDS

SRC = SourceRef("content.events", 0, 7, 1_700_000_000_000)
# The sandbox is the reference for what HITL.sh documents.
DOCUMENTED = DOCUMENTED_FIELDS


def ev(**fields: object):  # type: ignore[no-untyped-def]
    base: dict[str, object] = {"id": "e1", "content": "hello"}
    base.update(fields)
    return parse_event(orjson.dumps(base), None, SRC, max_bytes=100_000)


def test_body_has_only_documented_fields_and_context() -> None:
    event = ev(priority="normal", ai_analysis={"risk_score": 0.5}, metadata={"user_id": "u"})
    body = build_create_body(event, ReviewSettings(), SRC, callback_url="https://x/cb/t").body
    assert set(body) <= DOCUMENTED
    assert body["priority"] == "medium"
    assert body["type"] == "markdown"
    assert body["timeout_seconds"] == 14_400
    assert body["response_config"]["options"][0] == {"value": "approved", "label": "Approve"}
    assert body["default_response"] == "rejected"
    assert body["context"]["connector"] == {
        "event_id": "e1",
        "topic": "content.events",
        "partition": 0,
        "offset": 7,
    }
    assert body["context"]["ai_analysis"] == {"risk_score": 0.5}
    assert body["callback_url"] == "https://x/cb/t"


def test_long_text_is_cut_visibly_to_the_limit() -> None:
    built = build_create_body(ev(content="x" * 5000), ReviewSettings(), SRC)
    text = built.body["request_text"]
    assert built.truncated
    assert len(text) == 2000
    assert "truncated by hitl-connector" in text
    assert "3" in text.rsplit(":", 1)[1]  # omitted count shown


def test_short_text_is_untouched_and_image_keeps_url() -> None:
    built = build_create_body(ev(content="y" * 2000), ReviewSettings(), SRC)
    assert not built.truncated and built.body["request_text"] == "y" * 2000
    img = ev(content_type="image", image_url="https://i/1.png", content=None)
    body = build_create_body(img, ReviewSettings(), SRC).body
    assert body["type"] == "image" and body["image_url"] == "https://i/1.png"
    assert body["request_text"]


def test_template_renders_known_fields_and_keeps_unknown_placeholders() -> None:
    review = ReviewSettings(text_template="[{priority}] {content} {nope}")
    assert build_create_body(ev(), review, SRC).body["request_text"] == "[medium] hello {nope}"


def test_routing_order_event_then_rules_then_default() -> None:
    loops = LoopSettings(
        default="L0",
        routes=[
            RouteRule(loop_id="L-img", content_type=["image"]),
            RouteRule(loop_id="L-spam", flags_any=["spam"], priority=["high", "critical"]),
        ],
    )
    assert choose_loop(ev(loop_id="L-own"), loops) == "L-own"
    assert choose_loop(ev(content_type="image", image_url="https://i"), loops) == "L-img"
    assert choose_loop(ev(priority="high", ai_analysis={"flags": ["spam"]}), loops) == "L-spam"
    assert choose_loop(ev(priority="low", ai_analysis={"flags": ["spam"]}), loops) == "L0"
    no_override = LoopSettings(default="L0", allow_event_override=False)
    assert choose_loop(ev(loop_id="L-own"), no_override) == "L0"
    assert choose_loop(ev(), LoopSettings()) is None


def test_policy_rejects_before_approving_and_needs_enabling() -> None:
    policy = PolicySettings(enabled=True, reject_flags=["csam"])
    approve = ev(ai_analysis={"confidence": 0.99, "risk_score": 0.01})
    assert Policy(PolicySettings()).decide(approve) is None
    decided = Policy(policy).decide(approve)
    assert decided is not None and decided.decision == "approved"
    risky = ev(ai_analysis={"confidence": 0.99, "risk_score": 0.95})
    assert Policy(policy).decide(risky).decision == "rejected"  # type: ignore[union-attr]
    flagged = ev(ai_analysis={"confidence": 0.99, "risk_score": 0.0, "flags": ["csam"]})
    assert Policy(policy).decide(flagged).decision == "rejected"  # type: ignore[union-attr]
    unsure = ev(ai_analysis={"confidence": 0.5, "risk_score": 0.5})
    assert Policy(policy).decide(unsure) is None
