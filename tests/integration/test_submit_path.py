"""The submit path end to end: real broker, real sandbox over HTTP, the connector in-process.

Every input record must end as exactly one HITL request, policy decision or DLQ record, and
the committed offsets must reach the end offsets. Counts are printed for the closing note.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from connector.app import ConnectorApp
from hitl_sandbox import SandboxOptions, SandboxServer
from tests.integration.harness import (
    counted,
    event_of,
    offsets,
    produce,
    read_all,
    run_settings,
    sandbox_get,
    wait_until,
)
from tests.integration.ledger import ledger

pytestmark = pytest.mark.kafka

LOOP = "loop-test"


@dataclass
class Case:
    key: bytes
    value: bytes
    outcome: str  # created | policy | dlq:<reason>
    event_id: str | None = None


def mixed_events(n: int, run: str) -> list[Case]:
    """A deterministic mix with exactly known outcomes."""
    cases: list[Case] = []
    for i in range(n):
        eid = f"{run}-{i}"
        key = eid.encode()
        kind = i % 20
        event: dict[str, Any] = {"id": eid, "content": f"post {i}", "priority": "normal"}
        if kind == 0:
            cases.append(Case(key, b'{"id": "broken', "dlq:invalid_json"))
            continue
        if kind == 1:
            cases.append(Case(key, b"\xff\xfe not utf8 \xc3\x28", "dlq:invalid_utf8"))
            continue
        if kind == 2:
            event["priority"] = "urgent"
            cases.append(Case(key, orjson.dumps(event), "dlq:schema"))
            continue
        if kind == 3:
            cases.append(Case(key, orjson.dumps({"id": eid, "content": 42}), "dlq:schema"))
            continue
        if kind == 4:
            event.update(content_type="image", content="a picture")
            cases.append(Case(key, orjson.dumps(event), "dlq:schema"))
            continue
        if kind == 5:
            event["content"] = "long " * 1000
        elif kind in (6, 7, 8):
            event["ai_analysis"] = {"confidence": 0.99, "risk_score": 0.02, "flags": []}
            cases.append(Case(key, orjson.dumps(event), "policy", eid))
            continue
        elif kind == 9:
            event["ai_analysis"] = {"confidence": 0.7, "risk_score": 0.97, "flags": ["spam"]}
            cases.append(Case(key, orjson.dumps(event), "policy", eid))
            continue
        elif kind == 10:
            event.update(content_type="image", image_url=f"https://img.example/{i}.png")
        elif kind == 11:
            event = {"id": eid, "text": "seed text field", "content_type": "text"}
        elif kind == 12:
            event["ai_analysis"] = {"confidence": 0.6, "flags": ["spam"], "risk_score": 0.5}
            event["metadata"] = {"user_id": "u-1", "timestamp": "2026-11-27T10:00:00Z"}
        cases.append(Case(key, orjson.dumps(event), "created", eid))
    return cases


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxOptions(preset_loops=(LOOP,))) as server:
        yield server


async def test_2000_events_each_end_in_exactly_one_place(
    kafka_bootstrap: str, sandbox: SandboxServer, connector_apps: Any
) -> None:
    settings = run_settings(
        kafka_bootstrap,
        sandbox.url,
        policy={"enabled": True, "approve_min_confidence": 0.95, "approve_max_risk": 0.1},
        hitl={"max_in_flight": 32},
    )
    cases = mixed_events(2000, settings.kafka.group_id)
    app = await connector_apps(settings, "submitter")
    await produce(kafka_bootstrap, settings.topics.input, [(c.key, c.value) for c in cases])

    async def all_committed() -> bool:
        return (await offsets(kafka_bootstrap, settings.kafka.group_id, settings.topics.input)).done

    took = await wait_until(all_committed, timeout=120, what="all input offsets committed")
    snap = await offsets(kafka_bootstrap, settings.kafka.group_id, settings.topics.input)
    expected = collections.Counter(c.outcome for c in cases)

    requests = sandbox_get(sandbox.url, "/sandbox/requests")["requests"]
    keys = [event_of(r) for r in requests]
    want_created = {c.event_id for c in cases if c.outcome == "created"}
    decisions = await read_all(kafka_bootstrap, settings.topics.output)
    dlq = await read_all(kafka_bootstrap, settings.topics.dlq)
    table = await read_all(kafka_bootstrap, settings.topics.requests)
    stats = sandbox_get(sandbox.url, "/sandbox/stats")
    dlq_reasons = collections.Counter(
        "dlq:" + dict(r.headers)["error.reason"].decode() for r in dlq
    )
    print(
        f"\nsubmit-path: events={len(cases)} committed={snap.total_committed}/{snap.total_end} "
        f"requests={len(requests)} (expected {expected['created']}) "
        f"policy={len(decisions)} (expected {expected['policy']}) dlq={len(dlq)} "
        f"(expected {sum(v for k, v in expected.items() if k.startswith('dlq'))}) "
        f"duplicates={len(keys) - len(set(keys))} seconds={took:.1f} "
        f"rate={len(cases) / max(took, 1e-9):.0f}/s"
    )
    figures = await ledger(settings, sandbox.url)
    print(f"submit-path ledger: {figures.line()}")
    assert snap.done and snap.total_committed == len(cases)
    assert figures.events_in == len(cases) and figures.lost == 0
    assert figures.duplicate_requests == 0 and figures.duplicate_decisions == 0
    assert figures.undecided == expected["created"], "no resolver: created events stay undecided"
    assert figures.dlq == sum(v for k, v in expected.items() if k.startswith("dlq"))
    assert len(keys) == len(set(keys)), "duplicate HITL requests"
    assert set(keys) == want_created
    assert stats["unknown_fields"] == {}, "the connector sent undocumented fields"
    assert stats["creates"] == expected["created"]
    assert len(decisions) == expected["policy"]
    assert {orjson.loads(r.value)["decided_by"] for r in decisions} == {"policy"}
    assert {orjson.loads(r.value)["event_id"] for r in decisions} == {
        c.event_id for c in cases if c.outcome == "policy"
    }
    assert dlq_reasons == {k: v for k, v in expected.items() if k.startswith("dlq:")}
    by_key = {c.key: c.value for c in cases}
    assert all(r.value == by_key[r.key] for r in dlq), "DLQ must keep the original bytes"
    rows = {orjson.loads(r.value)["request_id"]: orjson.loads(r.value) for r in table}
    assert {row["event_id"] for row in rows.values()} == want_created
    assert {r["id"] for r in requests} == set(rows)
    long_texts = [r for r in requests if "truncated by hitl-connector" in r["request_text"]]
    assert len(long_texts) == 100 and all(len(r["request_text"]) == 2000 for r in long_texts)
    assert counted(app, "events_truncated") == 100
    seed = next(r for r in requests if r["request_text"] == "seed text field")
    assert seed["priority"] == "medium" and seed["type"] == "markdown"


async def test_permanent_400_goes_to_dlq_with_hitl_msg_and_the_rest_flow(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    options = SandboxOptions(
        preset_loops=(LOOP,), reject_marker="POISON", reject_msg="request_text violates policy"
    )
    with SandboxServer(options) as sandbox:
        settings = run_settings(kafka_bootstrap, sandbox.url)
        await connector_apps(settings, "submitter")
        items = [
            (f"k{i}".encode(), orjson.dumps({"id": f"e{i}", "content": f"ok {i}"}))
            for i in range(30)
        ]
        items.insert(15, (b"bad", orjson.dumps({"id": "poison", "content": "POISON pill"})))
        await produce(kafka_bootstrap, settings.topics.input, items)

        async def done() -> bool:
            return (
                await offsets(kafka_bootstrap, settings.kafka.group_id, settings.topics.input)
            ).done

        await wait_until(done, timeout=60, what="commit")
        dlq = await read_all(kafka_bootstrap, settings.topics.dlq)
        assert len(dlq) == 1
        headers = dict(dlq[0].headers)
        assert headers["error.reason"] == b"hitl_rejected"
        assert b"request_text violates policy" in headers["error.detail"]
        assert dlq[0].value == items[15][1]
        assert len(sandbox_get(sandbox.url, "/sandbox/requests")["requests"]) == 30


async def test_start_fails_clearly_when_the_api_key_is_missing(kafka_bootstrap: str) -> None:
    from connector.errors import ConfigError

    settings = run_settings(kafka_bootstrap, "http://127.0.0.1:9", hitl={"api_key": None})
    with pytest.raises(ConfigError, match="HITL_API_KEY is not set"):
        ConnectorApp(settings, "submitter")
    await asyncio.sleep(0)
