"""Batch planning: outcomes per record, commits that never pass a gap. Fakes the HTTP seam."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.config import Settings
from connector.errors import HitlPermanentError, HitlUnavailableError
from connector.kafka.offsets import committable_offset, first_unfinished
from connector.submitter.batch import BatchStats
from tests.support import make_processor


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: int = 1_700_000_000_000
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Made:
    request_id: str
    timeout_at: str | None = None


class FakeClient:
    """Answers by the event's text: POISON → 400, DOWN → unavailable, else created."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def create_request(
        self,
        loop_id: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        deadline: float | None = None,
    ) -> Made:
        self.calls.append(idempotency_key)
        await asyncio.sleep(0)
        text = body["request_text"]
        if "POISON" in text:
            raise HitlPermanentError("rejected", status=400, msg="request_text is not allowed")
        if "DOWN" in text:
            raise HitlUnavailableError("outage", status=503, retry_after=7.0)
        return Made(f"req-{idempotency_key}")


def make_settings(**policy: Any) -> Settings:
    return Settings(loops={"default": "L1"}, policy=policy or {"enabled": False})  # type: ignore[arg-type]


def rec(offset: int, value: object, partition: int = 0) -> Rec:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return Rec("in", partition, offset, raw)


async def test_each_record_gets_one_outcome_and_commit_covers_all() -> None:
    s = make_settings(enabled=True)
    records = [
        rec(0, {"id": "a", "content": "fine"}),
        rec(1, b"{broken"),
        rec(2, {"id": "c", "content": "POISON here"}),
        rec(3, {"id": "d", "content": "ok", "ai_analysis": {"confidence": 1, "risk_score": 0}}),
    ]
    stats = BatchStats()
    plans = await make_processor(s, FakeClient()).process({"tp0": records}, stats)
    plan = plans["tp0"]
    assert plan.commit_offset == 4 and plan.seek_to is None
    topics = [r.topic for r in plan.outputs]
    assert topics == [
        "hitl.requests",
        "content.events.dlq",
        "content.events.dlq",
        "content.decisions",
    ]
    dlq = dict(plan.outputs[2].headers)
    assert dlq["error.reason"] == b"hitl_rejected"
    assert b"request_text is not allowed" in dlq["error.detail"]
    assert plan.outputs[1].value == b"{broken"  # original bytes unchanged
    decision = orjson.loads(plan.outputs[3].value or b"")
    assert (decision["decided_by"], decision["via"], decision["decision"]) == (
        "policy",
        "policy",
        "approved",
    )
    assert stats.consumed == 4 and stats.created == 1 and stats.policy == 1
    assert stats.dlq == {"invalid_json": 1, "hitl_rejected": 1}


async def test_gap_stops_the_commit_and_keeps_created_requests_after_it() -> None:
    client = FakeClient()
    records = [
        rec(10, {"id": "a", "content": "fine"}),
        rec(11, {"id": "b", "content": "DOWN"}),
        rec(12, {"id": "c", "content": "fine"}),
        rec(13, b"{broken"),
    ]
    stats = BatchStats()
    plan = (await make_processor(make_settings(), client).process({"tp": records}, stats))["tp"]
    assert plan.commit_offset == 11
    assert plan.seek_to == 11 and plan.retry_after == 7.0
    # a's row, plus c's row if its create ran (idempotent on retry); never the DLQ past the gap
    assert all(r.topic == "hitl.requests" for r in plan.outputs)
    assert stats.consumed == 1 and stats.deferred == 1


async def test_no_loop_goes_to_dlq() -> None:
    s = Settings()
    plan = (
        await make_processor(s, FakeClient()).process(
            {"tp": [rec(0, {"content": "x"})]}, BatchStats()
        )
    )["tp"]
    assert dict(plan.outputs[0].headers)["error.reason"] == b"no_loop"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["ok", "bad", "down", "poison"]), min_size=1, max_size=30))
def test_commit_never_passes_an_unfinished_record(kinds: list[str]) -> None:
    text = {"ok": "fine", "down": "DOWN", "poison": "POISON"}
    records = [
        rec(100 + i, b"{x" if k == "bad" else {"id": f"e{i}", "content": text[k]})
        for i, k in enumerate(kinds)
    ]
    plan = asyncio.run(
        make_processor(make_settings(), FakeClient()).process({"tp": records}, BatchStats())
    )["tp"]
    finished = [k != "down" for k in kinds]
    offsets = [r.offset for r in records]
    # Model: the commit is exactly the finished prefix.
    assert plan.commit_offset == committable_offset(offsets, finished)
    assert plan.seek_to == first_unfinished(offsets, finished)
    if plan.seek_to is not None:
        assert plan.commit_offset is None or plan.commit_offset <= plan.seek_to
        past = [r for r in plan.outputs if r.topic != "hitl.requests"]
        assert len(past) == sum(1 for k in kinds[: kinds.index("down")] if k != "ok")
