"""Hostile input on the input topic: every malformed record goes to the DLQ with its reason.

Real broker, real sandbox (auto-reviewer) over HTTP, every role of the connector in-process.
Hostile records (non-JSON, every wrong type per field, oversized, bad UTF-8, tombstones, deep
nesting, huge arrays) are interleaved with good events; each hostile record must land in the
DLQ with the expected ``error.reason``, each good event must get exactly one decision, and
the connector must keep running (its tasks alive, later events still decided).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connector.config import Settings
from hitl_sandbox import SandboxServer
from tests.integration.harness import (
    decision_settings,
    header,
    offsets,
    read_all,
    wait_until,
)
from tests.integration.ledger import ledger
from tests.integration.test_decision_path import reviewer

pytestmark = pytest.mark.kafka

MAX_EVENT_BYTES = 16 * 1024  # low, but a depth-5000 document (10 KB) still gets parsed
GOOD = "good"


@dataclass
class Case:
    name: str
    key: bytes | None
    value: bytes | None
    expect: str  # "good" or the DLQ reason


def _event(eid: str, **fields: Any) -> dict[str, Any]:
    return {"id": eid, "content": f"content of {eid}", **fields}


def hostile(run: str) -> list[Case]:
    cases: list[Case] = []

    def add(name: str, value: bytes | None, expect: str, key: bytes | None = None) -> None:
        cases.append(
            Case(name, key if key is not None else f"{run}-{name}".encode(), value, expect)
        )

    def bad(name: str, **fields: Any) -> None:
        add(name, orjson.dumps(_event(f"{run}-{name}", **fields)), "schema")

    # Not JSON at all.
    add("garbage", b"this is not json", "invalid_json")
    add("empty", b"", "invalid_json")
    add("truncated", b'{"id": "x", "content": "unterminated', "invalid_json")
    add("trailing", b'{"id": "x", "content": "y"} trailing', "invalid_json")
    add("nan", b'{"id": "x", "content": "y", "ai_analysis": {"confidence": NaN}}', "invalid_json")
    # JSON, but not an object.
    for name, doc in [("array", [1, 2]), ("string", "hi"), ("number", 42), ("null", None)]:
        add(f"top-{name}", orjson.dumps(doc), "schema")
    add("top-true", b"true", "schema")
    # Every wrong type per field.
    for i, value in enumerate([[1], {"a": 1}, True, 1.5, "x" * 300]):
        add(f"id-{i}", orjson.dumps({"id": value, "content": "c"}), "schema")
    for i, value in enumerate([42, [1], {"a": "b"}, True, "", "   ", None]):
        bad(f"content-{i}", content=value)
    for i, value in enumerate([5, "urgent", [], {"p": 1}, True]):
        bad(f"priority-{i}", priority=value)
    for i, value in enumerate([1, "video", {}, ["text"], False]):
        bad(f"ctype-{i}", content_type=value)
    bad("image-no-url", content_type="image")
    bad("image-bad-url", content_type="image", image_url="file:///etc/passwd")
    bad("image-url-type", content_type="image", image_url=7)
    for i, value in enumerate(["str", [1], 3, True]):
        bad(f"analysis-{i}", ai_analysis=value)
    for i, value in enumerate(["high", True, 1.5, -0.1, [0.5], {"v": 1}]):
        bad(f"confidence-{i}", ai_analysis={"confidence": value})
        bad(f"risk-{i}", ai_analysis={"risk_score": value})
    for i, value in enumerate(["spam", [1], [None], {"a": 1}, 5]):
        bad(f"flags-{i}", ai_analysis={"flags": value})
    for i, value in enumerate(["str", [1], 5, True]):
        bad(f"metadata-{i}", metadata=value)
    bad("loop-type", loop_id=5)
    # Values that go into an HTTP header or URL (Idempotency-Key, the loop path): no CR/LF.
    add("id-crlf", orjson.dumps({"id": f"{run}-a\r\nX-Injected: yes", "content": "c"}), "schema")
    add("id-nul", orjson.dumps({"id": f"{run}-\u0000", "content": "c"}), "schema")
    bad("loop-crlf", loop_id="loop\r\nX-Injected: yes")
    add("key-crlf", orjson.dumps({"content": "c"}), "schema", key=f"{run}\r\nX: y".encode())
    # Too large for batch.max_event_bytes.
    add("large-20k", orjson.dumps(_event(f"{run}-l20", content="x" * 20_000)), "too_large")
    add("large-900k", orjson.dumps(_event(f"{run}-l900", content="y" * 900_000)), "too_large")
    add("large-garbage", b"\xff" * 50_000, "too_large")
    # Invalid UTF-8, bare and inside a JSON string.
    add("utf8-bare", b"\xff\xfe\xfd not utf-8 \xc3\x28", "invalid_utf8")
    add("utf8-in-json", b'{"id": "u", "content": "bad \xc3\x28 byte"}', "invalid_utf8")
    add("utf8-surrogate", b'{"id": "u", "content": "\xed\xa0\x80"}', "invalid_utf8")
    # Tombstones, with and without a key.
    add("tombstone", None, "schema")  # (aiokafka cannot send a null value with a null key)
    # Deep nesting and huge arrays.
    deep = b"[" * 5000 + b"]" * 5000
    add("deep-top", deep, "invalid_json")
    add(
        "deep-metadata",
        b'{"id": "d", "content": "c", "metadata": {"x": ' + deep + b"}}",
        "invalid_json",
    )
    add("huge-array-top", orjson.dumps([0] * 7000), "schema")
    add("huge-array-large", orjson.dumps(list(range(100_000))), "too_large")
    bad("huge-array-flags", ai_analysis={"flags": [0] * 3000})
    return cases


def good(run: str, n: int) -> list[Case]:
    cases = [
        Case(f"g{i}", f"{run}-g{i}".encode(), orjson.dumps(_event(f"{run}-g{i}")), GOOD)
        for i in range(n)
    ]
    # Valid, if unusual: the id falls back to the key, then to topic:partition:offset.
    cases += [
        Case("no-id", f"{run}-noid".encode(), orjson.dumps({"content": "no id"}), GOOD),
        Case("no-id-no-key", None, orjson.dumps({"content": "no id, no key"}), GOOD),
        Case("null-id-no-key", None, orjson.dumps({"id": None, "content": "null id"}), GOOD),
        Case(
            "blank-id-bad-key",
            b"\xff\xfe" + run.encode(),
            orjson.dumps({"id": " ", "content": "k"}),
            GOOD,
        ),
        Case("int-id", None, orjson.dumps({"id": int(run[:8], 16), "content": "int id"}), GOOD),
        Case("text-field", None, orjson.dumps({"id": f"{run}-text", "text": "seed text"}), GOOD),
        Case(
            "many-flags",
            None,
            orjson.dumps(_event(f"{run}-flags", ai_analysis={"flags": ["f"] * 2000})),
            GOOD,
        ),
        Case(
            "nested-metadata",
            None,
            orjson.dumps(_event(f"{run}-nest", metadata=_nest(200))),
            GOOD,
        ),
        Case(
            "unicode", None, orjson.dumps(_event(f"{run}-ü", content="héllo 🌍 \u202e\x00")), GOOD
        ),
        Case("extra-fields", None, orjson.dumps(_event(f"{run}-extra", unknown={"x": 1})), GOOD),
    ]
    return cases


def _nest(depth: int) -> dict[str, Any]:
    value: Any = "leaf"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return {"deep": value}


def interleave(bad_cases: list[Case], good_cases: list[Case]) -> list[Case]:
    out: list[Case] = []
    goods = iter(good_cases)
    for i, case in enumerate(bad_cases):
        out.append(case)
        if i % 2 == 0 and (g := next(goods, None)) is not None:
            out.append(g)
    out.extend(goods)
    return out


async def produce_cases(
    bootstrap: str, topic: str, cases: Iterable[Case], *, max_request_size: int = 1_048_576
) -> dict[tuple[int, int], Case]:
    """Produce each case; returns them by (partition, offset)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=max_request_size,
    )
    await producer.start()
    try:
        sent = [(c, await producer.send(topic, c.value, key=c.key)) for c in cases]
        placed = {}
        for case, future in sent:
            meta = await future
            placed[meta.partition, meta.offset] = case
    finally:
        await producer.stop()
    return placed


async def decisions_by_source(settings: Settings) -> collections.Counter[tuple[int, int]]:
    records = await read_all(settings.kafka.bootstrap_servers, settings.topics.output)
    out: collections.Counter[tuple[int, int]] = collections.Counter()
    for r in records:
        source = orjson.loads(r.value)["source"]
        out[source["partition"], source["offset"]] += 1
    return out


def alive(app: Any) -> tuple[int, int]:
    """(tasks alive, tasks ended) of a ConnectorApp."""
    tasks = list(app._tasks.values())
    return sum(1 for t in tasks if not t.done()), sum(1 for t in tasks if t.done())


async def test_hostile_records_go_to_the_dlq_and_the_connector_keeps_running(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    with SandboxServer(reviewer(review_delay_max_ms=100)) as sandbox:
        settings = decision_settings(
            kafka_bootstrap, sandbox.url, batch={"max_event_bytes": MAX_EVENT_BYTES}
        )
        run = settings.kafka.group_id[2:]
        app = await connector_apps(settings, "all")
        bad_cases = hostile(run)
        good_cases = good(run, 40)
        placed = await produce_cases(
            kafka_bootstrap, settings.topics.input, interleave(bad_cases, good_cases)
        )
        # A second wave after the hostile one: the connector must still be working.
        later = [
            Case(f"later{i}", None, orjson.dumps(_event(f"{run}-later{i}")), GOOD)
            for i in range(10)
        ]
        placed |= await produce_cases(kafka_bootstrap, settings.topics.input, later)
        n_good = sum(1 for c in placed.values() if c.expect == GOOD)

        async def settled() -> bool:
            snap = await offsets(kafka_bootstrap, settings.kafka.group_id, settings.topics.input)
            if not snap.done:
                return False
            return sum((await decisions_by_source(settings)).values()) >= n_good

        took = await wait_until(settled, timeout=60, interval=0.5, what="every event settled")
        dlq = await read_all(kafka_bootstrap, settings.topics.dlq)
        reasons = {
            (int(header(r, "source.partition") or b""), int(header(r, "source.offset") or b"")): (
                (header(r, "error.reason") or b"").decode()
            )
            for r in dlq
        }
        decided = await decisions_by_source(settings)
        figures = await ledger(settings, sandbox.url, recovery_s=took)
        running, ended = alive(app)
        print(f"\nhostile-input: {figures.line()} examples={len(placed)} crashed={ended}")

        wrong = {
            c.name: (c.expect, reasons.get(coord))
            for coord, c in placed.items()
            if c.expect != GOOD and reasons.get(coord) != c.expect
        }
        assert not wrong, f"hostile records without the expected DLQ reason: {wrong}"
        assert len(dlq) == len(placed) - n_good, "a good event reached the DLQ, or a DLQ twice"
        for coord, c in placed.items():
            assert decided[coord] == (1 if c.expect == GOOD else 0), (c.name, decided[coord])
        assert all(dict(r.headers)["error.detail"] for r in dlq)
        by_coord = {(r.partition, r.offset): r for r in dlq}
        assert len(by_coord) == len(dlq)
        originals = {(c.key, c.value) for c in placed.values()}
        assert all((r.key, r.value) in originals for r in dlq), "DLQ must keep the original bytes"
        assert figures.lost == 0 and figures.undecided == 0
        assert figures.duplicate_requests == 0 and figures.duplicate_decisions == 0
        assert figures.events_in == len(placed) and figures.dlq == len(placed) - n_good
        assert figures.decisions_out == n_good == figures.requests
        assert ended == 0 and running >= 3, "a connector task ended"


async def test_a_record_over_the_brokers_default_size_goes_to_the_dlq(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    """A 2 MiB record: the input topic allows it (``max.message.bytes`` raised), the DLQ
    topic is created by the connector with the broker's default (~1 MiB)."""
    with SandboxServer(reviewer(review_delay_max_ms=100)) as sandbox:
        settings = decision_settings(
            kafka_bootstrap, sandbox.url, batch={"max_event_bytes": MAX_EVENT_BYTES}
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            topic = NewTopic(
                settings.topics.input, 3, 1, topic_configs={"max.message.bytes": str(4 << 20)}
            )
            await admin.create_topics([topic])
        finally:
            await admin.close()
        app = await connector_apps(settings, "all")
        run = settings.kafka.group_id[2:]
        cases = [
            Case("before", None, orjson.dumps(_event(f"{run}-before")), GOOD),
            Case(
                "huge-2mib",
                b"huge",
                orjson.dumps(_event(f"{run}-huge", content="z" * (2 << 20))),
                "too_large",
            ),
            Case("after", None, orjson.dumps(_event(f"{run}-after")), GOOD),
        ]
        placed = await produce_cases(
            kafka_bootstrap, settings.topics.input, cases, max_request_size=8 << 20
        )

        async def settled() -> bool:
            if alive(app)[1]:  # a task ended: no point waiting longer
                return True
            snap = await offsets(kafka_bootstrap, settings.kafka.group_id, settings.topics.input)
            return snap.done and sum((await decisions_by_source(settings)).values()) >= 2

        took = await wait_until(settled, timeout=40, interval=0.5, what="the 2 MiB record settled")
        figures = await ledger(settings, sandbox.url, recovery_s=took)
        _, ended = alive(app)
        print(f"\nhostile-input[2MiB]: {figures.line()} examples={len(placed)} crashed={ended}")
        assert figures.dlq_reasons == {"too_large": 1}
        (huge,) = await read_all(kafka_bootstrap, settings.topics.dlq)
        # Too large to keep: the value is left out, its size and source coordinates remain.
        assert huge.value is None
        assert dict(huge.headers)["error.value_omitted"] == str(len(cases[1].value)).encode()
        assert figures.lost == 0 and figures.undecided == 0 and ended == 0
