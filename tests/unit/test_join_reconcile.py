"""Joining callbacks with requests, and the reconciler's call plan. The table and the HTTP
client are faked at their seams; the logic under test is the real one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from connector.config import Settings
from connector.errors import HitlPermanentError
from connector.gateway.sink import callback_value
from connector.hitl.payloads import normalize_webhook
from connector.records import RequestEntry, SourceRef
from connector.resolver.join import WAIT, Joiner
from connector.resolver.reconciler import Reconciler
from connector.resolver.table import RequestTable

SETTINGS = Settings(
    hitl={"rate_limit_calls": 100, "rate_limit_window_seconds": 3600},
    resolver={"reconcile_grace_seconds": 0, "reconcile_repoll_seconds": 60},
)
NO_SWEEP = Settings(
    hitl={"rate_limit_calls": 100, "rate_limit_window_seconds": 3600},
    resolver={
        "reconcile_grace_seconds": 0,
        "reconcile_repoll_seconds": 60,
        "reconcile_sweep": False,
    },
)


def entry(
    rid: str, event_id: str, *, timeout_at: str | None = "2026-01-01T00:00:00Z"
) -> RequestEntry:
    return RequestEntry(
        request_id=rid,
        event_id=event_id,
        key=f"key-{event_id}".encode(),
        loop_id="L1",
        source=SourceRef("content.events", 2, 40, 1_700_000_000_000),
        response_type="single_select",
        options=[
            {"value": "approved", "label": "Approve"},
            {"value": "rejected", "label": "Reject"},
        ],
        default_response="rejected",
        timeout_at=timeout_at,
        submitted_at="2025-12-31T23:00:00Z",
    )


def table_with(*entries: RequestEntry) -> RequestTable:
    table = RequestTable(SETTINGS.kafka, SETTINGS.topics.requests, SETTINGS.resolver)
    table._rows[0] = {e.request_id: e for e in entries}  # the seam: no Kafka consumer
    return table


def webhook(payload: dict[str, Any], token: str | None = None) -> bytes:
    cb = normalize_webhook(payload)
    assert not hasattr(cb, "reason")
    return callback_value(
        cb.request_id,
        cb.to_json(),
        payload,
        via="webhook",
        token_event_id=token,
        received_at=1.0,  # type: ignore[union-attr]
    )


def completed(rid: str, answer: str = "Approve") -> dict[str, Any]:
    return {
        "event": "request.completed",
        "request_id": rid,
        "status": "completed",
        "response_data": answer,
    }


def test_terminal_callback_gives_decision_and_tombstone_then_duplicates_nothing() -> None:
    table = table_with(entry("r1", "e1"))
    joiner = Joiner(SETTINGS.topics, table)
    out = joiner.join(0, b"r1", webhook(completed("r1")), now=1_700_000_100.0)
    assert not isinstance(out, type(WAIT))
    decision, tombstone = out
    value = orjson.loads(decision.value or b"")
    assert (decision.topic, decision.key) == ("content.decisions", b"key-e1")
    assert (value["event_id"], value["decision"], value["decided_by"], value["via"]) == (
        "e1",
        "approved",
        "human",
        "webhook",
    )
    assert value["source"]["offset"] == 40 and value["latency"]["end_to_end_seconds"] == 100.0
    assert (tombstone.topic, tombstone.key, tombstone.value) == ("hitl.requests", b"r1", None)
    assert joiner.join(0, b"r1", webhook(completed("r1", "Reject"))) == []
    assert joiner.batch.duplicates == 1


def test_unknown_request_waits_and_token_mismatch_goes_to_unmatched() -> None:
    joiner = Joiner(SETTINGS.topics, table_with(entry("r1", "e1")))
    assert joiner.join(0, b"r9", webhook(completed("r9"))) is WAIT
    out = joiner.join(0, b"r1", webhook(completed("r1"), token="someone-else"))
    assert isinstance(out, list) and out[0].topic == "hitl.callbacks.unmatched"
    assert dict(out[0].headers)["error.reason"] == b"token_mismatch"
    good = joiner.join(0, b"r1", webhook(completed("r1"), token="e1"))
    assert isinstance(good, list) and good[0].topic == "content.decisions"


def test_unreadable_claimed_and_timeout() -> None:
    joiner = Joiner(SETTINGS.topics, table_with(entry("r1", "e1"), entry("r2", "e2")))
    bad = joiner.join(0, b"x", b"\xff not json")
    assert isinstance(bad, list) and dict(bad[0].headers)["error.reason"] == b"unreadable"
    claimed = joiner.join(
        0, b"r1", webhook({"event": "request.claimed", "request_id": "r1", "status": "claimed"})
    )
    assert isinstance(claimed, list) and claimed[0].topic == "content.escalations"
    assert orjson.loads(claimed[0].value or b"")["kind"] == "claim"
    escalated = joiner.join(0, b"r1", webhook({"event": "request.escalated", "request_id": "r1"}))
    assert isinstance(escalated, list) and escalated[0].topic == "content.escalations"
    assert orjson.loads(escalated[0].value or b"")["kind"] == "escalation"
    timeout = {"event": "request.timeout", "data": {"request": {"id": "r2", "status": "timeout"}}}
    out = joiner.join(0, b"r2", webhook(timeout))
    assert isinstance(out, list)
    value = orjson.loads(out[0].value or b"")
    assert (value["status"], value["decided_by"], value["decision"]) == (
        "timeout",
        "timeout_default",
        "rejected",
    )


@dataclass
class Page:
    requests: list[dict[str, Any]]
    has_more: bool
    next_offset: int | None
    total: int | None = None


@dataclass
class FakePollClient:
    listed: list[dict[str, Any]]
    single: dict[str, dict[str, Any]]
    calls: list[str] = field(default_factory=list)

    async def list_requests(
        self,
        *,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
        sort: str = "created_at_desc",
    ) -> Page:
        self.calls.append(f"{'sweep' if status == 'completed' else 'list'}:{offset}")
        chunk = self.listed[offset : offset + limit]
        more = offset + limit < len(self.listed)
        return Page(chunk, more, offset + limit if more else None)

    async def get_request(self, request_id: str) -> dict[str, Any]:
        self.calls.append(f"get:{request_id}")
        if request_id not in self.single:
            raise HitlPermanentError("nope", status=404, msg="Request not found")
        return self.single[request_id]


def test_reconciler_lists_first_then_gets_what_the_list_missed() -> None:
    overdue = [entry(f"r{i}", f"e{i}") for i in range(5)]
    fresh = entry("r-new", "e-new", timeout_at="2999-01-01T00:00:00Z")
    table = table_with(*overdue, fresh)
    listed = [
        {
            "id": f"r{i}",
            "status": "completed",
            "response_data": "Approve",
            "created_at": "2025-12-31T23:00:00Z",
        }
        for i in range(3)
    ]
    client = FakePollClient(listed, {"r3": {"id": "r3", "status": "pending"}})
    published: list[tuple[str, dict[str, Any]]] = []

    async def publish(rid: str, cb: dict[str, Any], payload: Any) -> None:
        published.append((rid, cb))

    rec = Reconciler(NO_SWEEP.resolver, NO_SWEEP.hitl, client, table, publish)
    result = asyncio.run(rec.run_once(now=1_900_000_000.0))
    assert client.calls == ["list:0", "get:r3", "get:r4"]
    assert (result.overdue, result.found_terminal, result.still_pending, result.not_found) == (
        5,
        3,
        1,
        1,
    )
    assert [rid for rid, _ in published] == ["r0", "r1", "r2"]
    # Polled requests are not polled again within repoll_seconds.
    again = asyncio.run(rec.run_once(now=1_900_000_010.0))
    assert again.overdue == 1 and client.calls[-1] == "get:r4"


def test_reconciler_stays_inside_its_budget_share() -> None:
    overdue = [entry(f"r{i}", f"e{i}") for i in range(50)]
    client = FakePollClient([], {})
    table = table_with(*overdue)
    rec = Reconciler(SETTINGS.resolver, SETTINGS.hitl, client, table, lambda *a: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
    result = asyncio.run(rec.run_once(now=1_900_000_000.0))
    assert len(client.calls) == 20  # 20% of 100 calls per window, the sweep's call included
    assert client.calls[0] == "sweep:0" and result.sweep_calls == 1
    assert result.budget_exhausted


def _completed(rid: str, created: str) -> dict[str, Any]:
    return {"id": rid, "status": "completed", "response_data": "Approve", "created_at": created}


def test_sweep_finds_lost_decisions_paced_and_paid_for_by_the_requests_it_watches() -> None:
    fresh = "2999-01-01T00:00:00Z"  # not overdue: only the sweep can find them
    table = table_with(*(entry(f"r{i}", f"e{i}", timeout_at=fresh) for i in range(10)))
    listed = [_completed("other", "2026-01-01T00:00:00Z"), _completed("r3", "2026-01-01T00:00:00Z")]
    client = FakePollClient(listed, {})
    published: list[str] = []

    async def publish(rid: str, cb: dict[str, Any], payload: Any) -> None:
        published.append(rid)
        table.resolve(0, rid)

    rec = Reconciler(SETTINGS.resolver, SETTINGS.hitl, client, table, publish)
    first = asyncio.run(rec.run_once(now=1_900_000_000.0))
    assert (client.calls, published, first.sweep_found) == (["sweep:0"], ["r3"], 1)
    # Paced: the next sweep waits window / (20 calls x 0.5) = 360 s; nothing else to do.
    asyncio.run(rec.run_once(now=1_900_000_001.0))
    assert client.calls == ["sweep:0"]
    rec._next_sweep = 0.0  # the pace has passed
    # 10 requests earned 2 calls (0.2 each), the first one spent 1 of them (+1 to start).
    assert rec._sweep_tokens == pytest.approx(2.0)
    asyncio.run(rec.run_once(now=1_900_000_002.0))
    rec._next_sweep = 0.0
    asyncio.run(rec.run_once(now=1_900_000_003.0))
    rec._next_sweep = 0.0
    asyncio.run(rec.run_once(now=1_900_000_004.0))
    assert client.calls == ["sweep:0"] * 3, "no more sweeps than the requests paid for"


def test_sweep_pages_deeper_every_other_call_down_to_the_oldest_pending() -> None:
    old = entry("r-old", "e-old", timeout_at="2999-01-01T00:00:00Z")
    table = table_with(old)  # submitted 2025-12-31T23:59:00Z (entry's default)
    newer = [_completed(f"n{i}", "2026-06-01T00:00:00Z") for i in range(250)]
    client = FakePollClient(newer, {})
    rec = Reconciler(SETTINGS.resolver, SETTINGS.hitl, client, table, lambda *a: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
    rec._sweep_tokens = 10.0
    for i in range(6):
        rec._next_sweep = 0.0
        asyncio.run(rec.run_once(now=1_900_000_000.0 + i))
    assert client.calls == ["sweep:0", "sweep:100", "sweep:0", "sweep:200", "sweep:0", "sweep:100"]


def test_a_kept_raw_delivery_replayed_into_callbacks_is_normalized_again() -> None:
    from connector.gateway.app import Unusable
    from connector.gateway.sink import unusable_value

    joiner = Joiner(SETTINGS.topics, table_with(entry("r1", "e1")))
    body = orjson.dumps({"event": "request.completed", "request_id": "r1", "status": "completed"})
    value = unusable_value(body, Unusable("unknown_status", "x", "callback"), "r1", "e1", 1.0)
    out = joiner.join(0, b"r1", value)
    assert isinstance(out, list) and out[0].topic == "content.decisions"
    still_bad = unusable_value(b"\xff{", Unusable("invalid_json", "x", "webhook"), None, None, 1.0)
    assert orjson.loads(still_bad)["raw_encoding"] == "base64"
    again = joiner.join(0, None, still_bad)
    assert isinstance(again, list) and dict(again[0].headers)["error.reason"] == b"unreadable"
    other = unusable_value(body, Unusable("unknown_status", "x", "callback"), "r1", "e9", 1.0)
    joiner2 = Joiner(SETTINGS.topics, table_with(entry("r1", "e1")))
    mismatch = joiner2.join(0, b"r1", other)
    assert (
        isinstance(mismatch, list)
        and dict(mismatch[0].headers)["error.reason"] == b"token_mismatch"
    )
